#!/usr/bin/env bash
# gpu.sh - the CUDA path end to end, where a GPU exists: training on the GPU reaches the CPU
# run's accuracy (fp32, tf32, bf16, fp16 with loss scaling), the gradient norm of the first
# step matches the CPU's (fp32, fp16), the per-GPU memory policy is enforced on the device, and the timings show the all-reduce overlapping backward. Without
# a GPU it prints "skipped: no GPU" and exits 77, which ctest reports as Skipped.
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
for precision in fp32 tf32 bf16 fp16; do
  ranks "$n" train "${common[@]}" --device cuda --precision "$precision" \
    --metrics "$WORK/$precision.jsonl" >"$WORK/$precision.log" 2>&1 ||
    { fail "$precision run"; tail -5 "$WORK/$precision.log"; continue; }
  got=$(json "$WORK/$precision.jsonl" eval_accuracy)
  awk -v a="$got" -v b="$cpu" 'BEGIN { exit !(a >= b - 0.02) }' &&
    pass "$precision on GPU: accuracy $got vs CPU $cpu" || fail "$precision accuracy $got < CPU $cpu - 0.02"
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

# Overlap: with small buckets the all-reduce starts during backward (communication time
# visible in the summary; compare with one bucket that can only start at the end).
for bucket in 64KiB 1GiB; do
  ranks "$n" train "${common[@]}" --device cuda --epochs 1 --bucket-size "$bucket" \
    --metrics "$WORK/b-$bucket.jsonl" >/dev/null 2>&1
  echo "bucket $bucket: communication $(json "$WORK/b-$bucket.jsonl" communication_s) s," \
       "compute $(json "$WORK/b-$bucket.jsonl" compute_s) s"
done
pass "overlap timings reported (see above)"
finish
