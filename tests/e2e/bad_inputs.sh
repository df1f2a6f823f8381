#!/usr/bin/env bash
# bad_inputs.sh - every bad input ends the job on every rank with a clear message naming the
# file and the problem, a non-zero exit (2 for usage errors), printed once, and no hang.
source "$(dirname "$0")/lib.sh"

for kind in good not-hdf5 no-features no-labels features-rank1 features-float64 \
            labels-out-of-range nan few-rows width-9 rows-mismatch; do
  $H5TOOL make "$kind" "$WORK/$kind.h5" || fail "making $kind.h5"
done
"$DDTRAIN" synth -o "$WORK/other.h5" --rows 256 --features 9 --classes 3 >/dev/null
model=(--model 8-16-relu-3 --global-batch 32 --steps 30 --log-every 0)

bad() { # bad NAME CODE TEXT DATA_ARGS... : 1 rank and 2 ranks
  local name=$1 code=$2 text=$3
  shift 3
  for n in 1 2; do
    expect_fail_all_ranks "$name, $n rank(s)" "$n" "$code" "$text" -- train "${model[@]}" "$@"
  done
}

bad "missing file" 1 "$WORK/missing.h5: cannot open" --data "$WORK/missing.h5"
bad "not HDF5" 1 "$WORK/not-hdf5.h5: not an HDF5 file" --data "$WORK/not-hdf5.h5"
bad "no /features" 1 "/features" --data "$WORK/no-features.h5"
bad "no /labels" 1 "/labels" --data "$WORK/no-labels.h5"
bad "features of rank 1" 1 "$WORK/features-rank1.h5" --data "$WORK/features-rank1.h5"
bad "features as float64" 1 "$WORK/features-float64.h5" --data "$WORK/features-float64.h5"
bad "row counts differ" 1 "$WORK/rows-mismatch.h5" --data "$WORK/rows-mismatch.h5"
bad "feature count vs model" 1 "has 9 features per row, but the model" --data "$WORK/width-9.h5"
bad "label out of range" 1 "outside [0, 3)" --data "$WORK/labels-out-of-range.h5"
bad "NaN in a batch" 1 "NaN" --data "$WORK/nan.h5"
bad "shards disagree" 1 "$WORK/other.h5" --data "$WORK/good.h5,$WORK/other.h5"
bad "fewer rows than a global batch" 1 "fewer than one global batch" --data "$WORK/few-rows.h5" \
  --global-batch 64
bad "unwritable --save" 1 "$WORK/no-such-dir/model.h5" --data "$WORK/good.h5" \
  --save "$WORK/no-such-dir/model.h5"
bad "bad eval data" 1 "$WORK/nan.h5" --data "$WORK/good.h5" --eval-data "$WORK/nan.h5"
bad "glob matching nothing" 1 "no files match" --data "$WORK/nothing-*.h5"

# Usage errors: exit code 2 on every rank.
bad "unknown option" 2 "unknown option '--frobnicate'" --data "$WORK/good.h5" --frobnicate 1
bad "negative learning rate" 2 "--lr" --data "$WORK/good.h5" --lr -1
bad "bad model spec" 2 "relux" --data "$WORK/good.h5" --model 8-16-relux-3
bad "indivisible global batch" 2 "--global-batch 30" --data "$WORK/good.h5" --global-batch 30 \
  --micro-batch 4
bad "missing --data" 2 "--data is required"
bad "epochs and steps" 2 "not both" --data "$WORK/good.h5" --epochs 2
bad "unknown device" 2 "--device: 'banana' is not one of auto, cpu or cuda" --data "$WORK/good.h5" --device banana
# eval chooses its device with the same rule as train (it used to accept anything).
"$DDTRAIN" train "${model[@]}" --data "$WORK/good.h5" --save "$WORK/model.h5" >/dev/null 2>&1 ||
  fail "training the model for eval"
for n in 1 2; do
  expect_fail_all_ranks "eval --device banana, $n rank(s)" "$n" 2 "--device: 'banana' is not one of auto, cpu or cuda" \
    -- eval --model-file "$WORK/model.h5" --data "$WORK/good.h5" --device banana
done

# Inputs that are not regular files -- a FIFO with no writer (open() would wait for one), a
# device that never ends, a dangling link, a link loop -- are refused by name before they are
# read, on every rank (exit 2; 1 for the links, whose errno is the problem), never waited
# on: each run has 20 s, so a hang fails as a timeout rather than stalling the suite.
mkfifo "$WORK/fifo" "$WORK/fifo-2.h5"
ln -s /dev/zero "$WORK/zero.h5"
ln -s "$WORK/no-such-file.h5" "$WORK/dangling.h5"
ln -s "$WORK/loop-b.h5" "$WORK/loop-a.h5"
ln -s "$WORK/loop-a.h5" "$WORK/loop-b.h5"
fifo_words="$WORK/fifo: not a regular file but a FIFO (named pipe)"
special() { # special NAME CODE TEXT DDTRAIN_ARGS... : 1 rank and 2 ranks, 20 s each
  local name=$1 code=$2 text=$3
  shift 3
  for n in 1 2; do
    TIMEOUT=20 expect_fail_all_ranks "$name, $n rank(s)" "$n" "$code" "$text" -- "$@"
  done
}
special "--data a FIFO" 2 "$fifo_words" train "${model[@]}" --data "$WORK/fifo"
special "--data a glob matching a FIFO" 2 "$WORK/fifo-2.h5: not a regular file but a FIFO" \
  train "${model[@]}" --data "$WORK/fifo-*.h5"
special "--data a link to /dev/zero" 2 "$WORK/zero.h5: not a regular file but a character device" \
  train "${model[@]}" --data "$WORK/zero.h5"
special "--data a dangling link" 1 "$WORK/dangling.h5: cannot open: No such file or directory" \
  train "${model[@]}" --data "$WORK/dangling.h5"
special "--data a link loop" 1 "$WORK/loop-a.h5: cannot open: Too many levels of symbolic links" \
  train "${model[@]}" --data "$WORK/loop-a.h5"
special "--eval-data a FIFO" 2 "$fifo_words" train "${model[@]}" --data "$WORK/good.h5" \
  --eval-data "$WORK/fifo"
special "--init a FIFO" 2 "$fifo_words" train "${model[@]}" --data "$WORK/good.h5" --init "$WORK/fifo"
special "--model @FIFO" 2 "--model @$fifo_words" train --data "$WORK/good.h5" --model "@$WORK/fifo" \
  --steps 1
special "--model @/dev/zero" 2 "--model @/dev/zero: not a regular file but a character device" \
  train --data "$WORK/good.h5" --model @/dev/zero --steps 1
special "eval --model-file a FIFO" 2 "$fifo_words" eval --model-file "$WORK/fifo" --data "$WORK/good.h5"
special "generate --model-file a FIFO" 2 "$fifo_words" generate --model-file "$WORK/fifo" --prompt hi
special "info on a FIFO" 2 "$fifo_words" info "$WORK/fifo"
special "info on /dev/urandom" 2 "/dev/urandom: not a regular file but a character device" \
  info /dev/urandom
# A FIFO named like a checkpoint is not one: --resume passes over it (it used to block in
# HDF5's open) and starts fresh.
mkdir -p "$WORK/ckpt"
mkfifo "$WORK/ckpt/checkpoint-000000000009.h5"
timeout -k 5 20 mpirun -np 2 --bind-to none "$DDTRAIN" train "${model[@]}" --data "$WORK/good.h5" \
  --checkpoint-dir "$WORK/ckpt" --resume >"$WORK/out.txt" 2>&1 &&
  pass "--resume passes over a FIFO named like a checkpoint" ||
  { fail "--resume with a FIFO in the checkpoint directory (exit $?)"; tail -5 "$WORK/out.txt"; }

# Files given to ddtrain are never modified by a failed run.
sum_before=$(md5sum "$WORK/nan.h5" "$WORK/good.h5")
ranks 2 train "${model[@]}" --data "$WORK/nan.h5" >/dev/null 2>&1
[[ "$(md5sum "$WORK/nan.h5" "$WORK/good.h5")" == "$sum_before" ]] &&
  pass "input files unchanged by a failed run" || fail "an input file changed"
finish
