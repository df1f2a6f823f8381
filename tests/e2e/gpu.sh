#!/usr/bin/env bash
# gpu.sh - the CUDA path end to end, where a GPU exists: after 20 steps the GPU's fp32 weights
# equal the CPU's within rounding (1e-4, or 10 x the training's noise floor measured beside:
# a gradient bug shows here long before it shows in accuracy); training on the GPU reaches the
# CPU run's accuracy (fp32 within 0.003 or 3 x the CPU's own noise floor, tf32 0.005, bf16 and
# fp16 with loss scaling 0.01); the gradient norm of the first step matches the CPU's (fp32,
# fp16); the per-GPU memory policy is enforced on the device; and the all-reduce's GPU time is
# measured (CUDA events) and overlaps backward with small buckets.
# Without a GPU it prints "skipped: no GPU" and exits 77, which ctest reports as Skipped.
# tests/gpu/acceptance.sh is the fuller check a user runs on a GPU node.
DDTRAIN_TEST_USES_GPU=1 # the one e2e script that lib.sh leaves the GPUs visible to
source "$(dirname "$0")/lib.sh"

gpus=$("$DDTRAIN" --version | sed -n 's/^cuda: built.*; \([0-9]*\) GPU(s) visible$/\1/p')
if [[ -z $gpus || $gpus -eq 0 ]]; then
  echo "skipped: no GPU ($("$DDTRAIN" --version | grep '^cuda:'))"
  exit 77
fi
n=$(( gpus >= 2 ? 2 : 1 ))
"$DDTRAIN" synth -o "$WORK/train.h5" --rows 32768 --features 128 --classes 10 --seed 3 >/dev/null
"$DDTRAIN" synth -o "$WORK/test.h5" --rows 8192 --features 128 --classes 10 --seed 3 >/dev/null
common=(--data "$WORK/train.h5" --eval-data "$WORK/test.h5" --model 128-512-relu-256-relu-10
        --global-batch 256 --epochs 3 --lr 0.05 --log-every 0)
json() { $PY -c "import json,sys; r=[json.loads(l) for l in open('$1')][-1]; v=r['$2'];
print(v[int(sys.argv[1])] if isinstance(v, list) else v)" "${3:-0}"; }

ranks "$n" train "${common[@]}" --device cpu --metrics "$WORK/cpu.jsonl" >"$WORK/cpu.log" 2>&1 ||
  fail "CPU reference run"
cpu=$(json "$WORK/cpu.jsonl" eval_accuracy)
# Its noise floor: the CPU run again with the learning rate moved by 2^-22 of itself (as in
# dp_equivalence.sh). Two equally good models differ in accuracy by a count of test samples,
# not by a rounding-sized amount: fp32 on the GPU is held to max(0.003, 3 x their difference).
floor_common=("${common[@]}")
for i in "${!floor_common[@]}"; do
  [[ ${floor_common[i]} == --lr ]] &&
    floor_common[i+1]=$($PY -c "import sys; print(repr(float(sys.argv[1]) * (1 + 2 ** -22)))" \
      "${floor_common[i+1]}")
done
ranks "$n" train "${floor_common[@]}" --device cpu --metrics "$WORK/cpu-floor.jsonl" \
  >"$WORK/cpu-floor.log" 2>&1 || fail "CPU reference run, the noise floor's"
cpu_floor=$(json "$WORK/cpu-floor.jsonl" eval_accuracy)
fp32_tolerance=$(awk -v a="${cpu_floor:-$cpu}" -v b="$cpu" \
  'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.4g", (3 * d > 0.003 ? 3 * d : 0.003) }')
short=(--data "$WORK/train.h5" --model 128-512-relu-256-relu-10 --global-batch 256 --steps 20
       --log-every 0)
ranks "$n" train "${short[@]}" --lr 0.05 --device cpu --save "$WORK/cpu-20.h5" >/dev/null 2>&1 ||
  fail "CPU 20 steps"
ranks "$n" train "${short[@]}" --lr 0.05 --device cuda --save "$WORK/gpu-20.h5" >/dev/null 2>&1 ||
  fail "GPU 20 steps"
# GPU and CPU add in other orders: the bar is max(1e-4, 10 x this training's noise floor on
# the CPU), the floor the CPU run again with its learning rate moved by 2^-22 of itself (as in
# dp_equivalence.sh; h5tool compare-floor).
ranks "$n" train "${short[@]}" --lr "$($PY -c 'print(repr(0.05 * (1 + 2 ** -22)))')" \
  --device cpu --save "$WORK/cpu-20-floor.h5" >/dev/null 2>&1 || fail "CPU 20 steps, the floor's run"
expect_ok "fp32 weights after 20 steps: GPU equals CPU within rounding" \
  $H5TOOL compare-floor "$WORK/gpu-20.h5" "$WORK/cpu-20.h5" 1e-4 "$WORK/cpu-20-floor.h5" \
  "$WORK/cpu-20.h5"
for precision in fp32 tf32 bf16 fp16; do
  case $precision in fp32) tolerance=$fp32_tolerance ;; tf32) tolerance=0.005 ;; *) tolerance=0.01 ;; esac
  ranks "$n" train "${common[@]}" --device cuda --precision "$precision" \
    --metrics "$WORK/$precision.jsonl" >"$WORK/$precision.log" 2>&1 ||
    { fail "$precision run"; tail -5 "$WORK/$precision.log"; continue; }
  got=$(json "$WORK/$precision.jsonl" eval_accuracy)
  awk -v a="$got" -v b="$cpu" -v t="$tolerance" 'BEGIN { exit !(a - b <= t && b - a <= t) }' &&
    pass "$precision on GPU: accuracy $got vs CPU $cpu (within $tolerance)" ||
    fail "$precision accuracy $got vs CPU $cpu: more than $tolerance apart"
  grep -q "PCI" "$WORK/$precision.log" && pass "$precision: rank lines name the GPU's PCI bus id" ||
    fail "$precision: no PCI bus id in the rank lines"
done

# The gradient norm of the first step (same initial weights, same rows) agrees with the CPU's:
# the GPU's sum_of_squares, and under fp16 the loss scale taken out of it.
first=(--data "$WORK/train.h5" --model 128-512-relu-256-relu-10 --global-batch 256 --steps 1
       --metrics-every 1 --no-shuffle --log-every 0)
ranks "$n" train "${first[@]}" --device cpu --metrics "$WORK/norm-cpu.jsonl" >/dev/null 2>&1
for precision in fp32 fp16; do
  ranks "$n" train "${first[@]}" --device cuda --precision "$precision" \
    --metrics "$WORK/norm-$precision.jsonl" >/dev/null 2>&1
  norms=$($PY -c "import json,sys
def norm(p): return [json.loads(l) for l in open(p) if '\"step\"' in l][0]['grad_norm']
print(norm('$WORK/norm-cpu.jsonl'), norm('$WORK/norm-$precision.jsonl'))")
  tolerance=$([[ $precision == fp32 ]] && echo 1e-4 || echo 2e-2)
  awk -v c="${norms% *}" -v g="${norms#* }" -v t="$tolerance" \
    'BEGIN { d = c - g; if (d < 0) d = -d; exit !(c > 0 && d <= t * c) }' &&
    pass "$precision gradient norm $norms (CPU, GPU) within $tolerance" ||
    fail "$precision gradient norm: CPU and GPU give $norms"
done

# The per-GPU memory policy on the device.
ranks 1 train "${common[@]}" --device cuda --epochs 1 --device-memory preallocate \
  --device-memory-limit 512MiB --metrics "$WORK/pre.jsonl" >/dev/null 2>&1
[[ $(json "$WORK/pre.jsonl" peak_device_reserved_bytes) -eq $((512 << 20)) ]] &&
  pass "preallocate reserved 512 MiB of GPU memory" || fail "preallocate on GPU"
[[ $(json "$WORK/pre.jsonl" peak_device_bytes) -eq $(json "$WORK/pre.jsonl" planned_device_bytes) ]] &&
  pass "GPU allocator peak equals the plan" || fail "GPU peak != plan"
expect_fail_all_ranks "GPU limit too small" 1 1 "more than the limit" -- \
  train "${common[@]}" --device cuda --device-memory-limit 1MiB

# Overlap: the all-reduce's own GPU time (CUDA events around each bucket) against the time the
# compute stream waited for it; with small buckets most of it runs during backward.
ranks "$n" train "${common[@]}" --device cuda --epochs 1 --bucket-size 64KiB \
  --metrics "$WORK/overlap.jsonl" >/dev/null 2>&1 || fail "overlap run"
busy=$(json "$WORK/overlap.jsonl" allreduce_device_s)
waited=$(json "$WORK/overlap.jsonl" communication_s)
awk -v b="$busy" 'BEGIN { exit !(b > 0) }' &&
  pass "the all-reduce's GPU time is measured: $busy s, compute waited $waited s" ||
  fail "no all-reduce GPU time in the summary ($busy)"
if ((n >= 2)); then
  awk -v b="$busy" -v w="$waited" 'BEGIN { exit !(w < b) }' &&
    pass "64 KiB buckets overlap backward: waited $waited s of $busy s" ||
    fail "no overlap: compute waited $waited s for $busy s of all-reduce"
fi
finish
