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
finish
