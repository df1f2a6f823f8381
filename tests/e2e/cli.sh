#!/usr/bin/env bash
# cli.sh - every command has --help with defaults; usage errors exit 2 with a message.
source "$(dirname "$0")/lib.sh"

for cmd in train eval convert synth info; do
  expect_ok "ddtrain $cmd --help" "$DDTRAIN" "$cmd" --help
  grep -q "usage: ddtrain $cmd" "$WORK/out.txt" || fail "$cmd --help lacks a usage line"
done
"$DDTRAIN" train --help >"$WORK/help.txt" # (no pipe: grep -q would SIGPIPE ddtrain under pipefail)
grep -q -- "--global-batch B .*\[default: 128\]" "$WORK/help.txt" &&
  pass "train --help shows defaults" || fail "train --help shows no defaults"
expect_ok "ddtrain --help" "$DDTRAIN" --help
# The launch scripts' --help: their opening comment, exit 0, nothing run or installed.
for script in ddtrain-mpirun install-deps.sh; do
  expect_ok "launch/$script --help" "$HERE/../../launch/$script" --help
  grep -q "^$script - " "$WORK/out.txt" || fail "launch/$script --help does not say what it is"
done
"$DDTRAIN" >/dev/null 2>&1; [[ $? -eq 2 ]] && pass "no command: exit 2" || fail "no command"
expect_fail_all_ranks "unknown command" 1 2 "unknown command 'fly'" -- fly
expect_fail_all_ranks "bad number" 1 2 "--steps: 'ten' is not a whole number" -- train --data x --steps ten
expect_fail_all_ranks "bad size" 1 2 "--bucket-size: '3 parsecs'" -- train --data x --bucket-size "3 parsecs"
expect_fail_all_ranks "missing value" 1 2 "--lr needs a value" -- train --data x --lr
# The resolved configuration and the BLAS kernel are printed by rank 0.
"$DDTRAIN" synth -o "$WORK/d.h5" --rows 512 --features 8 --classes 3 >/dev/null
ranks 2 train --data "$WORK/d.h5" --model 8-8-relu-3 --steps 2 --global-batch 32 >"$WORK/t.txt" 2>&1
grep -q "blas .*OpenBLAS.*kernel" "$WORK/t.txt" && pass "BLAS kernel printed" || fail "no BLAS line"
[[ $(grep -c "^ddtrain train:" "$WORK/t.txt") -eq 1 ]] && pass "configuration printed once" ||
  fail "configuration printed $(grep -c '^ddtrain train:' "$WORK/t.txt") times"
# samples/s counts training only, whatever window an evaluation falls in: each progress line,
# epoch line and --metrics record is within a factor of 5 of the run's overall rate (the
# summary's, training time only). Evaluations are made long (a 2 s stall in each, on the only
# rank) right before progress steps: progress lines used to count the steps before an
# evaluation over the time since it (16-59x too high here), epoch lines and records to count
# the evaluations as training time (7-98x too low).
"$DDTRAIN" synth -o "$WORK/r.h5" --rows 12800 --features 8 --classes 3 >/dev/null # one epoch
"$DDTRAIN" synth -o "$WORK/e.h5" --rows 512 --features 8 --classes 3 --seed 2 >/dev/null
DDTRAIN_DEBUG_STALL=evaluation:0:2 "$DDTRAIN" train --data "$WORK/r.h5" --eval-data "$WORK/e.h5" \
  --model 8-256-relu-256-relu-3 --global-batch 64 --steps 200 --log-every 100 --eval-every 99 \
  --metrics-every 100 --metrics "$WORK/rate.jsonl" >"$WORK/rate.txt" 2>&1 || fail "training with slow evaluations"
overall=$(sed -n 's/^done: .* s, \([0-9]*\) samples\/s.*/\1/p' "$WORK/rate.txt")
rates=$( (sed -n 's/.*  \([0-9]*\) samples\/s  ETA.*/\1/p; s/^epoch .* done: .*(\([0-9]*\) samples\/s)$/\1/p' "$WORK/rate.txt"
          grep -v '"event":"summary"' "$WORK/rate.jsonl" | grep -o '"samples_per_s":[0-9.e+]*' | cut -d: -f2) | tr '\n' ' ')
if [[ -z $overall || $(wc -w <<<"$rates") -lt 5 ]]; then
  fail "samples/s: no overall rate or too few windows ($overall; $rates)"
elif awk -v all="$overall" -v rates="$rates" 'BEGIN { n = split(rates, r, " ")
       for (i = 1; i <= n; i++) if (r[i] > 5 * all || r[i] < all / 5) exit 1 }'; then
  pass "samples/s of every window within 5x of the overall $overall (evaluations excluded): $rates"
else
  fail "samples/s of a window far from the overall $overall: $rates"
fi
finish
