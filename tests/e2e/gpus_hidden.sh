#!/usr/bin/env bash
# gpus_hidden.sh - the CPU tests compute on the CPU whatever the machine has. ctest gives every
# test but the GPU ones CUDA_VISIBLE_DEVICES=-1 (tests/CMakeLists.txt, which refuses to
# configure a test without it) and lib.sh does the same for a script run by hand; this checks
# that the hiding holds where it matters: the variable reaches every rank mpirun starts,
# ddtrain then sees no GPU (yet its CUDA plugin loads), and --device auto trains on the CPU on
# 1 rank and on 2 (on a one-GPU node, 2 ranks on auto would otherwise both take the GPU and be
# refused). On a machine without a GPU it passes trivially except for the first two checks.
given=${CUDA_VISIBLE_DEVICES-unset} # before lib.sh: what ctest (or the caller) gave
source "$(dirname "$0")/lib.sh"

case $given in
  -1) pass "given CUDA_VISIBLE_DEVICES=-1 by its caller (ctest)" ;;
  unset) echo "note: run by hand without CUDA_VISIBLE_DEVICES: lib.sh hid the GPUs" ;;
  *) fail "given CUDA_VISIBLE_DEVICES='$given', not -1: ctest should hide the GPUs from this test" ;;
esac
seen=$(timeout -k 5 "$TIMEOUT" mpirun -np 2 --bind-to none sh -c \
  'echo "rank $OMPI_COMM_WORLD_RANK: ${CUDA_VISIBLE_DEVICES-unset}"' 2>&1 | sort | tr '\n' ' ')
[[ $seen == "rank 0: -1 rank 1: -1 " ]] && pass "every rank mpirun starts sees CUDA_VISIBLE_DEVICES=-1" ||
  fail "the ranks see: $seen"

"$DDTRAIN" --version >"$WORK/version.txt" 2>&1
if grep -q '^cuda: built' "$WORK/version.txt"; then
  grep -q '^cuda: built.*; 0 GPU(s) visible$' "$WORK/version.txt" &&
    pass "--version: $(grep '^cuda:' "$WORK/version.txt")" ||
    fail "--version with the GPUs hidden: $(grep '^cuda:' "$WORK/version.txt")"
  grep -q '^cuda plugin: .* (loaded)$' "$WORK/version.txt" &&
    pass "the CUDA plugin loads with no GPU visible" ||
    fail "--version: $(grep '^cuda plugin' "$WORK/version.txt")"
else
  grep -q '^cuda: not built' "$WORK/version.txt" && pass "--version: a CPU-only build" ||
    fail "--version: $(cat "$WORK/version.txt")"
fi

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 512 --features 8 --classes 3 >/dev/null
for n in 1 2; do
  if ranks "$n" train --data "$WORK/d.h5" --model 8-8-relu-3 --steps 2 --global-batch 32 \
    --device auto >"$WORK/auto-$n.txt" 2>&1; then
    on_cpu=$(grep -c "^  rank [0-9]* of $n on .*, local rank [0-9]*: cpu (" "$WORK/auto-$n.txt")
    if grep -q "^ddtrain train: $n ranks\{0,1\}, device cpu," "$WORK/auto-$n.txt" &&
      [[ $on_cpu -eq $n ]]; then
      pass "--device auto on $n rank(s): the CPU, on every rank"
    else
      fail "--device auto on $n rank(s): $(grep -m1 '^ddtrain train:' "$WORK/auto-$n.txt");" \
        "$on_cpu of $n rank lines on the CPU"
      grep "^  rank " "$WORK/auto-$n.txt" | head -4
    fi
  else
    fail "--device auto on $n rank(s) failed"
    tail -5 "$WORK/auto-$n.txt"
  fi
done
finish
