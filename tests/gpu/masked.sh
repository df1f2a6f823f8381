#!/usr/bin/env bash
# masked.sh - runs tests/gpu/acceptance.sh from a bundle (tests/gpu/make-bundle.sh) the way it
# will run on the GPU machine, on this machine without a GPU: in a private mount namespace
# where the system's Open MPI, PMIx, HDF5, OpenBLAS, hwloc and libevent are hidden, so every
# library and helper program must come from the bundle. The script must then fail cleanly for
# the lack of a GPU and for nothing else: exit 3, the plugin loaded, the data converted by the
# bundled ddtrain, the CPU reference trained, every GPU section reported as not run. Then the
# only unknown left on the GPU machine is the GPU itself.
#
#   tests/gpu/masked.sh [BUNDLE]        (default: .bundle; needs root for the namespace)
# Exit status: 0 when the masked run behaved as described, 1 otherwise, 77 when a mount
# namespace cannot be made here (not root, no unshare).
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=$(cd "${1:-.bundle}" 2>/dev/null && pwd) || { echo "masked.sh: no bundle (run tests/gpu/make-bundle.sh)" >&2; exit 1; }
if [[ $(id -u) -ne 0 ]] || ! command -v unshare >/dev/null; then
  echo "skipped: masked.sh needs root and unshare for a private mount namespace"
  exit 77
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/ddtrain-masked.XXXXXX")
trap 'rm -rf "$out"' EXIT

# Inside the namespace: hide, prove it is hidden, then run the acceptance script as on the GPU.
unshare --mount --propagation private bash -s "$bundle" "$out" <<'INSIDE'
set -uo pipefail
bundle=$1 out=$2
lib=/usr/lib/x86_64-linux-gnu
for dir in $lib/openmpi $lib/hdf5 $lib/openblas-pthread $lib/pmix2 /usr/share/openmpi \
           /etc/openmpi /usr/share/pmix; do
  [[ -d $dir ]] && mount -t tmpfs none "$dir"
done
hidden=0
for file in $lib/lib{mpi,open-pal,open-rte,hdf5,openblas,blas,lapack,hwloc,event,pmix,sz,aec}*.so* \
            /usr/bin/{mpirun,mpiexec,orterun,orted,ompi_info}; do
  real=$(readlink -f "$file") || continue
  [[ -f $real ]] || continue
  mount --bind /dev/null "$real" 2>/dev/null && hidden=$((hidden + 1))
done
echo "masked: $hidden system files and 7 folders hidden"
if ! why=$(build/ddtrain --version 2>&1); then
  echo "masked: the unbundled build/ddtrain cannot start here: $(head -1 <<<"$why")"
else
  echo "masked: FAIL: the unbundled build/ddtrain still loads: the system's libraries are not hidden"
  exit 1
fi
. "$bundle/env.sh" || exit 1
tests/gpu/acceptance.sh --bin "$bundle/bin" --data "$bundle/data" --out "$out" --quick
echo "acceptance exit $?" >"$out/exit"
INSIDE

failures=0
expect() { # expect DESCRIPTION COMMAND...
  if "${@:2}"; then echo "ok: $1"; else echo "FAIL: $1"; failures=$((failures + 1)); fi
}
csv=$out/results.csv
expect "the acceptance script exited 3 (no GPU)" grep -qx "acceptance exit 3" "$out/exit"
expect "the CUDA plugin loaded from the bundle" grep -q '^probe,"CUDA plugin loads",pass' "$csv"
expect "the bundled ddtrain converted Fashion-MNIST" grep -q '^data,"Fashion-MNIST as HDF5",pass' "$csv"
expect "the CPU reference trained" grep -q '^training,"CPU reference accuracy",pass' "$csv"
expect "only 'no GPU' failed" test "$(grep -c ',fail,' "$csv")" -eq 1
expect "... and that was the GPU count" grep -q '^probe,"GPUs visible to ddtrain",fail' "$csv"
for section in kernels nccl training precision layers memory bench; do
  expect "$section reported as not run" grep -q "^$section,\"all $section checks\",skip" "$csv"
done
expect "summary.txt and the logs were written" test -s "$out/summary.txt" -a -s "$out/logs.tar.gz"
echo "$((10 + 3 - failures)) passed, $failures failed"
((failures == 0))
