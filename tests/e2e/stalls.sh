#!/usr/bin/env bash
# stalls.sh - a rank that stalls (a hung file system, a stopped process) cannot hang the job in
# any phase: before MPI is up, at set-up, in a training step, inside the all-reduce, during
# evaluation, during a checkpoint, in `ddtrain eval` and `ddtrain generate`, and at the very
# end (MPI_Finalize). DDTRAIN_DEBUG_STALL=POINT:RANK makes that rank sleep at that point (and
# announce it with the wall-clock time); the others must end the job on every rank within the
# bound --comm-timeout documents. Measured from the stall, with every line of stderr stamped
# as it comes:
#   - a rank decides to end the job (its "ddtrain: error" line) within the timeout (4 s) plus
#     DECIDE_GRACE: the other ranks reaching their wait after the stall, the 0.4 s ranks other
#     than 0 give rank 0 to name the rank while rank 0 answers, the waits' 0.25-0.5 s ticks;
#   - mpirun has ended every rank within the timeout plus END_GRACE: mpirun sends SIGTERM,
#     which train turns into a stop request that a rank stuck in a wait (or the stalled one)
#     does not act on, then SIGKILL; 1-4 s on a loaded 2-core machine.
# It checks the message too: the phase, and the stalled rank where one can be named (rank 0
# included: the others name it). DDTRAIN_STALLS_RANKS=4 runs every case on 4 ranks (the suite
# runs most on 2, a few on 4).
source "$(dirname "$0")/lib.sh"

TIMEOUT_S=4
DECIDE_GRACE=2
END_GRACE=6

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 4096 --features 16 --classes 4 --seed 1 >/dev/null
"$DDTRAIN" synth -o "$WORK/e.h5" --rows 1024 --features 16 --classes 4 --seed 2 >/dev/null
train=(train --data "$WORK/d.h5" --eval-data "$WORK/e.h5" --model 16-32-relu-4 --global-batch 64
       --steps 200 --log-every 0 --comm-timeout "$TIMEOUT_S")

# With -sigstop (POINT init), rank RANK is stopped for real (SIGSTOP) before ddtrain starts.
stalled() { # [-np N] [-sigstop] NAME POINT:RANK TEXT... -- ARGS...
  local n=${DDTRAIN_STALLS_RANKS:-2} variable=DDTRAIN_DEBUG_STALL launch=("$DDTRAIN")
  if [[ $1 == -np ]]; then n=$2; shift 2; fi
  if [[ $1 == -sigstop ]]; then
    variable=STALLS_STOP
    launch=(bash -c 'if [[ $OMPI_COMM_WORLD_RANK == "${STALLS_STOP#init:}" ]]; then
      echo "ddtrain: debug: rank $OMPI_COMM_WORLD_RANK stalls at '"'init'"' (SIGSTOP), wall clock $(date +%s.%N)" >&2
      kill -STOP $$; fi; exec "$0" "$@"' "$DDTRAIN")
    shift
  fi
  local name=$1 stall=$2
  shift 2
  local texts=()
  while [[ $1 != -- ]]; do texts+=("$1"); shift; done
  shift
  # Every line of stderr stamped with the wall clock as it comes; the last, mpirun's exit.
  { timeout -k 5 60 mpirun -np "$n" --bind-to none -x "$variable=$stall" "${launch[@]}" "$@" \
      2>&1 >"$WORK/out.txt"
    echo "mpirun exit $?"; } |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$WORK/err.txt"
  local code problems="" stalled_at decided ended after_decided after_ended
  code=$(sed -n 's/^[0-9.]* mpirun exit \([0-9]*\)$/\1/p' "$WORK/err.txt")
  [[ $code -eq 124 || $code -eq 137 ]] && problems+=" hung (killed by the test's timeout);"
  [[ $code -eq 0 ]] && problems+=" exit 0;"
  stalled_at=$(sed -n "s/^[0-9.]* ddtrain: debug: rank .* stalls at .*wall clock \([0-9.]*\)$/\1/p" "$WORK/err.txt" | head -1)
  decided=$(grep -m1 '^[0-9.]* ddtrain: error' "$WORK/err.txt" | cut -d' ' -f1)
  ended=$(grep '^[0-9.]* mpirun exit' "$WORK/err.txt" | cut -d' ' -f1)
  if [[ -z $stalled_at || -z $decided ]]; then
    problems+=" no stall announced or no error;"
  else
    after_decided=$(awk -v a="$stalled_at" -v b="$decided" 'BEGIN { printf "%.1f", b - a }')
    after_ended=$(awk -v a="$stalled_at" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')
    awk -v t="$after_decided" -v limit=$((TIMEOUT_S + DECIDE_GRACE)) 'BEGIN { exit !(t <= limit) }' ||
      problems+=" the first error came ${after_decided} s after the stall (bound: --comm-timeout $TIMEOUT_S + $DECIDE_GRACE s);"
    awk -v t="$after_ended" -v limit=$((TIMEOUT_S + END_GRACE)) 'BEGIN { exit !(t <= limit) }' ||
      problems+=" mpirun ended ${after_ended} s after the stall (bound: --comm-timeout $TIMEOUT_S + $END_GRACE s);"
  fi
  for text in "${texts[@]}"; do grep -qF -- "$text" "$WORK/err.txt" || problems+=" stderr lacks '$text';"; done
  if [[ -z $problems ]]; then
    pass "$name ($n ranks): error ${after_decided} s and end ${after_ended} s after the stall, exit $code: $(grep -m1 'ddtrain: error' "$WORK/err.txt" | cut -d' ' -f2- | cut -c1-150)"
  else
    fail "$name ($n ranks):$problems"
    grep "ddtrain" "$WORK/err.txt" | head -4 | sed 's/^/    /'
  fi
}

# Before MPI is up nobody can be named: every rank that waits names the phase and ends, and
# mpirun ends the stopped one.
stalled -sigstop "rank 1 stopped (SIGSTOP) before MPI_Init" init:1 \
  "MPI start-up (MPI_Init) did not finish within 4 s" -- "${train[@]}"
stalled -np 4 -sigstop "rank 2 stopped (SIGSTOP) before MPI_Init" init:2 \
  "MPI start-up (MPI_Init) did not finish within 4 s" -- "${train[@]}"
stalled "rank 0 stalls before MPI_Init" init:0 "MPI start-up (MPI_Init) did not finish" -- "${train[@]}"
stalled "rank 1 stalls at start-up" setup:1 "rank(s) 1" "set-up" -- "${train[@]}"
stalled "rank 0 stalls at start-up" setup:0 "rank(s) 0 never reached it" "set-up" -- "${train[@]}"
stalled "rank 1 stalls in a training step" step:1 "rank(s) 1" -- "${train[@]}"
# Inside the shared-memory all-reduce: the rank posted its part and never writes its flag.
stalled "rank 1 stalls mid-reduce (its flag never comes)" allreduce:1 \
  "rank 1 has not summed its slice" "--comm-timeout" -- "${train[@]}"
stalled "rank 0 stalls mid-reduce" allreduce:0 "rank 0 has not summed its slice" -- "${train[@]}"
DDTRAIN_NODE_RANKS=1 stalled "rank 1 stalls mid-reduce on 2 emulated nodes (in the ring)" \
  allreduce:1 "rank 1 (on another node) has not sent its part" -- "${train[@]}"
stalled "rank 1 stalls during evaluation" evaluation:1 "evaluation" "rank(s) 1" -- "${train[@]}"
stalled -np 4 "rank 0 stalls during evaluation" evaluation:0 "evaluation" "rank(s) 0 never reached it" -- "${train[@]}"
stalled -np 4 "rank 2 stalls during evaluation" evaluation:2 "evaluation" "rank(s) 2" -- "${train[@]}"
stalled "rank 0 stalls writing a checkpoint" checkpoint:0 "a checkpoint made no progress" \
  "rank(s) 0 never reached it" -- "${train[@]}" --checkpoint-dir "$WORK/ckpt" --checkpoint-every 50
stalled "rank 1 stalls at a checkpoint" checkpoint:1 "a checkpoint" "rank(s) 1" -- \
  "${train[@]}" --checkpoint-dir "$WORK/ckpt2" --checkpoint-every 50
# After the last meeting, before MPI_Finalize (which waits for every rank).
stalled "rank 1 stalls at the very end" end:1 "the end of the job (MPI_Finalize) did not finish within 4 s" -- \
  "${train[@]}"
"$DDTRAIN" train --data "$WORK/d.h5" --model 16-32-relu-4 --global-batch 64 --steps 5 --log-every 0 \
  --save "$WORK/m.h5" >/dev/null 2>&1 || fail "training a model for eval"
stalled "ddtrain eval: rank 1 stalls" evaluation:1 "evaluation" "rank(s) 1" -- \
  eval --model-file "$WORK/m.h5" --data "$WORK/e.h5" --comm-timeout "$TIMEOUT_S"
stalled -np 4 "ddtrain eval: rank 0 stalls" evaluation:0 "evaluation" "rank(s) 0 never reached it" -- \
  eval --model-file "$WORK/m.h5" --data "$WORK/e.h5" --comm-timeout "$TIMEOUT_S"
# generate: every rank generates; a stalled one is named at the end of the generation.
"$DDTRAIN" convert text "$HERE/lib.sh" -o "$WORK/text.h5" >/dev/null || fail "a text dataset"
"$DDTRAIN" train --data "$WORK/text.h5" --model "gpt(layers=1,heads=2,width=16,context=16,vocab=256)" \
  --global-batch 8 --steps 2 --log-every 0 --save "$WORK/g.h5" >/dev/null 2>&1 || fail "a token model"
stalled "ddtrain generate: rank 1 stalls" generate:1 "generating" "rank(s) 1" -- \
  generate --model-file "$WORK/g.h5" --prompt "The " --tokens 20 --comm-timeout "$TIMEOUT_S"
stalled "ddtrain generate: rank 0 stalls" generate:0 "generating" "rank(s) 0 never reached it" -- \
  generate --model-file "$WORK/g.h5" --prompt "The " --tokens 20 --comm-timeout "$TIMEOUT_S"
sleep 1
[[ -z $(pgrep -f "DDTRAIN_DEBUG_STALL\|$WORK/d.h5\|$WORK/e.h5\|$WORK/g.h5") ]] && pass "no process left behind" ||
  { fail "processes left: $(pgrep -af "$WORK")"; pkill -9 -f "$WORK"; }
finish
