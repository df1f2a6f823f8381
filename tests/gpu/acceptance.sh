#!/usr/bin/env bash
# acceptance.sh - does ddtrain's GPU path work on this GPU node? One command, a table at the
# end. What it checks, each against the CPU or against the documented number:
#   probe      the GPU, its driver, and ddtrain --version (the CUDA plugin loads)
#   kernels    every device operation of the CUDA backend against the CPU backend on random
#              inputs (tests/test_engine_ops, which also checks both against float64;
#              tests/test_cuda_device, what only a GPU has): fp32 within 1e-5 relative,
#              GEMMs and sums within float32's summation bound plus their operands' rounding (TF32 ~2e-3,
#              bf16 ~8e-3, fp16 ~1e-3 of the sum of magnitudes), optimizers and dropout bit for
#              bit; each comparison's worst error goes into the table
#   nccl       the NCCL backend (tests/mpi_test_comm_nccl) on 1 rank, and on 2 ranks where two
#              GPUs are visible (one GPU cannot hold two NCCL ranks: then that row is skipped);
#              what the test cannot prove on 1 rank (the stream ordering, the timeout) is its
#              own skipped row, "not run (1 rank)"; and the error path: 2 ranks on one GPU
#              must be refused on both ranks with ddtrain's own message, not NCCL's
#              "duplicate GPU"
#   training   the quickstart's Fashion-MNIST model (784-256-relu-128-relu-10, 15 epochs,
#              global batch 128) on 1 rank on the GPU reaches the CPU run's test accuracy
#              within 0.003, and after 20 steps its weights equal the CPU's within 1e-4
#              (relative to each tensor's largest value); each bar widened to 3x (accuracy) or
#              10x (weights) the CPU's own noise floor where that is larger (with_nudged_lr)
#   precision  tf32, bf16 and fp16 runs of the same recipe (accuracy within 0.005, 0.01, 0.01
#              of the CPU run), and an fp16 run whose loss scale overflows: steps skipped on
#              every rank, the scale halved, training goes on
#   layers     the layer engine's presets on the GPU, once this ddtrain knows them (else each
#              is reported as skipped, with ddtrain's own message): cnn-small on Fashion-MNIST
#              (test accuracy >= 0.87 after 2 epochs) and gpt-tiny on byte tokens of this
#              repository's sources (final training loss < 4.0 nats, uniform is 5.55); after
#              20 SGD steps each one's weights equal the CPU's within 1e-3 (relative to each
#              tensor's largest value; or 10x the CPU's noise floor); gpt-tiny in bf16 ends
#              within 0.1 nats of fp32, and its
#              allocator peak equals the memory plan (cast buffers for batched GEMMs counted)
#   memory     the per-GPU memory policy on cudaMalloc: preallocate reserves exactly the limit
#              (less NCCL's own buffers, measured and counted), growth stays under it, a limit
#              too small is refused before training with the documented message, and the
#              allocator's peak equals the memory plan to the byte
#   bench      ddtrain against PyTorch on the same GPU, same model, batch and steps: the
#              quickstart MLP at micro-batch 128 and a wide MLP (1024-4096-relu-4096-relu-10,
#              batch 4096), fp32 and bf16: samples/s of both, the ratio, and for the wide MLP
#              the TFLOP/s against a cuBLAS GEMM of the same shapes timed in this run; and the
#              reduction kernels of a GPT step at GPT-2 124M's shapes (64 x 1024 tokens, vocab
#              50257, width 768: ddtrain_bench_kernels), each timed against a device copy of
#              the same bytes in the same run
#
# Usage:
#   tests/gpu/acceptance.sh [--bin DIR] [--data DIR] [--out DIR] [--python PY] [--quick]
#     --bin DIR     ddtrain, libddtrain_cuda.so, test_cuda_device, test_engine_ops,
#                   mpi_test_comm_nccl,
#                   ddtrain_bench_gemm and ddtrain_bench_kernels: a build tree (default: build/, with tests/ and bench/
#                   inside) or a bundle's bin/ (tests/gpu/make-bundle.sh)
#     --data DIR    Fashion-MNIST: the four IDX .gz files (converted here), or fashion-train-*.h5
#                   and fashion-test.h5 [default: /usr/share/datasets/fashion-mnist]
#     --out DIR     results.csv, summary.txt, acceptance.log, logs.tar.gz [default: a new
#                   folder under ${TMPDIR:-/tmp}]
#     --python PY   a Python with torch (CUDA) and h5py, for the PyTorch side and the weight
#                   comparison [default: /opt/torch/.venv/bin/python3, else python3]
#     --quick       fewer epochs and steps (a smoke test; the accuracy thresholds then do not
#                   apply and are reported as skipped)
# Exit status: 0 every check passed; 1 a check failed; 3 no GPU is visible, so only the
# CPU-side parts ran (what a machine without a GPU, e.g. tests/gpu/masked.sh, must see).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin_dir="" data_dir=/usr/share/datasets/fashion-mnist out="" python="" quick=0
while (($#)); do
  case $1 in
    --bin) bin_dir=$2; shift 2 ;;
    --data) data_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "acceptance.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n $bin_dir ]] || bin_dir=$repo/build
bin_dir=$(cd "$bin_dir" 2>/dev/null && pwd) || { echo "acceptance.sh: --bin: no such folder" >&2; exit 2; }
[[ -n $out ]] || out=$(mktemp -d "${TMPDIR:-/tmp}/ddtrain-acceptance.XXXXXX")
mkdir -p "$out" || exit 2
work=$(mktemp -d "${TMPDIR:-/tmp}/ddtrain-acceptance-work.XXXXXX")
trap 'tar -C "$work" -czf "$out/logs.tar.gz" --exclude="*.h5" . 2>/dev/null; rm -rf "$work"' EXIT
log=$out/acceptance.log
csv=$out/results.csv
: >"$log"
echo "section,check,status,value,expected,detail" >"$csv"
table=$work/table.tsv
printf 'section\tcheck\tstatus\tvalue\texpected\n' >"$table"
exec > >(tee -a "$log") 2>&1

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 DDTRAIN_SLURM_CHECK=0

# --- the table -----------------------------------------------------------------------------
passed=0 failed=0 skipped=0
# record SECTION CHECK pass|fail|skip|info VALUE EXPECTED [DETAIL]
record() {
  local section=$1 check=$2 status=$3 value=$4 expected=$5 detail=${6:-}
  case $status in pass) passed=$((passed + 1)) ;; fail) failed=$((failed + 1)) ;;
    skip) skipped=$((skipped + 1)) ;; esac
  printf '%s,"%s",%s,"%s","%s","%s"\n' "$section" "$check" "$status" "$value" "$expected" \
    "${detail//\"/\'}" >>"$csv"
  printf '%s\t%s\t%s\t%s\t%s\n' "$section" "$check" "$status" "$value" "$expected" >>"$table"
  printf '  [%-4s] %-10s %-52s %s%s\n' "$(tr a-z A-Z <<<"$status")" "$section" "$check" "$value" \
    "${expected:+ (expected $expected)}"
}
# check SECTION CHECK CONDITION(awk, on a and b) A B EXPECTED_TEXT
check() {
  local section=$1 name=$2 condition=$3 a=$4 b=$5 expected=$6
  if [[ -n $a ]] && awk -v a="$a" -v b="$b" "BEGIN { exit !($condition) }"; then
    record "$section" "$name" pass "$a" "$expected"
  else
    record "$section" "$name" fail "${a:-missing}" "$expected"
  fi
}
find_binary() { # NAME: in the bin folder, or its tests/ or bench/ subfolder
  local name=$1
  for candidate in "$bin_dir/$name" "$bin_dir/tests/$name" "$bin_dir/bench/$name"; do
    [[ -x $candidate ]] && { echo "$candidate"; return; }
  done
}
# A field of the last "summary" record of a --metrics file (the first element of a list).
summary_field() {
  grep '"event":"summary"' "$1" 2>/dev/null | tail -1 |
    sed -n "s/.*\"$2\":\[\{0,1\}\([-0-9.eE+]*\).*/\1/p"
}
last_step_field() {
  grep '"event":"step"' "$1" 2>/dev/null | tail -1 | sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p"
}
section() { printf '\n=== %s ===\n' "$*"; }
# run NAME COMMAND...: runs it with its output in $work/NAME.log; returns its status.
run() {
  local name=$1
  shift
  local started=$SECONDS
  "$@" >"$work/$name.log" 2>&1
  local code=$?
  echo "  ($name: exit $code after $((SECONDS - started)) s)"
  if ((code != 0)); then sed 's/^/    | /' "$work/$name.log" | tail -8; fi
  return $code
}

ddtrain=$(find_binary ddtrain)
[[ -n $ddtrain ]] || { echo "acceptance.sh: no ddtrain in $bin_dir" >&2; exit 2; }
test_comm_nccl=$(find_binary mpi_test_comm_nccl)
bench_gemm=$(find_binary ddtrain_bench_gemm)
bench_kernels=$(find_binary ddtrain_bench_kernels)
if [[ -z $python ]]; then
  for candidate in /opt/torch/.venv/bin/python3 python3; do
    command -v "$candidate" >/dev/null && { python=$candidate; break; }
  done
fi
# Python keeps the library path it had before a GPU bundle's env.sh changed it.
py() { LD_LIBRARY_PATH=${GPUKIT_ORIG_LD_LIBRARY_PATH-${LD_LIBRARY_PATH:-}} "$python" "$@"; }
# weights_difference A.h5 B.h5: the largest |a - b| of any tensor, relative to the largest |b|
# of that tensor (every dataset of B, by name).
weights_difference() {
  py - "$1" "$2" <<'EOF' 2>>"$work/compare.log"
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
worst = 0.0
def visit(name, obj):
    global worst
    if isinstance(obj, h5py.Dataset):
        x, y = a[name][...].astype("f8"), obj[...].astype("f8")
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
b.visititems(visit)
print("%.3g" % worst)
EOF
}

# The GPU adds in other orders than the CPU, so a training on it drifts from the CPU's by what
# rounding does to that training, which depends on the CPU, the GPU and the recipe (a ReLU or
# max-pool input within rounding of its kink may take the other branch on one of them and
# grow). Each GPU-against-CPU bar is therefore tied to the training's noise floor measured
# here: the CPU run again with its learning rate moved by 2^-22 of itself (a few float32 ulps:
# a rounding-size change at every step). with_nudged_lr ARGS... sets nudged_args to ARGS with
# the value after --lr so moved; floor_bar FIXED FACTOR FLOOR REFERENCE prints
# max(FIXED, FACTOR x |FLOOR - REFERENCE|).
with_nudged_lr() {
  nudged_args=("$@")
  local i
  for i in "${!nudged_args[@]}"; do
    [[ ${nudged_args[i]} == --lr ]] &&
      nudged_args[i+1]=$(py -c "import sys; print(repr(float(sys.argv[1]) * (1 + 2 ** -22)))" \
        "${nudged_args[i+1]}")
  done
}
floor_bar() {
  awk -v fixed="$1" -v factor="$2" -v x="$3" -v y="$4" \
    'BEGIN { d = x - y; if (d < 0) d = -d; b = factor * d; printf "%.3g\n", (b > fixed ? b : fixed) }'
}

epochs=15 precision_epochs=15 bench_steps=3000 wide_steps=100
((quick)) && { epochs=2; precision_epochs=1; bench_steps=300; wide_steps=20; }
model_and_optimizer=(--model 784-256-relu-128-relu-10 --global-batch 128 --optimizer sgd
                     --lr 0.05 --momentum 0.9 --log-every 0 --seed 1)
recipe=("${model_and_optimizer[@]}" --lr-schedule cosine --warmup-steps 200)
short=("${model_and_optimizer[@]}" --lr-schedule constant) # runs of a few hundred steps

# --- probe ---------------------------------------------------------------------------------
section "probe ($(date -u +%FT%TZ), $(hostname))"
version=$("$ddtrain" --version 2>&1)
echo "$version" | sed 's/^/  /'
gpus=$(sed -n 's/^cuda: built.*; \([0-9]*\) GPU(s) visible$/\1/p' <<<"$version")
if command -v nvidia-smi >/dev/null; then
  smi=$(nvidia-smi --query-gpu=name,memory.total,driver_version,pci.bus_id --format=csv,noheader 2>&1 | head -4)
  echo "  nvidia-smi: $smi"
  record probe "nvidia-smi" info "$(head -1 <<<"$smi")" ""
else
  record probe "nvidia-smi" info "not installed" ""
fi
if grep -q '^cuda: built' <<<"$version"; then
  record probe "CUDA plugin loads" pass "$(grep '^cuda:' <<<"$version")" "cuda: built"
else
  record probe "CUDA plugin loads" fail "$(grep -m1 '^cuda:' <<<"$version")" "cuda: built"
fi
if [[ -n $gpus && $gpus -ge 1 ]]; then
  record probe "GPUs visible to ddtrain" pass "$gpus" ">= 1"
else
  record probe "GPUs visible to ddtrain" fail "${gpus:-0}" ">= 1"
  gpus=0
fi
torch_line=$(py -c 'import torch, h5py; print(torch.__version__, "cuda", torch.cuda.is_available(), "h5py", h5py.__version__)' 2>&1 | tail -1)
record probe "python ($python): torch, h5py" info "$torch_line" ""

# --- data ----------------------------------------------------------------------------------
section "data: Fashion-MNIST from $data_dir"
data=$work/data
mkdir -p "$data"
if ls "$data_dir"/fashion-train*.h5 >/dev/null 2>&1; then
  train_glob="$data_dir/fashion-train*.h5" test_file=$data_dir/fashion-test.h5
else
  run convert-train "$ddtrain" convert idx "$data_dir/train-images-idx3-ubyte.gz" \
    "$data_dir/train-labels-idx1-ubyte.gz" -o "$data/fashion-train.h5" --shards 4
  run convert-test "$ddtrain" convert idx "$data_dir/t10k-images-idx3-ubyte.gz" \
    "$data_dir/t10k-labels-idx1-ubyte.gz" -o "$data/fashion-test.h5"
  train_glob="$data/fashion-train-*.h5" test_file=$data/fashion-test.h5
fi
if "$ddtrain" info "$test_file" >/dev/null 2>&1; then
  record data "Fashion-MNIST as HDF5" pass "$(ls $train_glob | wc -l) train shards + test" ""
else
  record data "Fashion-MNIST as HDF5" fail "missing" "" "$(tail -1 "$work"/convert-*.log 2>/dev/null)"
fi
train_data=(--data "$train_glob" --eval-data "$test_file")

# --- the CPU reference (runs with or without a GPU) ----------------------------------------
section "CPU reference: the quickstart recipe on 1 rank, $epochs epochs"
run cpu-reference "$ddtrain" train "${train_data[@]}" "${recipe[@]}" --epochs "$epochs" \
  --device cpu --metrics "$work/cpu.jsonl"
cpu_accuracy=$(summary_field "$work/cpu.jsonl" eval_accuracy)
[[ -n $cpu_accuracy ]] && record training "CPU reference accuracy" pass "$cpu_accuracy" "" ||
  record training "CPU reference accuracy" fail "missing" ""
run cpu-20-steps "$ddtrain" train "${train_data[@]}" "${short[@]}" --steps 20 --device cpu \
  --save "$work/cpu-20.h5"
# The noise floors of both (see with_nudged_lr).
with_nudged_lr "${recipe[@]}"
run cpu-reference-floor "$ddtrain" train "${train_data[@]}" "${nudged_args[@]}" \
  --epochs "$epochs" --device cpu --metrics "$work/cpu-floor.jsonl"
cpu_floor_accuracy=$(summary_field "$work/cpu-floor.jsonl" eval_accuracy)
with_nudged_lr "${short[@]}"
run cpu-20-steps-floor "$ddtrain" train "${train_data[@]}" "${nudged_args[@]}" --steps 20 \
  --device cpu --save "$work/cpu-20-floor.h5"

if ((gpus == 0)); then
  for s in kernels nccl training precision layers memory bench; do
    record "$s" "all $s checks" skip "not run: no GPU visible" ""
  done
else
  # --- kernels -----------------------------------------------------------------------------
  section "kernels: every operation against float64 and the CPU backend; the GPU's own checks"
  # test_engine_ops: each operation on both backends against a float64 reference (and the CPU
  # backend); test_cuda_device: what only a GPU has. Both print "measured:" lines.
  for kernels_test in test_engine_ops test_cuda_device; do
    kernels_binary=$(find_binary "$kernels_test")
    if [[ -z $kernels_binary ]]; then
      record kernels "$kernels_test" fail "not found in $bin_dir" ""
      continue
    fi
    run "$kernels_test" "$kernels_binary"
    code=$?
    grep -m1 -e '^cuda:' -e '^backend cuda:' "$work/$kernels_test.log" | sed 's/^/  device: /'
    # "measured: WHAT  worst E tolerance T ok|FAIL", or "... identical|differs tolerance bitwise ok|FAIL"
    while IFS='|' read -r name value tolerance verdict; do
      record kernels "$name" "$([[ $verdict == ok ]] && echo pass || echo fail)" "$value" "$tolerance"
    done < <(sed -n -e 's/^measured: \(.*[^ ]\) *worst \([^ ]*\) tolerance \([^ ]*\) \(ok\|FAIL\)$/\1|\2|\3|\4/p' \
                 -e 's/^measured: \(.*[^ ]\) *\(identical\|differs\) tolerance \(bitwise\) \(ok\|FAIL\)$/\1|\2|\3|\4/p' \
                 "$work/$kernels_test.log")
    [[ $code -eq 0 ]] && record kernels "$kernels_test" pass "exit 0" "0" ||
      record kernels "$kernels_test" fail "exit $code" "0" "$(grep -m3 FAIL "$work/$kernels_test.log")"
  done

  # --- nccl --------------------------------------------------------------------------------
  section "NCCL: 1 rank, 2 ranks where two GPUs are visible, and 2 ranks on one GPU refused"
  # nccl_test RANKS: mpi_test_comm_nccl on RANKS ranks (one GPU each), its summary as one row
  # and each check it reports as "not run: WHAT (WHY)" (check.h) as a skipped row of its own,
  # so that a check which proves nothing at this rank count is not counted as passed.
  nccl_test() {
    local n=$1 ranks_text="1 rank"
    ((n > 1)) && ranks_text="$n ranks"
    local name="mpi_test_comm_nccl on $ranks_text" log=$work/nccl-$n-ranks.log
    run "nccl-$n-ranks" timeout -k 5 300 mpirun -np "$n" "$test_comm_nccl"
    local code=$?
    local summary
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    if [[ $code -eq 0 && -n $summary ]]; then
      record nccl "$name" pass "$summary" "exit 0"
    else
      record nccl "$name" fail "exit $code${summary:+: $summary}" "exit 0" \
        "$(grep -m3 'FAIL\|skipped\|error' "$log")"
    fi
    local what why
    while IFS='|' read -r what why; do
      record nccl "$what ($ranks_text)" skip "not run: $why" ""
    done < <(sed -n 's/^not run: \(.*\) (\([^()]*\))$/\1|\2/p' "$log")
  }
  if [[ -n $test_comm_nccl ]]; then
    nccl_test 1
    if ((gpus >= 2)); then
      nccl_test 2
    else
      record nccl "mpi_test_comm_nccl on 2 ranks" skip "not run: $gpus GPU visible" ">= 2 GPUs"
    fi
  else
    record nccl "mpi_test_comm_nccl" fail "not found in $bin_dir" ""
  fi
  rm -f "$work"/dup-exit.*
  timeout -k 5 120 mpirun -np 2 -x CUDA_VISIBLE_DEVICES=0 sh -c \
    '"$0" "$@"; echo $? > "'"$work"'/dup-exit.${OMPI_COMM_WORLD_RANK}"' "$ddtrain" train \
    "${train_data[@]}" "${short[@]}" --steps 5 --device cuda >"$work/nccl-duplicate.log" 2>&1
  codes="$(cat "$work/dup-exit.0" 2>/dev/null),$(cat "$work/dup-exit.1" 2>/dev/null)"
  if [[ $codes == "2,2" ]] && grep -q "both use the GPU at PCI" "$work/nccl-duplicate.log"; then
    record nccl "2 ranks on one GPU: refused on both ranks" pass "exits $codes" "2,2 + message"
  else
    record nccl "2 ranks on one GPU: refused on both ranks" fail "exits $codes" "2,2 + message" \
      "$(grep -m1 'error' "$work/nccl-duplicate.log")"
  fi

  # --- training ----------------------------------------------------------------------------
  section "training: the quickstart recipe on the GPU (fp32)"
  run gpu-fp32 "$ddtrain" train "${train_data[@]}" "${recipe[@]}" --epochs "$epochs" \
    --device cuda --precision fp32 --metrics "$work/fp32.jsonl"
  gpu_accuracy=$(summary_field "$work/fp32.jsonl" eval_accuracy)
  if ((quick)); then
    record training "fp32 accuracy vs CPU (within 0.003)" skip "$gpu_accuracy vs $cpu_accuracy" "--quick"
  else
    # Two equally good models differ in accuracy by a count of test images, not by a
    # rounding-sized amount: the bar is 0.003 or 3 x the CPU floor run's difference.
    bar=$(floor_bar 0.003 3 "${cpu_floor_accuracy:-$cpu_accuracy}" "$cpu_accuracy")
    check training "fp32 accuracy vs CPU $cpu_accuracy (within $bar)" \
      "a - b <= $bar && b - a <= $bar" "$gpu_accuracy" "$cpu_accuracy" \
      "|diff| <= $bar = max(0.003, 3 x CPU floor)"
  fi
  record training "fp32 samples/s (15-epoch run)" info "$(summary_field "$work/fp32.jsonl" samples_per_s)" ""
  grep -m1 "PCI" "$work/gpu-fp32.log" | sed 's/^ */  /'
  grep -q "PCI" "$work/gpu-fp32.log" && record training "rank line names the GPU's PCI bus id" pass "yes" "yes" ||
    record training "rank line names the GPU's PCI bus id" fail "no" "yes"
  run gpu-20-steps "$ddtrain" train "${train_data[@]}" "${short[@]}" --steps 20 --device cuda \
    --save "$work/gpu-20.h5"
  difference=$(weights_difference "$work/gpu-20.h5" "$work/cpu-20.h5")
  bar=$(floor_bar 1e-4 10 "$(weights_difference "$work/cpu-20-floor.h5" "$work/cpu-20.h5")" 0)
  check training "fp32 weights after 20 steps vs CPU (relative)" 'a <= b' "$difference" "$bar" \
    "<= $bar = max(1e-4, 10 x CPU floor)"

  # --- precision ---------------------------------------------------------------------------
  section "precision: tf32, bf16, fp16 ($precision_epochs epochs each), fp16 loss-scale skips"
  if ((precision_epochs != epochs)); then
    run cpu-precision-reference "$ddtrain" train "${train_data[@]}" "${recipe[@]}" \
      --epochs "$precision_epochs" --device cpu --metrics "$work/cpu-p.jsonl"
    reference=$(summary_field "$work/cpu-p.jsonl" eval_accuracy)
  else
    reference=$cpu_accuracy
  fi
  for precision in tf32 bf16 fp16; do
    tolerance=$([[ $precision == tf32 ]] && echo 0.005 || echo 0.01)
    run "gpu-$precision" "$ddtrain" train "${train_data[@]}" "${recipe[@]}" \
      --epochs "$precision_epochs" --device cuda --precision "$precision" \
      --metrics "$work/$precision.jsonl"
    accuracy=$(summary_field "$work/$precision.jsonl" eval_accuracy)
    if ((quick)); then
      record precision "$precision accuracy" skip "$accuracy vs $reference" "--quick"
    else
      check precision "$precision accuracy vs CPU $reference (within $tolerance)" \
        "a - b <= $tolerance && b - a <= $tolerance" "$accuracy" "$reference" "|diff| <= $tolerance"
    fi
  done
  run fp16-overflow "$ddtrain" train "${train_data[@]}" "${short[@]}" --steps 300 \
    --device cuda --precision fp16 --loss-scale 1e9 --metrics "$work/fp16-overflow.jsonl"
  code=$?
  skips=$(summary_field "$work/fp16-overflow.jsonl" skipped_steps)
  logged=$(grep -c "fp16 gradient overflow; step skipped on every rank" "$work/fp16-overflow.log")
  if [[ $code -eq 0 && ${skips:-0} -ge 1 && $logged -eq ${skips:-x} ]]; then
    record precision "fp16 loss scale 1e9: steps skipped, training goes on" pass "$skips skipped, exit 0" ">= 1, logged"
  else
    record precision "fp16 loss scale 1e9: steps skipped, training goes on" fail \
      "exit $code, ${skips:-?} skipped, $logged logged" ">= 1, logged"
  fi
  final_loss=$(summary_field "$work/fp16-overflow.jsonl" final_train_loss)
  check precision "fp16 after the skips: training loss finite, < 1.0" 'a < 1.0' "$final_loss" 0 "< 1.0"

  # --- layers ------------------------------------------------------------------------------
  section "layers: the layer engine's presets cnn-small and gpt-tiny on the GPU"
  cnn_epochs=2 gpt_steps=300
  ((quick)) && { cnn_epochs=1; gpt_steps=60; }
  # preset_ready NAME DATA_ARGS...: 0 when this ddtrain plans --model NAME on the GPU (a dry
  # run fits); 1 when it does not know the preset yet (a build from before the layer engine:
  # --model refuses the name), recorded as skipped with ddtrain's message; 2 for any other
  # refusal, recorded as a failure.
  preset_ready() {
    local name=$1
    shift
    "$ddtrain" train "$@" --model "$name" --device cuda --dry-run >"$work/preset-$name.log" 2>&1
    local code=$?
    ((code == 0)) && return 0
    local message
    message=$(grep -m1 'error' "$work/preset-$name.log")
    if ((code == 2)) && grep -q -- "--model" <<<"$message" && grep -q -- "$name" <<<"$message"; then
      echo "  ddtrain does not know the preset $name yet: $message"
      record layers "$name: preset known to this ddtrain" skip "not yet: ${message#*error: }" \
        "a build with the layer engine"
      return 1
    fi
    record layers "$name: dry run on the GPU" fail "exit $code" "exit 0" "$message"
    return 2
  }

  # cnn-small on Fashion-MNIST (its N x 784 features read as 1x28x28 images).
  cnn=(--model cnn-small --global-batch 128 --optimizer sgd --lr 0.05 --momentum 0.9
       --log-every 0 --seed 1)
  if preset_ready cnn-small "${train_data[@]}" --global-batch 128; then
    record layers "cnn-small: preset known to this ddtrain" pass "yes" "yes"
    run cnn-gpu "$ddtrain" train "${train_data[@]}" "${cnn[@]}" --epochs "$cnn_epochs" \
      --lr-schedule cosine --device cuda --metrics "$work/cnn.jsonl"
    accuracy=$(summary_field "$work/cnn.jsonl" eval_accuracy)
    if ((quick)); then
      record layers "cnn-small accuracy after $cnn_epochs epoch" skip "${accuracy:-missing}" "--quick"
    else
      check layers "cnn-small accuracy after $cnn_epochs epochs" 'a >= 0.87' "$accuracy" 0 ">= 0.87"
    fi
    record layers "cnn-small samples/s" info "$(summary_field "$work/cnn.jsonl" samples_per_s)" ""
    run cnn-cpu-20 "$ddtrain" train "${train_data[@]}" "${cnn[@]}" --steps 20 --device cpu \
      --threads 8 --save "$work/cnn-cpu-20.h5"
    with_nudged_lr "${cnn[@]}"
    run cnn-cpu-20-floor "$ddtrain" train "${train_data[@]}" "${nudged_args[@]}" --steps 20 \
      --device cpu --threads 8 --save "$work/cnn-cpu-20-floor.h5"
    run cnn-gpu-20 "$ddtrain" train "${train_data[@]}" "${cnn[@]}" --steps 20 --device cuda \
      --save "$work/cnn-gpu-20.h5"
    bar=$(floor_bar 1e-3 10 \
      "$(weights_difference "$work/cnn-cpu-20-floor.h5" "$work/cnn-cpu-20.h5")" 0)
    check layers "cnn-small weights after 20 steps vs CPU (relative)" 'a <= b' \
      "$(weights_difference "$work/cnn-gpu-20.h5" "$work/cnn-cpu-20.h5")" "$bar" \
      "<= $bar = max(1e-3, 10 x CPU floor)"
  fi

  # gpt-tiny on byte tokens (vocabulary 256) of this repository's sources and documents:
  # /tokens uint16 with its vocab_size attribute, the last tenth held out for evaluation.
  tokens_made=0
  py - "$repo" "$work" >"$work/tokens.log" 2>&1 <<'EOF' && tokens_made=1
import glob, os, sys
import h5py, numpy as np
repo, out = sys.argv[1], sys.argv[2]
patterns = ("src/**/*.[ch]", "src/**/*.cu", "*.md", "bench/**/*.md", "tests/**/*.md")
paths = sorted(p for pattern in patterns
               for p in glob.glob(os.path.join(repo, pattern), recursive=True))
text = b"".join(open(p, "rb").read() for p in paths)
tokens = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
split = len(tokens) * 9 // 10
for name, part in (("train", tokens[:split]), ("test", tokens[split:])):
    with h5py.File(os.path.join(out, "tokens-%s.h5" % name), "w") as f:
        f.create_dataset("tokens", data=part, chunks=True).attrs["vocab_size"] = np.int32(256)
print(len(tokens), "tokens from", len(paths), "files")
EOF
  if ((tokens_made)); then
    echo "  byte tokens: $(tail -1 "$work/tokens.log")"
    token_data=(--data "$work/tokens-train.h5" --eval-data "$work/tokens-test.h5")
    gpt=(--model gpt-tiny --global-batch 64 --log-every 0 --seed 1)
    if preset_ready gpt-tiny "${token_data[@]}" --global-batch 64; then
      record layers "gpt-tiny: preset known to this ddtrain" pass "yes" "yes"
      for precision in fp32 bf16; do
        run "gpt-$precision" "$ddtrain" train "${token_data[@]}" "${gpt[@]}" --steps "$gpt_steps" \
          --optimizer adamw --lr 1e-3 --warmup-steps 20 --lr-schedule cosine --device cuda \
          --precision "$precision" --metrics "$work/gpt-$precision.jsonl"
      done
      loss=$(summary_field "$work/gpt-fp32.jsonl" final_train_loss)
      check layers "gpt-tiny fp32 training loss after $gpt_steps steps (nats)" 'a < 4.0' \
        "$loss" 0 "< 4.0 (uniform: 5.55)"
      record layers "gpt-tiny fp32: eval loss, samples/s" info \
        "$(summary_field "$work/gpt-fp32.jsonl" eval_loss), $(summary_field "$work/gpt-fp32.jsonl" samples_per_s)" ""
      check layers "gpt-tiny bf16 training loss vs fp32 ${loss:-?} (within 0.1)" \
        'a - b <= 0.1 && b - a <= 0.1' "$(summary_field "$work/gpt-bf16.jsonl" final_train_loss)" \
        "$loss" "|diff| <= 0.1"
      check layers "gpt-tiny bf16: allocator peak = plan (bytes)" 'a == b' \
        "$(summary_field "$work/gpt-bf16.jsonl" peak_device_bytes)" \
        "$(summary_field "$work/gpt-bf16.jsonl" planned_device_bytes)" "= plan"
      run gpt-cpu-20 "$ddtrain" train "${token_data[@]}" "${gpt[@]}" --steps 20 --optimizer sgd \
        --lr 0.05 --momentum 0.9 --device cpu --threads 8 --save "$work/gpt-cpu-20.h5"
      run gpt-cpu-20-floor "$ddtrain" train "${token_data[@]}" "${gpt[@]}" --steps 20 \
        --optimizer sgd --lr "$(py -c 'print(repr(0.05 * (1 + 2 ** -22)))')" --momentum 0.9 \
        --device cpu --threads 8 --save "$work/gpt-cpu-20-floor.h5"
      run gpt-gpu-20 "$ddtrain" train "${token_data[@]}" "${gpt[@]}" --steps 20 --optimizer sgd \
        --lr 0.05 --momentum 0.9 --device cuda --save "$work/gpt-gpu-20.h5"
      bar=$(floor_bar 1e-3 10 \
        "$(weights_difference "$work/gpt-cpu-20-floor.h5" "$work/gpt-cpu-20.h5")" 0)
      check layers "gpt-tiny weights after 20 steps vs CPU (relative)" 'a <= b' \
        "$(weights_difference "$work/gpt-gpu-20.h5" "$work/gpt-cpu-20.h5")" "$bar" \
        "<= $bar = max(1e-3, 10 x CPU floor)"
    fi
  else
    record layers "gpt-tiny: byte-token data set" fail "not made" "h5py in $python" \
      "$(tail -1 "$work/tokens.log")"
  fi

  # --- memory ------------------------------------------------------------------------------
  section "memory: the per-GPU policy on cudaMalloc"
  limit=$((2 << 30))
  smi_peak() { # samples the process's GPU memory (MiB) while a command runs
    local peak=0 pid
    "$@" &
    pid=$!
    while kill -0 $pid 2>/dev/null; do
      local used
      used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        awk -F, -v p=$pid '$1 == p { print $2 + 0 }' | head -1)
      [[ -n $used && $used -gt $peak ]] && peak=$used
      sleep 0.2
    done
    wait $pid
    local code=$?
    echo "$peak" >"$work/smi-peak"
    return $code
  }
  run preallocate smi_peak "$ddtrain" train "${train_data[@]}" "${short[@]}" --steps 300 \
    --device cuda --device-memory preallocate --device-memory-limit 2GiB \
    --metrics "$work/preallocate.jsonl"
  reserved=$(summary_field "$work/preallocate.jsonl" peak_device_reserved_bytes)
  outside=$(summary_field "$work/preallocate.jsonl" device_outside_allocator_bytes)
  check memory "preallocate 2GiB: reserved + NCCL's own = limit" 'a + b == 2147483648' \
    "$reserved" "${outside:-0}" "$limit (NCCL ${outside:-?} B)"
  check memory "preallocate: allocator peak = plan (bytes)" 'a == b' \
    "$(summary_field "$work/preallocate.jsonl" peak_device_bytes)" \
    "$(summary_field "$work/preallocate.jsonl" planned_device_bytes)" "= plan"
  record memory "nvidia-smi: the process's peak GPU memory (MiB)" info "$(cat "$work/smi-peak" 2>/dev/null)" \
    "2048 + NCCL + CUDA context"
  run growth "$ddtrain" train "${train_data[@]}" "${short[@]}" --steps 300 --device cuda \
    --device-memory growth --device-memory-limit 2GiB --metrics "$work/growth.jsonl"
  reserved=$(summary_field "$work/growth.jsonl" peak_device_reserved_bytes)
  outside=$(summary_field "$work/growth.jsonl" device_outside_allocator_bytes)
  check memory "growth 2GiB: reserved + NCCL's own <= limit" 'a + b <= 2147483648 && a > 0' \
    "$reserved" "${outside:-0}" "<= $limit"
  check memory "growth: allocator peak = plan (bytes)" 'a == b' \
    "$(summary_field "$work/growth.jsonl" peak_device_bytes)" \
    "$(summary_field "$work/growth.jsonl" planned_device_bytes)" "= plan"
  run too-small "$ddtrain" train "${train_data[@]}" "${short[@]}" --steps 300 --device cuda \
    --device-memory-limit 1MiB
  code=$?
  if [[ $code -eq 1 ]] && grep -q "more than the limit" "$work/too-small.log" &&
    ! grep -q "^epoch\|step [0-9]*/" "$work/too-small.log"; then
    record memory "limit 1MiB refused before training" pass "exit 1, message" "exit 1 + 'more than the limit'"
  else
    record memory "limit 1MiB refused before training" fail "exit $code" "exit 1 + 'more than the limit'" \
      "$(grep -m1 error "$work/too-small.log")"
  fi

  # --- bench -------------------------------------------------------------------------------
  section "bench: ddtrain against PyTorch on this GPU"
  have_torch=0
  py -c 'import torch, h5py; assert torch.cuda.is_available()' 2>/dev/null && have_torch=1
  ((have_torch)) || record bench "PyTorch peer" fail "no torch with CUDA in $python" "torch.cuda"
  run synth-wide "$ddtrain" synth -o "$work/wide.h5" --rows 65536 --features 1024 --classes 10 --seed 5
  bench_csv=$out/results.csv
  for model in quickstart wide; do
    for precision in fp32 bf16; do
      if [[ $model == quickstart ]]; then
        spec=784-256-relu-128-relu-10 batch=128 steps=$bench_steps data_args=(--data "$train_glob")
      else
        spec=1024-4096-relu-4096-relu-10 batch=4096 steps=$wide_steps data_args=(--data "$work/wide.h5")
      fi
      name=$model-$precision
      run "bench-ddtrain-$name" "$ddtrain" train "${data_args[@]}" --model "$spec" \
        --global-batch "$batch" --steps "$steps" --metrics-every $((steps / 4)) --log-every 0 \
        --optimizer sgd --lr 0.01 --momentum 0.9 --device cuda --precision "$precision" \
        --metrics "$work/bench-$name.jsonl"
      ours=$(last_step_field "$work/bench-$name.jsonl" samples_per_s)
      theirs=""
      if ((have_torch)); then
        run "bench-pytorch-$name" py "$repo/bench/vs_pytorch_peer.py" "${data_args[@]}" \
          --model "$spec" --micro-batch "$batch" --steps "$steps" --warmup-steps 20 \
          --device cuda --precision "$precision" --lr 0.01 --json
        theirs=$(tail -1 "$work/bench-pytorch-$name.log" | sed -n 's/.*"samples_per_s": \([0-9.]*\).*/\1/p')
      fi
      ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b }')
      record bench "$name samples/s ddtrain / pytorch" info "${ours:-?} / ${theirs:-?} = ${ratio:-?}x" ""
      if [[ $model == wide && -n $bench_gemm ]]; then
        run "gemm-$name" "$bench_gemm" --device cuda --precision "$precision" --model "$spec" \
          --batch "$batch" --repeats 20
        flop=$(sed -n 's/.* \([0-9.e+]*\) FLOP per step.*/\1/p' "$work/gemm-$name.log")
        ceiling=$(sed -n 's/.* \([0-9.]*\) GFLOP\/s.*/\1/p' "$work/gemm-$name.log")
        achieved=$(awk -v f="$flop" -v s="$ours" -v b="$batch" 'BEGIN { if (f > 0 && s > 0) printf "%.1f", f * s / b / 1e12 }')
        torch_tflops=$(awk -v f="$flop" -v s="$theirs" -v b="$batch" 'BEGIN { if (f > 0 && s > 0) printf "%.1f", f * s / b / 1e12 }')
        fraction=$(awk -v a="$achieved" -v c="$ceiling" 'BEGIN { if (c > 0) printf "%.0f%%", 100 * a * 1000 / c }')
        record bench "$name TFLOP/s: ddtrain, pytorch, cuBLAS GEMMs alone" info \
          "${achieved:-?}, ${torch_tflops:-?}, $(awk -v c="$ceiling" 'BEGIN { printf "%.1f", c / 1000 }') (ddtrain at ${fraction:-?})" ""
      fi
    done
  done

  # The reduction kernels alone at GPT-2's shapes, each against a copy of its bytes.
  if [[ -n $bench_kernels ]]; then
    kernels_batch=64
    ((quick)) && kernels_batch=8
    run bench-kernels "$bench_kernels" --device cuda --batch "$kernels_batch" --repeats 10 \
      --csv "$out/kernels.csv"
    code=$?
    if ((code == 0)); then
      while IFS=, read -r operation tokens vocab width _ seconds gbs _ of_copy _; do
        [[ $operation == operation ]] && continue
        record bench "kernel $operation ($tokens tokens, vocab $vocab, width $width)" info \
          "$(awk -v s="$seconds" -v g="$gbs" -v c="$of_copy" 'BEGIN { printf "%.3f ms, %.0f GB/s, %.0f%% of a copy", s * 1e3, g, 100 * c }')" ""
      done <"$out/kernels.csv"
    else
      record bench "reduction kernels at GPT-2 shapes" fail "exit $code" "exit 0" \
        "$(tail -1 "$work/bench-kernels.log")"
    fi
  else
    record bench "reduction kernels at GPT-2 shapes" fail "ddtrain_bench_kernels not found in $bin_dir" ""
  fi
fi

# --- summary -------------------------------------------------------------------------------
{
  echo "ddtrain GPU acceptance, $(date -u +%FT%TZ) on $(hostname)"
  echo "$version" | head -3
  echo
  column -s $'\t' -t <"$table" 2>/dev/null || cat "$table"
  echo
  echo "$passed passed, $failed failed, $skipped skipped"
} >"$out/summary.txt"
section "summary ($out)"
tail -n +5 "$out/summary.txt" | cut -c1-180
if ((gpus == 0)); then
  echo "no GPU visible: the GPU checks did not run (exit 3)"
  exit 3
fi
((failed == 0))
