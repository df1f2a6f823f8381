#!/usr/bin/env bash
# resume_checks.sh - a resume takes only what belongs to the run: another --global-batch or
# other data is refused naming both (unless --resume-new-batch / --resume-new-data say the
# change is intended), a different number of ranks is fine; a truncated newest checkpoint is
# named and passed over for the newest complete one; with none complete --resume says so
# loudly; and one checkpoint directory holds one job at a time (a second is refused, naming
# the first; a crashed first leaves nothing locked).
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 4096 --features 16 --classes 4 --seed 1 >/dev/null
"$DDTRAIN" synth -o "$WORK/other.h5" --rows 4096 --features 16 --classes 4 --seed 2 >/dev/null
run=(train --model 16-32-relu-4 --epochs 2 --log-every 0 --seed 3 --checkpoint-dir "$WORK/ckpt")
ranks 2 "${run[@]}" --data "$WORK/d.h5" --global-batch 64 --stop-after 10 >"$WORK/first.log" 2>&1 ||
  { fail "first part"; tail -3 "$WORK/first.log"; }

expect_fail_all_ranks "resume with another --global-batch" 2 2 \
  "was written with --global-batch 64, this run has --global-batch 128" -- \
  "${run[@]}" --data "$WORK/d.h5" --global-batch 128 --resume
grep -q -- "--resume-new-batch if the change is intended" "$WORK/err.txt" &&
  pass "the refusal names the flag that allows it" || fail "no flag named: $(cat "$WORK/err.txt")"
expect_fail_all_ranks "resume on other data" 2 2 "was trained on other data than this run's --data" -- \
  "${run[@]}" --data "$WORK/other.h5" --global-batch 64 --resume
grep -q "d.h5: 4096 rows" "$WORK/err.txt" && grep -q "other.h5: 4096 rows" "$WORK/err.txt" &&
  pass "the refusal shows both datasets" || fail "datasets not shown: $(cat "$WORK/err.txt")"

# A copy of the same data elsewhere is the same data.
mkdir -p "$WORK/elsewhere" && cp "$WORK/d.h5" "$WORK/elsewhere/d.h5"
cp -r "$WORK/ckpt" "$WORK/ckpt-copy"
ranks 1 train --model 16-32-relu-4 --epochs 2 --log-every 0 --seed 3 --checkpoint-dir "$WORK/ckpt-copy" \
  --data "$WORK/elsewhere/d.h5" --global-batch 64 --resume >"$WORK/copy.log" 2>&1 &&
  grep -q "^resume: .*(step 10," "$WORK/copy.log" &&
  pass "the same data copied elsewhere resumes (and 1 rank resumes a 2-rank checkpoint)" ||
  { fail "resume from a copy of the data"; tail -3 "$WORK/copy.log"; }

# Intended changes, said so.
cp -r "$WORK/ckpt" "$WORK/ckpt-batch"
ranks 2 train --model 16-32-relu-4 --epochs 2 --log-every 0 --seed 3 --checkpoint-dir "$WORK/ckpt-batch" \
  --data "$WORK/d.h5" --global-batch 128 --resume --resume-new-batch >"$WORK/batch.log" 2>&1 &&
  grep -q "^resume: .*(step 5, 640 samples" "$WORK/batch.log" &&
  pass "--resume-new-batch: position kept in samples (640 samples = step 5 of 128)" ||
  { fail "--resume-new-batch"; tail -3 "$WORK/batch.log"; }
cp -r "$WORK/ckpt" "$WORK/ckpt-data"
ranks 2 train --model 16-32-relu-4 --epochs 2 --log-every 0 --seed 3 --checkpoint-dir "$WORK/ckpt-data" \
  --data "$WORK/other.h5" --global-batch 64 --resume --resume-new-data >"$WORK/data.log" 2>&1 &&
  pass "--resume-new-data resumes on other data" || { fail "--resume-new-data"; tail -3 "$WORK/data.log"; }

# A truncated newest checkpoint: named, passed over, the newest complete one used.
cp -r "$WORK/ckpt" "$WORK/ckpt-trunc"
newest=$(ls "$WORK/ckpt-trunc"/checkpoint-*.h5 | sort | tail -1)
fake="$WORK/ckpt-trunc/checkpoint-000000000099.h5"
head -c 3000 "$newest" >"$fake"
ranks 2 "${run[@]/$WORK\/ckpt/$WORK/ckpt-trunc}" --data "$WORK/d.h5" --global-batch 64 --resume \
  >"$WORK/trunc.log" 2>&1
code=$?
[[ $code -eq 0 ]] && grep -q "warning: --resume: $fake is not a complete checkpoint" "$WORK/trunc.log" &&
  grep -q "^resume: .*(step 10," "$WORK/trunc.log" &&
  pass "a truncated newest checkpoint is named and passed over (resumed at step 10)" ||
  { fail "truncated newest: exit $code"; grep -i "resume\|warn" "$WORK/trunc.log" | head -3; }
# None complete: loudly, then from the beginning.
mkdir -p "$WORK/ckpt-none"
cp "$fake" "$WORK/ckpt-none/"
ranks 2 train --model 16-32-relu-4 --steps 5 --log-every 0 --seed 3 --checkpoint-dir "$WORK/ckpt-none" \
  --data "$WORK/d.h5" --global-batch 64 --resume >"$WORK/none.log" 2>&1
grep -q "warning: --resume: no complete checkpoint in $WORK/ckpt-none: the newest, .*checkpoint-000000000099.h5, is truncated or damaged; starting from the beginning" "$WORK/none.log" &&
  pass "no complete checkpoint: a warning naming it, then a fresh start" ||
  { fail "no complete checkpoint"; grep -i "resume\|warn" "$WORK/none.log" | head -3; }

# One job per checkpoint directory.
mkdir -p "$WORK/lock"
ranks 2 train --model 16-512-relu-512-relu-4 --epochs 100000 --log-every 0 --data "$WORK/d.h5" \
  --global-batch 64 --checkpoint-dir "$WORK/lock" >"$WORK/holder.log" 2>&1 &
holder=$!
for _ in $(seq 300); do grep -q "=> model" "$WORK/holder.log" 2>/dev/null && break; sleep 0.1; done
expect_fail_all_ranks "a second job on a locked --checkpoint-dir" 2 2 \
  "is in use by another ddtrain job (pid " -- \
  train --model 16-32-relu-4 --steps 5 --log-every 0 --data "$WORK/d.h5" --global-batch 64 \
  --checkpoint-dir "$WORK/lock" --resume
# kill -9 the ranks themselves (a crash: no handler runs, nothing is released by hand)
for pid in $(pgrep -f "train --model 16-512-relu-512-relu-4"); do
  [[ $(readlink "/proc/$pid/exe") == "$(readlink -f "$DDTRAIN")" ]] && kill -9 "$pid"
done
wait $holder 2>/dev/null
ranks 2 train --model 16-512-relu-512-relu-4 --steps 5 --log-every 0 --data "$WORK/d.h5" \
  --global-batch 64 --checkpoint-dir "$WORK/lock" --resume >"$WORK/after.log" 2>&1 &&
  pass "after the first job was killed (-9), the directory is free again" ||
  { fail "the lock outlived its job"; grep error "$WORK/after.log"; }
finish
