#!/usr/bin/env bash
# checkpoint.sh - checkpoints, resuming and preemption: a resumed run is bitwise identical to
# an uninterrupted one (same world size), matches within rounding with another world size
# (a bar tied to the training's noise floor measured in the same run),
# SIGUSR1 gives a checkpoint and exit 0 on every rank, the newest K are kept, an existing
# checkpoint directory is not mixed with a fresh run, and the model part loads as a model;
# layer models (a CNN with batch normalisation, a GPT) resume bit for bit too.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 8192 --features 32 --classes 4 --seed 4 >/dev/null
run=(train --data "$WORK/d.h5" --model 32-128-relu-dropout0.1-64-relu-4 --global-batch 64
     --epochs 2 --log-every 0 --seed 5)
sgd=(--optimizer sgd --lr 0.05 --momentum 0.9)
adamw=(--optimizer adamw --lr 0.002 --weight-decay 0.01)

for opt in sgd adamw; do
  declare -n extra=$opt
  ranks 2 "${run[@]}" "${extra[@]}" --save "$WORK/full-$opt.h5" >/dev/null 2>&1 || fail "$opt: full run"
  # Interrupted twice (at 40 and 150 of 256 steps), resumed each time.
  ranks 2 "${run[@]}" "${extra[@]}" --checkpoint-dir "$WORK/c-$opt" --stop-after 40 \
    >"$WORK/a.log" 2>&1 || { fail "$opt: first part"; tail -3 "$WORK/a.log"; }
  ranks 2 "${run[@]}" "${extra[@]}" --checkpoint-dir "$WORK/c-$opt" --resume --stop-after 110 \
    >"$WORK/b.log" 2>&1 || { fail "$opt: second part"; tail -3 "$WORK/b.log"; }
  ranks 2 "${run[@]}" "${extra[@]}" --checkpoint-dir "$WORK/c-$opt" --resume \
    --save "$WORK/resumed-$opt.h5" >"$WORK/c.log" 2>&1 || { fail "$opt: last part"; tail -3 "$WORK/c.log"; }
  grep -q "resume: .*checkpoint-000000000150.h5 (step 150" "$WORK/c.log" &&
    pass "$opt: resumed at step 150" || fail "$opt: $(grep resume: "$WORK/c.log")"
  expect_ok "$opt: resumed twice == uninterrupted, bit for bit" \
    $H5TOOL compare "$WORK/resumed-$opt.h5" "$WORK/full-$opt.h5" 0
done
count=$(ls "$WORK/c-sgd" | grep -c '^checkpoint-.*\.h5$')
[[ $count -eq 3 ]] && pass "the newest 3 checkpoints kept (--checkpoint-keep 3)" || fail "$count checkpoints kept"
expect_ok "a checkpoint's model part loads like a saved model" \
  "$DDTRAIN" eval --model-file "$WORK/c-sgd/checkpoint-000000000256.h5" --data "$WORK/d.h5"

# Another world size: the position is counted in samples. SGD (AdamW amplifies rounding noise
# in near-zero gradients, so its long runs are not comparable across world sizes). 4 ranks
# add in another order than 1, so the runs agree within rounding, which depends on the CPU:
# the bar is max(1e-5, 10 x this training's noise floor), the floor the 1-rank run again with
# its learning rate moved by 2^-22 of itself (as in dp_equivalence.sh; h5tool compare-floor).
ranks 1 "${run[@]}" "${sgd[@]}" --save "$WORK/one.h5" >/dev/null 2>&1
nudged_lr=$($PY -c "print(repr(0.05 * (1 + 2 ** -22)))")
ranks 1 "${run[@]}" --optimizer sgd --lr "$nudged_lr" --momentum 0.9 --save "$WORK/one-floor.h5" \
  >/dev/null 2>&1 || fail "the noise floor's run"
ranks 1 "${run[@]}" "${sgd[@]}" --checkpoint-dir "$WORK/c-w" --stop-after 200 >/dev/null 2>&1
ranks 4 "${run[@]}" "${sgd[@]}" --checkpoint-dir "$WORK/c-w" --resume --save "$WORK/w4.h5" \
  >"$WORK/w.log" 2>&1 || { fail "resume on 4 ranks"; tail -3 "$WORK/w.log"; }
grep -q "written by 1 rank" "$WORK/w.log" && pass "4 ranks resumed a 1-rank checkpoint" || fail "no resume line"
expect_ok "1 rank resumed on 4 ranks == 1 rank throughout (within rounding)" \
  $H5TOOL compare-floor "$WORK/w4.h5" "$WORK/one.h5" 1e-5 "$WORK/one-floor.h5" "$WORK/one.h5"

# SIGUSR1 (Slurm's --signal warning) to mpirun, which forwards it: checkpoint, exit 0 everywhere.
# An effectively endless run (the signal is what ends it, however fast the machine).
long=(train --data "$WORK/d.h5" --model 32-512-relu-512-relu-4 --global-batch 64 --epochs 100000
      --log-every 0 --checkpoint-dir "$WORK/c-sig")
rm -f "$WORK"/rank-exit.*
# (The recording shell ignores USR1 itself; ddtrain installs its own handler.)
mpirun -np 2 --bind-to none sh -c 'trap "" USR1; "$0" "$@"; echo $? > "'"$WORK"'/rank-exit.${OMPI_COMM_WORLD_RANK}"' \
  "$DDTRAIN" "${long[@]}" >"$WORK/sig.log" 2>&1 &
launcher=$!
# Signal once training runs (rank 0 prints the plan just before the first step).
for _ in $(seq 300); do grep -q "=> model" "$WORK/sig.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
kill -USR1 $launcher
wait $launcher
codes="$(cat "$WORK/rank-exit.0" 2>/dev/null) $(cat "$WORK/rank-exit.1" 2>/dev/null)"
[[ $codes == "0 0" ]] && pass "SIGUSR1: every rank exited 0" || fail "SIGUSR1: exit codes '$codes'"
grep -q "stopping at step .* of 12800000 (SIGTERM or SIGUSR1): checkpoint written" "$WORK/sig.log" &&
  pass "SIGUSR1: $(grep -o 'stopping at step [0-9]* of [0-9]*' "$WORK/sig.log")" ||
  { fail "SIGUSR1: no stop line"; tail -3 "$WORK/sig.log"; }
ls "$WORK/c-sig"/checkpoint-*.h5 >/dev/null 2>&1 && pass "SIGUSR1: checkpoint on disk" || fail "no checkpoint"

# A fresh run never mixes with an existing run's checkpoints.
expect_fail_all_ranks "fresh run into a used checkpoint directory" 2 2 "pass --resume to continue it" -- \
  "${run[@]}" "${sgd[@]}" --checkpoint-dir "$WORK/c-sgd"
expect_fail_all_ranks "--resume without --checkpoint-dir" 1 2 "--resume needs --checkpoint-dir" -- \
  "${run[@]}" --resume
expect_fail_all_ranks "resume with another model" 1 2 "holds model '32-128-relu-dropout0.1-64-relu-4'" -- \
  train --data "$WORK/d.h5" --model 32-16-relu-4 --global-batch 64 --epochs 2 --seed 5 \
  --checkpoint-dir "$WORK/c-sgd" --resume
# Layer models: a CNN with batch normalisation (running statistics are buffers a checkpoint
# carries) and dropout, and a GPT with dropout, AdamW and clipping, each stopped twice and
# resumed: the same weights and buffers, bit for bit, as without stopping.
"$DDTRAIN" convert text "$(dirname "$0")/../../README.md" -o "$WORK/text.h5" >/dev/null || fail "convert text"
"$DDTRAIN" synth -o "$WORK/img.h5" --rows 1024 --features 72 --classes 4 --seed 5 >/dev/null || fail "synth"
cnn=(train --data "$WORK/img.h5" --model "2x6x6-conv(4,k3,p1)-bn-relu-maxpool(2)-flatten-16-relu-dropout0.2-4"
     --global-batch 64 --micro-batch 16 --steps 24 --seed 3 --log-every 0 --optimizer adamw --lr 0.01
     --weight-decay 0.05 --clip-grad-norm 1 --lr-schedule cosine --warmup-steps 4)
gpt=(train --data "$WORK/text.h5" --model "gpt(layers=2,heads=2,width=16,context=16,vocab=256,dropout=0.1)"
     --global-batch 32 --micro-batch 8 --steps 24 --seed 6 --log-every 0 --optimizer adamw --lr 0.003
     --weight-decay 0.1 --clip-grad-norm 1 --lr-schedule cosine --warmup-steps 4)
for name in cnn gpt; do
  declare -n args=$name
  ranks 2 "${args[@]}" --save "$WORK/$name-full.h5" >"$WORK/$name.log" 2>&1 ||
    { fail "$name: full run"; tail -3 "$WORK/$name.log"; }
  ranks 2 "${args[@]}" --checkpoint-dir "$WORK/c-$name" --stop-after 7 >"$WORK/$name.log" 2>&1 ||
    { fail "$name: first part"; tail -3 "$WORK/$name.log"; }
  ranks 2 "${args[@]}" --checkpoint-dir "$WORK/c-$name" --resume --stop-after 9 >"$WORK/$name.log" 2>&1 ||
    { fail "$name: second part"; tail -3 "$WORK/$name.log"; }
  ranks 2 "${args[@]}" --checkpoint-dir "$WORK/c-$name" --resume --save "$WORK/$name-resumed.h5" \
    >"$WORK/$name.log" 2>&1 || { fail "$name: last part"; tail -3 "$WORK/$name.log"; }
  grep -q "resume: .*checkpoint-000000000016.h5 (step 16" "$WORK/$name.log" &&
    pass "$name: resumed at step 16" || fail "$name: $(grep resume: "$WORK/$name.log")"
  expect_ok "$name: resumed twice == uninterrupted, bit for bit" \
    $H5TOOL compare "$WORK/$name-resumed.h5" "$WORK/$name-full.h5" 0
done
finish
