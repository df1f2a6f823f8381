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

# Files given to ddtrain are never modified by a failed run.
sum_before=$(md5sum "$WORK/nan.h5" "$WORK/good.h5")
ranks 2 train "${model[@]}" --data "$WORK/nan.h5" >/dev/null 2>&1
[[ "$(md5sum "$WORK/nan.h5" "$WORK/good.h5")" == "$sum_before" ]] &&
  pass "input files unchanged by a failed run" || fail "an input file changed"
finish
