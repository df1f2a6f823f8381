#!/usr/bin/env bash
# install.sh - `cmake --install` as a cluster does it: configure and build ddtrain afresh (the
# same CUDA setting as the build under test), install into a temporary prefix, delete the
# build tree, and use only the installed copy, with no LD_LIBRARY_PATH: the layout; no
# RUNPATH or text file naming the build or source tree; --version (and, in a CUDA build, the
# plugin: found in PREFIX/lib/ddtrain, loaded, its RUNPATH naming the directories of the CUDA
# and NCCL libraries it needs); the installed quickstart trains Fashion-MNIST; the installed
# ddtrain-mpirun and Slurm template find the installed binary; the Lmod module file sets PATH
# and DDTRAIN_HOME; the installed bench/plot draws the template run.
source "$(dirname "$0")/lib.sh"

SOURCE=$(cd "$HERE/../.." && pwd)
cuda=OFF
grep -q '^cuda: built' <<<"$("$DDTRAIN" --version)" && cuda=ON
build=$WORK/build
prefix=$WORK/prefix
configure=(-DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF "-DDDTRAIN_CUDA=$cuda")
# One GPU architecture is enough here: this test is about files and paths, not kernels.
[[ $cuda == ON ]] && configure+=(-DCMAKE_CUDA_ARCHITECTURES=80)
start=$SECONDS
if cmake -S "$SOURCE" -B "$build" "${configure[@]}" >"$WORK/build.log" 2>&1 &&
  cmake --build "$build" -j "$(nproc)" --target ddtrain >>"$WORK/build.log" 2>&1 &&
  cmake --install "$build" --prefix "$prefix" >>"$WORK/install.log" 2>&1; then
  pass "configured (DDTRAIN_CUDA=$cuda), built and installed into a new prefix ($((SECONDS - start)) s)"
else
  fail "build or install"
  tail -20 "$WORK/build.log" "$WORK/install.log"
  finish
  exit 1
fi
rm -rf "$build"
[[ ! -e $build ]] && pass "build tree removed" || fail "build tree still there"

# Nothing below may see the build tree or the test's own binary.
unset DDTRAIN
clean_env=(env -u LD_LIBRARY_PATH -u DDTRAIN_CUDA_PLUGIN)

expected=(bin/ddtrain bin/ddtrain-mpirun lib/ddtrain/libddtrain_core.so
          share/ddtrain/launch/quickstart.sh share/ddtrain/launch/common.sh share/ddtrain/launch/install-deps.sh
          share/ddtrain/launch/ddtrain-mpirun share/ddtrain/launch/slurm/ddtrain-single-node.sbatch
          share/ddtrain/launch/slurm/ddtrain-multi-node.sbatch
          share/ddtrain/launch/slurm/local-cluster.sh share/ddtrain/launch/local-cluster/cluster.sh
          share/ddtrain/bench/plot
          share/doc/ddtrain/README.md)
version=$("${clean_env[@]}" "$prefix/bin/ddtrain" --version | sed -n '1s/^ddtrain //p')
expected+=("share/ddtrain/modulefiles/ddtrain/$version.lua")
[[ $cuda == ON ]] && expected+=(lib/ddtrain/libddtrain_cuda.so)
missing=""
for f in "${expected[@]}"; do [[ -f $prefix/$f ]] || missing+=" $f"; done
[[ -z $missing ]] && pass "layout: ${#expected[@]} files in bin, lib/ddtrain, share/ddtrain, share/doc" ||
  fail "missing from the prefix:$missing"

# Run paths and text files name neither the build tree nor the source tree.
problems=""
for elf in "$prefix"/bin/ddtrain "$prefix"/lib/ddtrain/*.so; do
  runpath=$(readelf -d "$elf" | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]/\2/p')
  [[ $runpath == *"$build"* || $runpath == *"$SOURCE"* ]] && problems+=" $(basename "$elf"): $runpath;"
  [[ $runpath == *'$ORIGIN'* ]] || problems+=" $(basename "$elf") has no \$ORIGIN RUNPATH ($runpath);"
done
for text in $(grep -rlI . "$prefix"); do
  grep -qF -e "$build" -e "$SOURCE" "$text" && problems+=" $text names the build or source tree;"
done
[[ -z $problems ]] && pass "RUNPATHs are \$ORIGIN-relative; no file names the build or source tree" ||
  fail "paths:$problems"

"${clean_env[@]}" "$prefix/bin/ddtrain" --version >"$WORK/version.txt" 2>&1 &&
  pass "installed ddtrain --version without LD_LIBRARY_PATH" || { fail "--version"; cat "$WORK/version.txt"; }
if [[ $cuda == ON ]]; then
  plugin=$prefix/lib/ddtrain/libddtrain_cuda.so
  grep -qxF "cuda plugin: $plugin (loaded)" "$WORK/version.txt" &&
    pass "--version: $(grep '^cuda plugin' "$WORK/version.txt")" ||
    { fail "--version does not report the installed plugin loaded"; cat "$WORK/version.txt"; }
  # The CUDA libraries the plugin needs are in its RUNPATH (not only in ld.so.conf, which
  # clusters rarely set up for CUDA).
  runpath=$(readelf -d "$plugin" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
  problems=""
  for needed in $(readelf -d "$plugin" | sed -n 's/.*(NEEDED).*\[\(\(libcudart\|libcublas\|libnccl\)[^]]*\)\]/\1/p'); do
    found=0
    IFS=: read -ra directories <<<"$runpath"
    for d in "${directories[@]}"; do [[ -e $d/$needed ]] && found=1; done
    [[ $found -eq 1 ]] || problems+=" $needed not in RUNPATH $runpath;"
  done
  grep -q "not found" <<<"$(ldd "$plugin")" && problems+=" ldd: $(ldd "$plugin" | grep 'not found' | tr -s ' \n' ' ')"
  [[ -z $problems ]] && pass "plugin RUNPATH holds the CUDA and NCCL libraries it needs ($runpath)" ||
    fail "plugin:$problems"
else
  grep -q "^cuda: not built" "$WORK/version.txt" && pass "--version: CPU build" || fail "--version: $(cat "$WORK/version.txt")"
fi

# The installed quickstart trains Fashion-MNIST (2 epochs of its 15) from the installed binary.
mkdir -p "$WORK/quickstart"
if (cd "$WORK/quickstart" && "${clean_env[@]}" "$prefix/share/ddtrain/launch/quickstart.sh" --epochs 2) \
  >"$WORK/quickstart.log" 2>&1; then
  accuracy=$(sed -n 's/^Fashion-MNIST test accuracy: \([0-9.]*\).*/\1/p' "$WORK/quickstart.log")
  awk -v a="${accuracy:-0}" 'BEGIN { exit !(a >= 0.80) }' &&
    pass "installed quickstart, 2 epochs: test accuracy $accuracy" ||
    fail "installed quickstart: accuracy '${accuracy}'"
else
  fail "installed quickstart"
  tail -10 "$WORK/quickstart.log"
fi

# The installed ddtrain-mpirun (on PATH as the module puts it) runs the installed binary.
"$prefix/bin/ddtrain" synth -o "$WORK/d.h5" --rows 2048 --features 16 --classes 3 >/dev/null
(cd "$WORK" && "${clean_env[@]}" PATH="$prefix/bin:/usr/bin:/bin" ddtrain-mpirun -n 2 train \
  --data d.h5 --model 16-16-relu-3 --steps 20 --global-batch 64 --log-every 0) >"$WORK/mpirun.log" 2>&1 &&
  grep -q "^ddtrain-mpirun: mpirun .* $prefix/bin/ddtrain train" "$WORK/mpirun.log" &&
  pass "installed ddtrain-mpirun runs the installed binary" ||
  { fail "installed ddtrain-mpirun"; tail -5 "$WORK/mpirun.log"; }

# The installed single-node template, run by bash (no Slurm here) with LAUNCHER=mpirun.
(cd "$WORK" && "${clean_env[@]}" PATH=/usr/bin:/bin LAUNCHER=mpirun DATA=d.h5 EVAL_DATA=d.h5 \
  MODEL=16-16-relu-3 STEPS=20 GLOBAL_BATCH=64 OUT="$WORK/templated" REQUEUE=0 \
  bash "$prefix/share/ddtrain/launch/slurm/ddtrain-single-node.sbatch" --log-every 0) \
  >"$WORK/template.log" 2>&1 &&
  grep -q "running: mpirun .* $prefix/bin/ddtrain train" "$WORK/template.log" &&
  grep -q '"event":"summary"' "$WORK/templated/metrics.jsonl" &&
  compgen -G "$WORK/templated/tensorboard/events.out.tfevents.*" >/dev/null &&
  pass "installed Slurm template runs the installed binary (metrics and TensorBoard events in OUT)" ||
  { fail "installed Slurm template"; tail -5 "$WORK/template.log"; }

# The module file.
if [[ -f /usr/share/lmod/lmod/init/bash ]]; then
  got=$("${clean_env[@]}" PATH=/usr/bin:/bin bash -c '
    source /usr/share/lmod/lmod/init/bash
    module use "$1/share/ddtrain/modulefiles" && module load ddtrain &&
      echo "$(command -v ddtrain) $DDTRAIN_HOME $(ddtrain --version | head -1)"' _ "$prefix" 2>&1)
  [[ $got == "$prefix/bin/ddtrain $prefix ddtrain $version" ]] &&
    pass "module use + module load ddtrain: PATH and DDTRAIN_HOME ($got)" ||
    fail "module load: '$got'"
else
  echo "note: Lmod is not installed (launch/install-deps.sh test installs it); module file not loaded"
fi

# The installed bench/plot.
if "${clean_env[@]}" "$prefix/share/ddtrain/bench/plot" "$WORK/templated/metrics.jsonl" \
  -o "$WORK/run.png" >"$WORK/plot.log" 2>&1 && [[ $(head -c 8 "$WORK/run.png" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]; then
  pass "installed bench/plot draws a PNG"
else
  fail "installed bench/plot"
  tail -3 "$WORK/plot.log"
fi
finish
