#!/usr/bin/env bash
# slurm.sh - ddtrain under a real Slurm: a single-node cluster on localhost (Debian's slurm-wlm
# and munge, brought up by launch/slurm/local-cluster.sh) runs the batch templates with sbatch
# (srun --mpi=pmix, and mpirun inside the allocation), srun --mpi=pmix directly and mpirun
# under salloc, which must form one 2-rank world; a launch that leaves each task a world of its
# own is refused on every task without hanging; when ddtrain has --checkpoint-dir, a USR1
# warning to the batch job checkpoints, requeues and resumes it. The daemons are stopped at
# the end whatever happens, and none of the processes they started may remain.
# Skipped (exit 77) only when not root or slurm-wlm and munge cannot be installed.
source "$(dirname "$0")/lib.sh"
REPO=$(cd "$HERE/../.." && pwd)
LOCAL_CLUSTER=$REPO/launch/slurm/local-cluster.sh
TEMPLATES=$REPO/launch/slurm

if [[ $(id -u) -ne 0 ]]; then
  echo "skipped: not root (the test cluster's daemons run as root)"
  exit 77
fi
if ! "$REPO/launch/install-deps.sh" slurm >"$WORK/install.txt" 2>&1; then
  echo "skipped: slurm-wlm and munge cannot be installed: $(tail -1 "$WORK/install.txt")"
  exit 77
fi

# Nothing from an outer Slurm job (CI inside Slurm) may leak into this cluster's commands.
# shellcheck disable=SC2046 # names of variables
unset $(compgen -e | grep '^SLURM_') 2>/dev/null
CLUSTER=$WORK/cluster
STARTED=0
cleanup() {
  [[ $STARTED -eq 1 ]] && "$LOCAL_CLUSTER" stop "$CLUSTER" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP # so that the EXIT trap runs
LIMIT=60                     # seconds any one Slurm command may take: nothing may hang

# show FILE: the last lines of a job's output, indented, after a failure.
show() { [[ -f $1 ]] && tail -n "${2:-15}" "$1" | sed 's/^/    /'; }
job_field() { scontrol show job "$1" 2>/dev/null | grep -o "\b$2=[^ ]*" | head -1 | cut -d= -f2-; }
# summary FILE KEY: KEY of the last summary record of a --metrics file.
summary() {
  $PY -c "import json,sys
r=[json.loads(l) for l in open(sys.argv[1]) if '\"summary\"' in l][-1]
print(r[sys.argv[2]])" "$1" "$2" 2>/dev/null
}
# wait_until SECONDS COMMAND...: polls every 0.1 s; fails after SECONDS.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [[ $SECONDS -lt $deadline ]] || return 1
    sleep 0.1
  done
}

start=$SECONDS
STARTED=1 # from here on the EXIT trap stops whatever part of the cluster is up
if ! timeout -k 5 "$LIMIT" "$LOCAL_CLUSTER" start "$CLUSTER" >"$WORK/start.txt" 2>&1; then
  fail "single-node Slurm cluster did not start"
  show "$WORK/start.txt" 40
  finish
  exit
fi
export SLURM_CONF=$CLUSTER/slurm.conf
pass "cluster up in $((SECONDS - start)) s: $(sinfo -h -o '%P %a %D %T %N' | head -1)"
daemon_pids=$(cat "$CLUSTER"/pids/*)

"$DDTRAIN" synth -o "$WORK/train.h5" --rows 4096 --features 16 --classes 4 --seed 3 >/dev/null
"$DDTRAIN" synth -o "$WORK/test.h5" --rows 1024 --features 16 --classes 4 --seed 3 >/dev/null
checkpoints=0
grep -q -- --checkpoint-dir <<<"$("$DDTRAIN" train --help)" && checkpoints=1
small=(DATA="$WORK/train.h5" EVAL_DATA="$WORK/test.h5" MODEL=16-32-relu-4 STEPS=40 GLOBAL_BATCH=64)

# check_batch_job NAME ID OUTFILE RUNDIR LAUNCHER: the job COMPLETED with exit 0, its output
# shows a finished 2-rank training launched by LAUNCHER, and its metrics say 2 ranks.
check_batch_job() {
  local name=$1 id=$2 out=$3 run=$4 launcher=$5 problems=""
  [[ $(job_field "$id" JobState) == COMPLETED ]] || problems+=" state $(job_field "$id" JobState);"
  [[ $(job_field "$id" ExitCode) == 0:0 ]] || problems+=" exit code $(job_field "$id" ExitCode);"
  grep -q "running: $launcher " "$out" || problems+=" not launched by $launcher;"
  grep -q "^ddtrain train: 2 ranks" "$out" || problems+=" no 2-rank configuration line;"
  grep -q "rank 1 of 2 on" "$out" || problems+=" no line for rank 1 of 2;"
  grep -q "^done: 40 steps" "$out" || problems+=" no 'done: 40 steps' line;"
  [[ $(summary "$run/metrics.jsonl" ranks) == 2 ]] || problems+=" metrics summary lacks ranks 2;"
  [[ -s $run/model.h5 ]] || problems+=" no model saved;"
  if [[ $checkpoints -eq 1 ]] && ! compgen -G "$run/checkpoints/*" >/dev/null; then
    problems+=" no checkpoint written;"
  fi
  if [[ -z $problems ]]; then pass "$name: job $id COMPLETED, 2 ranks, $(grep -m1 '^done:' "$out" | sed 's/,.*//')"; else
    fail "$name:$problems"
    show "$out"
  fi
}

job_ended() { [[ $(job_field "$1" JobState) =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]]; }

# 1. The single-node template, as submitted: sbatch --wait, srun --mpi=pmix inside. sbatch
# --wait looks at the job every few seconds (up to 10), so it waits in the background while
# the next jobs and steps queue behind this one; it is checked after them.
(cd "$WORK" && env "${small[@]}" OUT="$WORK/run1" timeout -k 5 "$LIMIT" \
  sbatch --parsable --wait --output="$WORK/job1.out" "$TEMPLATES/ddtrain-single-node.sbatch" \
  --log-every 0 >"$WORK/sbatch1.txt" 2>&1
  echo $? >"$WORK/sbatch1.code") &
sbatch_wait=$!
wait_until 10 grep -qs '^[0-9]' "$WORK/sbatch1.txt" # submitted first

# 2. The multi-node template on this one node, with mpirun inside the allocation.
id2=$(cd "$WORK" && env "${small[@]}" OUT="$WORK/run2" LAUNCHER=mpirun timeout -k 5 "$LIMIT" \
  sbatch --parsable --nodes=1 --ntasks-per-node=2 --output="$WORK/job2.out" \
  "$TEMPLATES/ddtrain-multi-node.sbatch" --log-every 0 2>"$WORK/sbatch2.err")

# 3. srun --mpi=pmix directly, and mpirun (through launch/ddtrain-mpirun) inside salloc: the
# same 2-rank world, so the same result to the last bit.
train=(train --data "$WORK/train.h5" --eval-data "$WORK/test.h5" --model 16-32-relu-4
       --steps 30 --global-batch 64 --log-every 0)
expect_ok "srun -n 2 --mpi=pmix ddtrain train" \
  timeout -k 5 "$LIMIT" srun -n 2 --mpi=pmix "$DDTRAIN" "${train[@]}" --metrics "$WORK/srun.jsonl"
[[ $(summary "$WORK/srun.jsonl" ranks) == 2 ]] && pass "srun: metrics summary from 2 ranks" ||
  { fail "srun: no 2-rank metrics summary"; show "$WORK/out.txt"; }
expect_ok "salloc -n 2 launch/ddtrain-mpirun -n 2 ddtrain train" \
  timeout -k 5 "$LIMIT" salloc -n 2 "$REPO/launch/ddtrain-mpirun" -n 2 "${train[@]}" \
  --metrics "$WORK/salloc.jsonl"
grep -q "^ddtrain-mpirun: mpirun -np 2 " "$WORK/out.txt" || fail "ddtrain-mpirun printed no mpirun command"
srun_loss=$(summary "$WORK/srun.jsonl" final_train_loss)
salloc_loss=$(summary "$WORK/salloc.jsonl" final_train_loss)
[[ $(summary "$WORK/salloc.jsonl" ranks) == 2 && -n $srun_loss && $srun_loss == "$salloc_loss" ]] &&
  pass "srun and mpirun-in-salloc: 2 ranks, same final loss $srun_loss" ||
  fail "srun and mpirun-in-salloc differ: loss '$srun_loss' vs '$salloc_loss'"

# 4. Tasks that do not form one world must not train. run_tasks SRUN_OPTIONS -- COMMAND:
# srun -n 2 -l (output lines labelled by task), each task's exit code in task-exit.N.
run_tasks() {
  local srun_args=()
  while [[ $1 != -- ]]; do srun_args+=("$1") && shift; done
  shift
  rm -f "$WORK"/task-exit.*
  timeout -k 5 "$LIMIT" srun -n 2 -l "${srun_args[@]}" sh -c \
    '"$@"; echo $? >"'"$WORK"'/task-exit.$SLURM_PROCID"' sh "$@" >"$WORK/out.txt" 2>&1
  local code=$?
  [[ $code -eq 124 || $code -eq 137 ]] && echo "timed out (hang)" && return
  local task
  for task in 0 1; do echo "$(cat "$WORK/task-exit.$task" 2>/dev/null || echo missing)"; done
}
# 4a. --mpi=none as given. Debian's Open MPI refuses it in MPI_Init (it sees SLURM_NODELIST
# but no PMIx server); MPI builds that start a singleton per task instead meet ddtrain's check.
start=$SECONDS
codes=$(run_tasks --mpi=none -- "$DDTRAIN" "${train[@]}" | paste -sd' ')
if [[ $codes =~ ^[1-9][0-9]*\ [1-9][0-9]*$ ]]; then
  if grep -q "MPI started a world of 1 rank" "$WORK/out.txt"; then by="ddtrain's Slurm check"; else
    by="Open MPI (no PMIx server: $(grep -m1 -o "OMPI was not built with SLURM's PMI support" "$WORK/out.txt"))"; fi
  pass "srun -n 2 --mpi=none: both tasks fail (exit codes $codes) in $((SECONDS - start)) s, refused by $by"
else
  fail "srun -n 2 --mpi=none: task exit codes '$codes' (expected both non-zero)"
  show "$WORK/out.txt"
fi
# 4b. The N-singletons trap itself: each task's MPI starts a world of 1 (reproduced here by
# hiding SLURM_NODELIST from Open MPI); ddtrain refuses on every task, exit 2, at once.
start=$SECONDS
codes=$(run_tasks --mpi=none -- env -u SLURM_NODELIST "$DDTRAIN" "${train[@]}" | paste -sd' ')
message="ddtrain: error: Slurm says SLURM_STEP_NUM_TASKS=2, but MPI started a world of 1 rank"
problems=""
[[ $codes == "2 2" ]] || problems+=" task exit codes '$codes' (expected 2 2);"
for task in 0 1; do
  grep -qF "$task: $message" "$WORK/out.txt" || problems+=" task $task did not print the refusal;"
done
grep -q "^[01]: *done:" "$WORK/out.txt" && problems+=" a task trained;"
if [[ -z $problems ]]; then pass "N singletons under srun: refused on both tasks (exit 2) in $((SECONDS - start)) s"; else
  fail "N singletons under srun:$problems"
  show "$WORK/out.txt"
fi

# The two batch jobs of sections 1 and 2.
wait "$sbatch_wait"
id=$(grep -m1 '^[0-9]' "$WORK/sbatch1.txt")
if [[ -n $id && $(cat "$WORK/sbatch1.code") == 0 ]]; then
  check_batch_job "sbatch --wait single-node template (srun --mpi=pmix)" "$id" "$WORK/job1.out" \
    "$WORK/run1" srun
else
  fail "sbatch --wait single-node template: exit $(cat "$WORK/sbatch1.code"): $(tail -3 "$WORK/sbatch1.txt")"
  show "$WORK/job1.out"
fi
if [[ -n $id2 ]] && wait_until "$LIMIT" job_ended "$id2"; then
  check_batch_job "sbatch multi-node template on 1 node (mpirun inside)" "$id2" "$WORK/job2.out" \
    "$WORK/run2" mpirun
else
  fail "sbatch multi-node template: job '${id2}' $(cat "$WORK/sbatch2.err")"
  show "$WORK/job2.out"
fi

# 5. Preemption warning: USR1 to the batch shell (as --signal=B:USR1@90 sends it) reaches the
# ranks, ddtrain checkpoints and exits 0, the job requeues itself and resumes to the end.
if [[ $checkpoints -eq 1 ]]; then
  "$DDTRAIN" synth -o "$WORK/big.h5" --rows 8192 --features 64 --classes 4 --seed 5 >/dev/null
  # About 6 s of training here (5000 steps/s). The warning comes once the first checkpoint
  # (step 1000) is on disk, and reaches the ranks about a second later, near step 7000: a
  # machine more than 4 times faster would finish first. (The job's output is no clock: srun
  # passes the ranks' lines on in bursts.)
  total=30000
  id=$(cd "$WORK" && env DATA="$WORK/big.h5" EVAL_DATA= MODEL=64-256-relu-256-relu-4 \
    STEPS=$total GLOBAL_BATCH=64 CHECKPOINT_EVERY=1000 OUT="$WORK/run3" timeout -k 5 "$LIMIT" \
    sbatch --parsable --output="$WORK/job3.out" "$TEMPLATES/ddtrain-single-node.sbatch" --log-every 1000)
  out=$WORK/job3.out
  problems=""
  if ! wait_until 30 compgen -G "$WORK/run3/checkpoints/checkpoint-*" >/dev/null; then
    problems+=" training did not start;"
  else
    scancel --batch --signal=USR1 "$id"
    # Slurm holds a requeued job for the credential lifetime (cred_expire, 120 s) before it
    # may start again; the test moves that forward once the first run has left the node and
    # its revoked credential is older than a new one will be (they count whole seconds).
    requeued() { [[ $(job_field "$id" Restarts) == 1 && $(job_field "$id" JobState) == PENDING ]]; }
    node_idle() { [[ $(sinfo -h -o %T) == idle ]]; }
    if wait_until 30 requeued && wait_until 30 node_idle; then
      sleep 2
      scontrol update JobId="$id" StartTime=now
      wait_until "$LIMIT" job_ended "$id" ||
        problems+=" the requeued job did not finish;"
    else
      problems+=" not requeued after USR1 (state $(job_field "$id" JobState), restarts $(job_field "$id" Restarts));"
    fi
  fi
  [[ $(job_field "$id" JobState) == COMPLETED ]] || problems+=" final state $(job_field "$id" JobState);"
  grep -q "USR1: .*forwarding to the ranks" "$out" || problems+=" the batch shell did not forward USR1;"
  stopped_at=$(sed -n "s/^stopping at step \([0-9]*\) of $total (SIGTERM or SIGUSR1).*/\1/p" "$out" | head -1)
  [[ -n $stopped_at ]] || problems+=" ddtrain did not stop on the signal;"
  grep -q "requeueing to resume" "$out" || problems+=" the job did not requeue itself;"
  grep -q "^resume: .*checkpoint.*(step $stopped_at," "$out" || problems+=" no resume from step $stopped_at;"
  resumed_steps=$(sed -n 's/^done: \([0-9]*\) steps .*resumed from.*/\1/p' "$out" | tail -1)
  [[ -n $stopped_at && -n $resumed_steps && $((stopped_at + resumed_steps)) -eq $total ]] ||
    problems+=" steps before and after the requeue ('$stopped_at' + '$resumed_steps') do not make $total;"
  if [[ -z $problems ]]; then
    pass "USR1 warning: stopped at step $stopped_at, checkpointed, requeued, resumed for $resumed_steps steps to $total"
  else
    fail "USR1 warning:$problems"
    show "$out" 40
  fi
else
  echo "note: this ddtrain has no --checkpoint-dir; the preemption check is left out"
fi

# 6. Stop: every daemon, step and task of this cluster is gone.
if [[ $FAILED -gt 0 ]]; then "$LOCAL_CLUSTER" logs "$CLUSTER" 2>&1 | sed 's/^/    /'; fi
expect_ok "local-cluster.sh stop" timeout -k 5 "$LIMIT" "$LOCAL_CLUSTER" stop "$CLUSTER"
"$LOCAL_CLUSTER" stop "$CLUSTER" >/dev/null 2>&1 && pass "stop again: harmless" || fail "second stop failed"
STARTED=0
"$LOCAL_CLUSTER" status "$CLUSTER" >"$WORK/status.txt" 2>&1
code=$?
left=""
for pid in $daemon_pids; do
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) && [[ $stat != *") Z "* ]] && left+=" $pid"
done
[[ $code -eq 3 && -z $left ]] && pass "nothing left running (daemons$(echo " $daemon_pids" | tr '\n' ' ')gone)" || {
  fail "left running:$left (status exit $code)"
  show "$WORK/status.txt"
}
finish
