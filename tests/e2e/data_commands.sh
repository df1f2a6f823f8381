#!/usr/bin/env bash
# data_commands.sh - convert (round trip against the IDX source), synth (deterministic, the
# same whatever the number of ranks writing it), info, and eval of a saved model.
source "$(dirname "$0")/lib.sh"

src=/usr/share/datasets/fashion-mnist
if [[ -f $src/t10k-images-idx3-ubyte.gz ]]; then
  expect_ok "convert Fashion-MNIST t10k" "$DDTRAIN" convert idx "$src/t10k-images-idx3-ubyte.gz" \
    "$src/t10k-labels-idx1-ubyte.gz" -o "$WORK/fm.h5"
  expect_ok "converted rows equal the gzipped IDX source" $H5TOOL check-idx "$WORK/fm.h5" \
    "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz"
  expect_ok "convert into 3 shards" "$DDTRAIN" convert idx "$src/t10k-images-idx3-ubyte.gz" \
    "$src/t10k-labels-idx1-ubyte.gz" -o "$WORK/fm3.h5" --shards 3
  expect_ok "info on the shards" "$DDTRAIN" info "$WORK/fm3-*.h5"
  grep -q "rows       10000" "$WORK/out.txt" && pass "info counts 10000 rows over 3 shards" ||
    fail "info: $(cat "$WORK/out.txt")"
else
  echo "skipped: Fashion-MNIST round trip (dataset-fashion-mnist not installed)"
fi
# A plain (not gzipped) IDX file converts too.
$PY - "$WORK" <<'PY'
import struct, sys, numpy as np
d = sys.argv[1]
x = (np.arange(5 * 4 * 3) % 256).astype(np.uint8)
open(f"{d}/small-images", "wb").write(struct.pack(">IIII", 0x803, 5, 4, 3) + x.tobytes())
open(f"{d}/small-labels", "wb").write(struct.pack(">II", 0x801, 5) + bytes([0, 1, 2, 1, 0]))
PY
expect_ok "convert plain IDX" "$DDTRAIN" convert idx "$WORK/small-images" "$WORK/small-labels" \
  -o "$WORK/small.h5"
expect_ok "plain IDX round trip" $H5TOOL check-idx "$WORK/small.h5" "$WORK/small-images" \
  "$WORK/small-labels"
expect_fail_all_ranks "convert: labels file is not IDX" 1 1 "$WORK/small.h5: not an IDX file" -- \
  convert idx "$WORK/small-images" "$WORK/small.h5" -o "$WORK/x.h5"

# synth: same bytes of data for the same seed, whatever the number of ranks writing shards.
"$DDTRAIN" synth -o "$WORK/s1.h5" --rows 3000 --features 20 --classes 5 --seed 11 --shards 3 >/dev/null
ranks 2 synth -o "$WORK/s2.h5" --rows 3000 --features 20 --classes 5 --seed 11 --shards 3 >/dev/null
same=1
for k in 0 1 2; do
  a=$WORK/s1-0000$k-of-00003.h5 b=$WORK/s2-0000$k-of-00003.h5
  $PY -c "import h5py,numpy as np,sys; f,g=h5py.File('$a'),h5py.File('$b');
sys.exit(0 if all(np.array_equal(f[k][...],g[k][...]) for k in ('features','labels')) else 1)" || same=0
done
[[ $same -eq 1 ]] && pass "synth is deterministic across 1 and 2 writing ranks" || fail "synth differs"
"$DDTRAIN" synth -o "$WORK/s3.h5" --rows 3000 --features 20 --classes 5 --seed 12 >/dev/null
$PY -c "import h5py,numpy as np,sys; f,g=h5py.File('$WORK/s3.h5'),h5py.File('$WORK/s1-00000-of-00003.h5');
sys.exit(1 if np.array_equal(f['features'][:1000],g['features'][...]) else 0)" &&
  pass "another seed gives other data" || fail "seed ignored"

# synth data is learnable; --save / --init / eval round trip on it.
"$DDTRAIN" synth -o "$WORK/learn.h5" --rows 8192 --features 32 --classes 4 --seed 5 >/dev/null
"$DDTRAIN" synth -o "$WORK/learn-test.h5" --rows 2048 --features 32 --classes 4 --seed 5 >/dev/null
ranks 2 train --data "$WORK/learn.h5" --eval-data "$WORK/learn-test.h5" --model 32-64-relu-4 \
  --epochs 3 --global-batch 64 --log-every 0 --save "$WORK/m.h5" --metrics "$WORK/m.jsonl" \
  >"$WORK/train.log" 2>&1 || { fail "training on synth data"; tail "$WORK/train.log"; }
accuracy=$(sed -n 's/.*"event":"summary".*"eval_accuracy":\([0-9.]*\).*/\1/p' "$WORK/m.jsonl")
awk -v a="${accuracy:-0}" 'BEGIN { exit !(a > 0.9) }' && pass "synth data learnable (accuracy $accuracy)" ||
  fail "synth accuracy ${accuracy:-none} <= 0.9"
expect_ok "saved model layout (h5py, PyTorch)" $H5TOOL check-model "$WORK/m.h5" 32-64-relu-4
ranks 2 eval --model-file "$WORK/m.h5" --data "$WORK/learn-test.h5" >"$WORK/eval.txt" 2>&1
evaluated=$(sed -n 's/.*accuracy \([0-9.]*\)$/\1/p' "$WORK/eval.txt")
awk -v a="${evaluated:-0}" -v b="$accuracy" 'BEGIN { d = a - b; exit !(d < 0.0001 && d > -0.0001) }' &&
  pass "eval reproduces the training's accuracy ($evaluated)" ||
  fail "eval: $(cat "$WORK/eval.txt") vs $accuracy"
# --init continues from the saved weights: one step with a negligible learning rate keeps them.
ranks 2 train --data "$WORK/learn.h5" --init "$WORK/m.h5" --steps 1 --lr 1e-12 --momentum 0 \
  --global-batch 64 --log-every 0 --save "$WORK/m2.h5" >/dev/null 2>&1
expect_ok "--init/--save round trip keeps the weights" $H5TOOL compare "$WORK/m2.h5" "$WORK/m.h5" 1e-6
expect_fail_all_ranks "--init with another --model" 2 2 "holds model '32-64-relu-4'" -- \
  train --data "$WORK/learn.h5" --init "$WORK/m.h5" --model 32-16-relu-4 --steps 1
finish
