#!/usr/bin/env bash
# plugin.sh - how the CUDA plugin (libddtrain_cuda.so, beside the binary) links: it needs
# the shared CUDA runtime and never also the static one (two runtimes in one process), and
# its run path names the directory of every CUDA/NCCL library it needs, so loading it does
# not depend on LD_LIBRARY_PATH or the loader's configuration. Then `ddtrain --version`
# loads it. A build without CUDA has no plugin: skipped (exit 77).
source "$(dirname "$0")/lib.sh"

plugin="$(dirname "$(readlink -f "$DDTRAIN")")/libddtrain_cuda.so"
if [[ ! -f $plugin ]]; then
  echo "skipped: this build has no CUDA plugin ($plugin)"
  exit 77
fi
command -v readelf >/dev/null && command -v nm >/dev/null ||
  { echo "skipped: readelf/nm (binutils) not installed"; exit 77; }

dynamic=$(readelf -d "$plugin")
needed=$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dynamic")
runpath=$(sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p; s/.*(RPATH).*\[\(.*\)\]/\1/p' <<<"$dynamic")

grep -qx 'libcudart\.so\.[0-9]*' <<<"$needed" && pass "links the shared CUDA runtime" ||
  fail "no libcudart.so.N among NEEDED: $(tr '\n' ' ' <<<"$needed")"
# With the static runtime linked in, cudaMalloc would be defined inside the plugin.
defined=$(nm "$plugin" 2>/dev/null | awk '$3 == "cudaMalloc" && $2 != "U"')
[[ -z $defined ]] && pass "no static CUDA runtime inside the plugin" ||
  fail "the plugin defines cudaMalloc itself (static cudart linked in): $defined"
# And the link line does not offer it (CMake's default for CUDA targets adds it after the
# shared one, where it would fill in any symbol the shared runtime lacks).
link_line="$(dirname "$plugin")/CMakeFiles/ddtrain_cuda.dir/linkLibs.rsp"
if [[ -f $link_line ]]; then
  ! grep -q cudart_static "$link_line" && pass "the link line has no static CUDA runtime" ||
    fail "the plugin's link line offers cudart_static: $(grep -o '[^ ]*cudart_static[^ ]*' "$link_line")"
fi

for library in $(grep -E '^lib(cudart|cublas|cublasLt|nccl)\.so' <<<"$needed"); do
  found=""
  IFS=: read -ra dirs <<<"$runpath"
  for dir in "${dirs[@]}"; do [[ -e $dir/$library ]] && { found=$dir; break; }; done
  [[ -n $found ]] && pass "$library is found through the run path ($found)" ||
    fail "$library is in no run-path directory (run path: $runpath)"
done

# Loading it through the binary, with no LD_LIBRARY_PATH.
version=$(env -u LD_LIBRARY_PATH "$DDTRAIN" --version 2>&1)
grep -q '^cuda: built' <<<"$version" && ! grep -qi 'cannot\|not load' <<<"$version" &&
  pass "ddtrain --version loads the plugin without LD_LIBRARY_PATH: $(grep '^cuda:' <<<"$version")" ||
  fail "ddtrain --version: $version"
finish
