#!/usr/bin/env bash
# failures.sh - a killed rank never leaves a hung job, a stalled rank is named, the Slurm
# world-size trap is refused, ranks started with different settings are refused, a diverging
# run stops with the step and the layer, and the --metrics step records carry the time split
# and memory.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 8192 --features 32 --classes 4 --seed 4 >/dev/null
long=(train --data "$WORK/d.h5" --model 32-512-relu-512-relu-4 --global-batch 96 --epochs 1000000
      --log-every 0 --comm-timeout 10)

# pid of the ddtrain process of a given rank (its environment names the rank).
rank_pid() {
  for pid in $(pgrep -f "ddtrain-e2e-marker-$$"); do
    if grep -qx "OMPI_COMM_WORLD_RANK=$1" <<<"$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)"; then
      [[ $(readlink "/proc/$pid/exe") == "$(readlink -f "$DDTRAIN")" ]] && { echo "$pid"; return; }
    fi
  done
}

# kill -9 one rank of 3: the job ends (mpirun, or ddtrain's own --comm-timeout) with no hang
# and no process left behind.
mpirun -np 3 --bind-to none "$DDTRAIN" "${long[@]}" --metrics "$WORK/ddtrain-e2e-marker-$$" \
  >"$WORK/kill.log" 2>&1 &
launcher=$!
for _ in $(seq 50); do victim=$(rank_pid 1); [[ -n $victim ]] && break; sleep 0.1; done
sleep 1
start=$SECONDS
kill -9 "$victim"
wait $launcher
code=$?
elapsed=$((SECONDS - start))
[[ $code -ne 0 && $elapsed -le 15 ]] && pass "kill -9 of rank 1 of 3: job ended in ${elapsed} s (exit $code)" ||
  fail "kill -9: exit $code after ${elapsed} s"
sleep 0.5
[[ -z $(pgrep -f "ddtrain-e2e-marker-$$") ]] && pass "no ddtrain process left behind" ||
  { fail "orphans: $(pgrep -af "ddtrain-e2e-marker-$$")"; pkill -9 -f "ddtrain-e2e-marker-$$"; }

# A rank killed inside the shared-memory all-reduce, after posting its part and before summing
# its slice (DDTRAIN_DEBUG_KILL=allreduce:1). Under plain mpirun the launcher ends the job.
# Under mpirun --enable-recovery it does not: the peer must see the process gone and end the
# job itself, naming the rank, long before --comm-timeout (60 s here).
killed_mid_reduce() { # NAME MPIRUN_ARGS...
  local name=$1
  shift
  local start=$SECONDS
  timeout -k 5 90 mpirun -np 2 --bind-to none "$@" -x DDTRAIN_DEBUG_KILL=allreduce:1 "$DDTRAIN" \
    train --data "$WORK/d.h5" --model 32-512-relu-512-relu-4 --global-batch 96 --steps 100 \
    --log-every 0 --comm-timeout 60 --metrics "$WORK/ddtrain-e2e-marker-$$" >"$WORK/killed.log" 2>&1
  local code=$? elapsed=$((SECONDS - start))
  echo "$code $elapsed"
}
read -r code elapsed < <(killed_mid_reduce "plain")
[[ $code -ne 0 && $code -ne 124 && $elapsed -le 20 ]] &&
  pass "rank 1 killed mid-reduce: job ended in ${elapsed} s (exit $code)" ||
  { fail "killed mid-reduce: exit $code after ${elapsed} s"; tail -5 "$WORK/killed.log"; }
read -r code elapsed < <(killed_mid_reduce "recovery" --enable-recovery)
message=$(grep -m1 "ddtrain: error" "$WORK/killed.log")
[[ $code -ne 124 && $code -ne 137 && $elapsed -le 20 && $message == *"rank 1 (process "*"is gone"* ]] &&
  pass "rank 1 killed mid-reduce, launcher not ending the job: ended in ${elapsed} s: ${message:0:160}" ||
  { fail "killed mid-reduce under --enable-recovery: exit $code after ${elapsed} s"; tail -5 "$WORK/killed.log"; }
sleep 0.5
[[ -z $(pgrep -f "ddtrain-e2e-marker-$$") ]] && pass "no ddtrain process left behind" ||
  { fail "orphans: $(pgrep -af "ddtrain-e2e-marker-$$")"; pkill -9 -f "ddtrain-e2e-marker-$$"; }

# A stalled rank (SIGSTOP for a while) is named by rank 0, and the run then carries on until
# the test stops it with SIGUSR1 (an effectively endless run: independent of machine speed).
# A wide batch through a narrow model: steps are mostly compute, so the stop lands there (a
# rank stopped inside the all-reduce has already arrived, and is reported without a name).
mpirun -np 2 --bind-to none "$DDTRAIN" train --data "$WORK/d.h5" --model 32-1024-relu-4 \
  --global-batch 2048 --epochs 1000000 --log-every 0 --comm-timeout 30 \
  --metrics "$WORK/ddtrain-e2e-marker-$$" >"$WORK/stall.log" 2>&1 &
launcher=$!
for _ in $(seq 300); do grep -q "=> model" "$WORK/stall.log" 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 50); do victim=$(rank_pid 1); [[ -n $victim ]] && break; sleep 0.1; done
[[ -n $victim ]] || fail "stall test: could not find rank 1's process"
sleep 0.5
kill -STOP "$victim"
sleep 6
kill -CONT "$victim"
sleep 1
kill -USR1 $launcher
wait $launcher
code=$?
grep -q "waited [0-9]* s for rank(s) 1, which have not reached it or have gone silent" "$WORK/stall.log" &&
  pass "stalled rank named: $(grep -o 'step [0-9]*: waited [0-9]* s for rank(s) 1' "$WORK/stall.log")" ||
  { fail "stall not reported"; grep -i "warn" "$WORK/stall.log" | head -3; }
[[ $code -eq 0 ]] && pass "the run carried on after the stall and stopped cleanly on SIGUSR1" ||
  fail "stalled run exit $code"

# The Slurm trap: N singletons that each think they are the whole job.
SLURM_NTASKS=3 expect_fail_all_ranks "world size 2 under SLURM_NTASKS=3 refused" 2 2 \
  "Slurm says SLURM_NTASKS=3, but MPI started a world of 2 ranks" -- train --data "$WORK/d.h5" \
  --model 32-64-relu-4 --steps 5

# Ranks started with different settings (a wrapper that adds OPTION VALUE0 on rank 0 and
# OPTION VALUE1 on the others): refused at set-up on every rank (exit 2), naming the option
# and both values, for train, eval and generate; --threads may differ, and --data may name an
# identical copy under another path.
per_rank() { # NAME CODE TEXT OPTION VALUE0 VALUE1 -- ARGS...
  local name=$1 code=$2 text=$3 option=$4 v0=$5 v1=$6
  shift 7
  rm -f "$WORK"/rank-exit.*
  timeout -k 5 "$TIMEOUT" mpirun -np 2 --bind-to none -x "PER_RANK_OPTION=$option" \
    -x "PER_RANK_0=$v0" -x "PER_RANK_1=$v1" bash -c '
    value=$PER_RANK_1; [[ $OMPI_COMM_WORLD_RANK == 0 ]] && value=$PER_RANK_0
    "$0" "$@" "$PER_RANK_OPTION" "$value"; echo $? >"'"$WORK"'/rank-exit.$OMPI_COMM_WORLD_RANK"' \
    "$DDTRAIN" "$@" >"$WORK/out.txt" 2>"$WORK/err.txt"
  local problems="" r got
  for r in 0 1; do
    got=$(cat "$WORK/rank-exit.$r" 2>/dev/null || echo missing)
    [[ $got == "$code" ]] || problems+=" rank $r exit $got (expected $code);"
  done
  [[ -z $text ]] || grep -qF -- "$text" "$WORK/err.txt" || problems+=" stderr lacks '$text';"
  if [[ -z $problems ]]; then pass "$name${text:+: $(grep -m1 'ddtrain: error' "$WORK/err.txt" | cut -c1-140)}"; else
    fail "$name:$problems"
    grep ddtrain "$WORK/err.txt" | head -3 | sed 's/^/    /'
  fi
}
small=(--model 32-64-relu-4 --global-batch 64 --steps 3 --log-every 0)
"$DDTRAIN" synth -o "$WORK/other.h5" --rows 8192 --features 32 --classes 4 --seed 5 >/dev/null
mkdir -p "$WORK/node1" && cp "$WORK/d.h5" "$WORK/node1/d.h5"
per_rank "another --lr on rank 1" 2 "--lr is '0.05' on rank 0 but '0.1' on rank 1" \
  --lr 0.05 0.1 -- train --data "$WORK/d.h5" "${small[@]}"
per_rank "another --model on rank 1" 2 "--model is '32-64-relu-4' on rank 0 but '32-65-relu-4' on rank 1" \
  --model 32-64-relu-4 32-65-relu-4 -- train --data "$WORK/d.h5" "${small[@]}"
per_rank "other data on rank 1" 2 "--data names other data on rank 1 than on rank 0" \
  --data "$WORK/d.h5" "$WORK/other.h5" -- train "${small[@]}"
per_rank "other evaluation data on rank 1" 2 "--eval-data names other data on rank 1" \
  --eval-data "$WORK/d.h5" "$WORK/other.h5" -- train --data "$WORK/d.h5" "${small[@]}"
per_rank "an identical copy of the data under another path on rank 1" 0 "" \
  --data "$WORK/d.h5" "$WORK/node1/d.h5" -- train "${small[@]}"
per_rank "another --threads on rank 1" 0 "" --threads 1 2 -- train --data "$WORK/d.h5" "${small[@]}"
# A bad all-reduce setting is agreed before the collective set-up: one message, from the rank
# given it, and exit 2 on every rank.
rm -f "$WORK"/rank-exit.*
timeout -k 5 "$TIMEOUT" mpirun -np 2 --bind-to none bash -c '
  [[ $OMPI_COMM_WORLD_RANK == 1 ]] && export DDTRAIN_ALLREDUCE_STORES=bogus
  "$0" "$@"; echo $? >"'"$WORK"'/rank-exit.$OMPI_COMM_WORLD_RANK"' \
  "$DDTRAIN" train --data "$WORK/d.h5" "${small[@]}" >"$WORK/out.txt" 2>"$WORK/err.txt"
if [[ $(cat "$WORK"/rank-exit.0 "$WORK"/rank-exit.1 2>/dev/null | tr '\n' ' ') == "2 2 " &&
      $(grep -c "ddtrain: error" "$WORK/err.txt") == 1 ]] &&
   grep -qF "error (rank 1 of 2 on $(hostname)): DDTRAIN_ALLREDUCE_STORES=bogus: give auto" "$WORK/err.txt"; then
  pass "a bad DDTRAIN_ALLREDUCE_STORES on rank 1: said once, by rank 1, exit 2 on both"
else
  fail "a bad DDTRAIN_ALLREDUCE_STORES on rank 1: exits $(cat "$WORK"/rank-exit.* 2>/dev/null | tr '\n' ' ')"
  grep ddtrain "$WORK/err.txt" | head -3 | sed 's/^/    /'
fi
ranks 1 train --data "$WORK/d.h5" "${small[@]}" --save "$WORK/small.h5" >/dev/null 2>&1 || fail "a model to evaluate"
per_rank "eval: other data on rank 1" 2 "--data names other data on rank 1" \
  --data "$WORK/d.h5" "$WORK/other.h5" -- eval --model-file "$WORK/small.h5"
per_rank "eval: another --micro-batch on rank 1" 2 "--micro-batch is '64' on rank 0 but '32' on rank 1" \
  --micro-batch 64 32 -- eval --model-file "$WORK/small.h5" --data "$WORK/d.h5"
"$DDTRAIN" convert text "$HERE/lib.sh" -o "$WORK/text.h5" >/dev/null || fail "a text dataset"
ranks 1 train --data "$WORK/text.h5" --model "gpt(layers=1,heads=2,width=16,context=16,vocab=256)" \
  --global-batch 8 --steps 2 --log-every 0 --save "$WORK/g.h5" >/dev/null 2>&1 || fail "a token model"
per_rank "generate: another --temperature on rank 1" 2 "--temperature is '0' on rank 0 but '0.5' on rank 1" \
  --temperature 0 0.5 -- generate --model-file "$WORK/g.h5" --prompt "The " --tokens 5

# Divergence: stopped at the step, naming the layer (fp32), on every rank.
expect_fail_all_ranks "a diverging run stops with step and layer" 2 1 "is not finite (NaN or Inf) after the all-reduce" -- \
  train --data "$WORK/d.h5" --model 32-64-relu-4 --global-batch 64 --epochs 2 --lr 1e6 --momentum 0

# --metrics step records: loss, lr, samples/s, the time split and memory in use.
ranks 2 train --data "$WORK/d.h5" --model 32-64-relu-4 --global-batch 64 --epochs 1 --log-every 0 \
  --metrics-every 32 --metrics "$WORK/m.jsonl" >/dev/null 2>&1
$PY - "$WORK/m.jsonl" <<'PY' && pass "metrics: a step record every 32 steps with time split and memory" || fail "metrics step records"
import json, sys
records = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in records if r["event"] == "step"]
keys = {"step", "epoch", "loss", "lr", "samples_per_s", "data_wait_s", "compute_s",
        "communication_s", "optimizer_s", "device_bytes_in_use", "staging_bytes_in_use", "rss_bytes"}
assert [r["step"] for r in steps] == [32, 64, 96, 128], [r["step"] for r in steps]
assert all(keys <= set(r) for r in steps), set(steps[0])
assert records[-1]["event"] == "summary"
PY
finish
