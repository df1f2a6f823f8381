#!/usr/bin/env bash
# stalls.sh - a rank that stalls (a hung file system, a stopped process) cannot hang the job in
# any phase: at start-up, in a training step, during evaluation, during a checkpoint, and in
# `ddtrain eval`. DDTRAIN_DEBUG_STALL=POINT:RANK makes that rank sleep at that point; the others
# must end the job on every rank within --comm-timeout (3 s here, plus start-up and slack),
# with a message that names the point and, when rank 0 is not the stalled one, the rank.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 4096 --features 16 --classes 4 --seed 1 >/dev/null
"$DDTRAIN" synth -o "$WORK/e.h5" --rows 1024 --features 16 --classes 4 --seed 2 >/dev/null
train=(train --data "$WORK/d.h5" --eval-data "$WORK/e.h5" --model 16-32-relu-4 --global-batch 64
       --steps 200 --log-every 0 --comm-timeout 3)

stalled() { # NAME POINT:RANK TEXT... -- ARGS...
  local name=$1 stall=$2
  shift 2
  local texts=()
  while [[ $1 != -- ]]; do texts+=("$1"); shift; done
  shift
  local start=$SECONDS
  timeout -k 5 60 mpirun -np 2 --bind-to none -x DDTRAIN_DEBUG_STALL="$stall" "$DDTRAIN" "$@" \
    >"$WORK/out.txt" 2>"$WORK/err.txt"
  local code=$? elapsed=$((SECONDS - start)) problems=""
  [[ $code -eq 124 || $code -eq 137 ]] && problems+=" hung (killed by the test's timeout);"
  [[ $code -eq 0 ]] && problems+=" exit 0;"
  ((elapsed <= 25)) || problems+=" took ${elapsed} s;"
  for text in "${texts[@]}"; do grep -qF -- "$text" "$WORK/err.txt" || problems+=" stderr lacks '$text';"; done
  if [[ -z $problems ]]; then
    pass "$name: ended in ${elapsed} s, exit $code: $(grep -m1 'ddtrain: error' "$WORK/err.txt" | cut -c1-150)"
  else
    fail "$name:$problems"
    grep "ddtrain" "$WORK/err.txt" | head -4 | sed 's/^/    /'
  fi
}

stalled "rank 1 stalls at start-up" setup:1 "rank(s) 1" "set-up" -- "${train[@]}"
stalled "rank 1 stalls in a training step" step:1 "rank(s) 1" -- "${train[@]}"
# Inside the shared-memory all-reduce: the rank posted its part and never writes its flag.
stalled "rank 1 stalls mid-reduce (its flag never comes)" allreduce:1 \
  "rank 1 has not summed its slice" "--comm-timeout" -- "${train[@]}"
stalled "rank 0 stalls mid-reduce" allreduce:0 "rank 0 has not summed its slice" -- "${train[@]}"
DDTRAIN_NODE_RANKS=1 stalled "rank 1 stalls mid-reduce on 2 emulated nodes (in the ring)" \
  allreduce:1 "rank 1 (on another node) has not sent its part" -- "${train[@]}"
stalled "rank 1 stalls during evaluation" evaluation:1 "evaluation" "rank(s) 1" -- "${train[@]}"
stalled "rank 0 stalls writing a checkpoint" checkpoint:0 "a checkpoint made no progress" -- \
  "${train[@]}" --checkpoint-dir "$WORK/ckpt" --checkpoint-every 50
stalled "rank 1 stalls at a checkpoint" checkpoint:1 "a checkpoint" "rank(s) 1" -- \
  "${train[@]}" --checkpoint-dir "$WORK/ckpt2" --checkpoint-every 50
"$DDTRAIN" train --data "$WORK/d.h5" --model 16-32-relu-4 --global-batch 64 --steps 5 --log-every 0 \
  --save "$WORK/m.h5" >/dev/null 2>&1 || fail "training a model for eval"
stalled "ddtrain eval: rank 1 stalls" evaluation:1 "evaluation" "rank(s) 1" -- \
  eval --model-file "$WORK/m.h5" --data "$WORK/e.h5" --comm-timeout 3
sleep 1
[[ -z $(pgrep -f "DDTRAIN_DEBUG_STALL\|$WORK/d.h5\|$WORK/e.h5") ]] && pass "no process left behind" ||
  { fail "processes left: $(pgrep -af "$WORK")"; pkill -9 -f "$WORK"; }
finish
