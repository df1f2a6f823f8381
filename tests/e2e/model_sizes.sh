#!/usr/bin/env bash
# model_sizes.sh - models that contradict themselves, overflow, or cannot fit: refused on every
# rank with a message naming the setting, the layer or the file and the numbers, never read as
# something else. The grammar: a setting given twice (conv(8,k3,s1,s2), gpt(layers=1,layers=2)),
# an unknown argument, "dropout-1" (a rate of -1, or dropout then a 1-wide layer?), attention
# over one position. Shapes whose sizes overflow (2097152x2097152x2097152: signed overflow,
# undefined behaviour, a small size in a release build), from --model and from the "model"
# attribute of a model file read by eval, train --init and generate; a micro-batch whose rows x
# positions do not fit an int (eval of a context-65536 GPT at 2^24 rows). Plans far beyond the
# node's memory with no --device-memory-limit: --dry-run says DOES NOT FIT against the node's
# memory (each rank's share) and exits 1; a real run is refused the same way before allocating.
# synth of more rows than 2^63 bytes hold is refused before writing.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/d16.h5" --rows 256 --features 16 --classes 4 >/dev/null
"$DDTRAIN" synth -o "$WORK/d4096.h5" --rows 256 --features 4096 --classes 4 >/dev/null
train=(train --data "$WORK/d16.h5" --global-batch 32 --steps 2 --log-every 0)

# --- the grammar: contradictions are errors naming them (usage: exit 2 on every rank) --------
bad_model() { # bad_model NAME TEXT MODEL
  for n in 1 2; do
    expect_fail_all_ranks "$1, $n rank(s)" "$n" 2 "$2" -- "${train[@]}" --model "$3"
  done
}
bad_model "conv stride twice" "at 'conv(8,k3,s1,s2)': conv(...) gives the stride twice (s1, then s2)" \
  "1x4x4-conv(8,k3,s1,s2)-flatten-4"
forty=$(printf ',k3%.0s' $(seq 39))
bad_model "conv with 40 arguments" "conv(...) gives the kernel twice (k3, then k3)" \
  "1x4x4-conv(8$forty)-flatten-4"
bad_model "conv with an unknown argument" "conv(...) has no argument 'x3'" "1x4x4-conv(8,k3,x3)-flatten-4"
bad_model "dropout-1" "'dropout-1' could be a rate of -1 or dropout then a dense layer of 1" \
  "16-dropout-1-4"
bad_model "dropout-0.3" "write dropout0.3, not dropout-0.3" "16-8-dropout-0.3-4"
bad_model "a malformed rate" "the dropout rate '0.5.5' is not a plain decimal" "16-dropout0.5.5-4"
bad_model "gpt key twice" "gpt(...) gives layers twice" \
  "gpt(layers=1,layers=2,heads=1,width=8,context=4,vocab=4)"
bad_model "gpt context=1" "context=1 is too short: attention needs at least 2 positions" \
  "gpt(layers=1,heads=1,width=8,context=1,vocab=4)"
bad_model "input shape overflowing int64" \
  "the input 2097152x2097152x2097152 holds more than 2^63 values per sample; at most 16777216" \
  "2097152x2097152x2097152-flatten-10"
bad_model "a conv output too large to index" \
  "the conv layer's output 16777216x2001x2001 holds 67175989641216 values per sample" \
  "1x1x1-conv(16777216,k1,p1000)-flatten-4"
expect_ok "dropout0.5-1 (the rate written) is a model" "$DDTRAIN" "${train[@]}" --model 16-dropout0.5-1-4

# --- model files whose stored description overflows: eval, train --init, generate ----------
"$DDTRAIN" "${train[@]}" --model 16-8-relu-dropout0.5-8-4 --save "$WORK/good.h5" >/dev/null 2>&1 ||
  fail "training a model to save"
$PY - "$WORK" <<'PY' || fail "making the model files"
import shutil, sys
import h5py
d = sys.argv[1]
for name, text in [("overflow", "2097152x2097152x2097152-flatten-10"),
                   ("conv-overflow", "1x1x1-conv(16777216,k1,p1000)-flatten-4"),
                   ("lmhead-overflow", "tokens(65536,16777216)-embed(8)-lmhead"),
                   ("names-a-file", "@/dev/zero"),
                   ("legacy", "16-8-relu-dropout-8-4")]:
    shutil.copy(f"{d}/good.h5", f"{d}/{name}.h5")
    with h5py.File(f"{d}/{name}.h5", "r+") as f:
        del f.attrs["model"]
        f.attrs["model"] = text
PY
for n in 1 2; do
  expect_fail_all_ranks "eval of a model file whose shape overflows, $n rank(s)" "$n" 1 \
    "$WORK/overflow.h5: bad model spec \"2097152x2097152x2097152-flatten-10\": --model: at '2097152x2097152x2097152': the input 2097152x2097152x2097152 holds more than 2^63 values" \
    -- eval --model-file "$WORK/overflow.h5" --data "$WORK/d16.h5"
  expect_fail_all_ranks "train --init from a model file whose conv overflows, $n rank(s)" "$n" 1 \
    "$WORK/conv-overflow.h5: bad model spec \"1x1x1-conv(16777216,k1,p1000)-flatten-4\": --model: at 'conv(16777216,k1,p1000)': the conv layer's output 16777216x2001x2001" \
    -- "${train[@]}" --init "$WORK/conv-overflow.h5"
  expect_fail_all_ranks "generate from a model file whose lmhead overflows, $n rank(s)" "$n" 1 \
    "the lmhead layer's output 65536x16777216 holds 1099511627776 values per sample" \
    -- generate --model-file "$WORK/lmhead-overflow.h5" --prompt "ab"
  expect_fail_all_ranks "generate from a model file naming another file, $n rank(s)" "$n" 1 \
    "a stored description cannot name a file (@)" \
    -- generate --model-file "$WORK/names-a-file.h5" --prompt "ab"
done
# A GPT whose scores are samples x 256 heads x 65536 x 65536: at --micro-batch 2^24 that was
# int64 overflow (UB) in planning; rows x positions must fit an int, so 32767 rows at most.
$PY - "$WORK" <<'PY' || fail "making the gpt model file"
import sys
import h5py, numpy as np
d, w, t, v = sys.argv[1], 256, 65536, 256
with h5py.File(f"{d}/gpt-long.h5", "w") as f:
    f.attrs["model"] = f"gpt(layers=1,heads=256,width={w},context={t},vocab={v})"
    def zeros(name, *shape):
        f.create_dataset(name, data=np.zeros(shape, "f4"), compression="gzip", chunks=True)
    zeros("transformer.wte.weight", v, w); zeros("transformer.wpe.weight", t, w)
    for n in ["transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.ln_f"]:
        zeros(n + ".weight", w); zeros(n + ".bias", w)
    for n, rows, cols in [("attn.c_attn", 3 * w, w), ("attn.c_proj", w, w),
                          ("mlp.c_fc", 4 * w, w), ("mlp.c_proj", w, 4 * w)]:
        zeros(f"transformer.h.0.{n}.weight", rows, cols); zeros(f"transformer.h.0.{n}.bias", rows)
PY
head -c 70000 /dev/urandom >"$WORK/bytes.bin"
"$DDTRAIN" convert text "$WORK/bytes.bin" -o "$WORK/tokens.h5" >/dev/null || fail "convert text"
for n in 1 2; do
  expect_fail_all_ranks "eval --micro-batch 16777216 of a context-65536 GPT, $n rank(s)" "$n" 2 \
    "a micro-batch of 16777216 rows is more than the model 'gpt(layers=1,heads=256,width=256,context=65536,vocab=256)' computes at once (32767: rows x positions must fit an int)" \
    -- eval --model-file "$WORK/gpt-long.h5" --data "$WORK/tokens.h5" --micro-batch 16777216
done
out=$("$DDTRAIN" eval --model-file "$WORK/legacy.h5" --data "$WORK/d16.h5" 2>&1)
[[ $out == "model 16-8-relu-dropout0.5-8-4 on "* ]] &&
  pass "a file storing the old canonical 'dropout-8' still reads, as dropout0.5-8" ||
  fail "legacy dropout-8: $out"

# --- plans beyond the node's memory with no limit set: DOES NOT FIT, exit 1 ------------------
for n in 1 2; do
  share=""
  [[ $n -gt 1 ]] && share=", shared by $n ranks"
  ranks "$n" "${train[@]}" --model 16-1000000-1000000-4 --dry-run >"$WORK/dry.txt" 2>"$WORK/dry.err"
  code=$?
  if [[ $code -eq 1 ]] && grep -q "device total .* of .* (.*%, no --device-memory-limit: the node's memory, .*$share)  DOES NOT FIT" "$WORK/dry.txt" &&
     grep -q "dry run: the plan does not fit" "$WORK/dry.txt"; then
    pass "--dry-run of 16-1000000-1000000-4 on $n rank(s): DOES NOT FIT against the node's memory"
  else
    fail "--dry-run of 16-1000000-1000000-4 on $n rank(s): exit $code"
    grep "device total\|dry run" "$WORK/dry.txt" | sed 's/^/    /'
  fi
  expect_fail_all_ranks "a real run of 16-1000000-1000000-4 refused before allocating, $n rank(s)" \
    "$n" 1 "(no --device-memory-limit: the node's memory, " -- "${train[@]}" --model 16-1000000-1000000-4
done
expect_fail_all_ranks "conv(100000,k3) twice: refused against the node's memory" 1 1 \
  "the memory plan needs" -- train --data "$WORK/d4096.h5" --global-batch 32 --steps 1 \
  --model "1x64x64-conv(100000,k3)-conv(100000,k3)-flatten-4" --dry-run
grep -q "DOES NOT FIT" "$WORK/out.txt" && pass "conv(100000,k3) twice: the plan says DOES NOT FIT" ||
  fail "conv(100000,k3) twice: no DOES NOT FIT in the plan"
# --- data too large to count: synth's sizes (rows x row bytes wrapped to a few KB and the
# disk check passed; rows x k / shards overflowed) -----------------------------------------
for args in "--rows 2305843009213693952" "--rows 9000000000000000000 --shards 2"; do
  # shellcheck disable=SC2086
  timeout -k 5 20 "$DDTRAIN" synth -o "$WORK/huge.h5" $args --features 1 --classes 2 \
    >"$WORK/synth.txt" 2>&1
  code=$?
  if [[ $code -eq 1 ]] && grep -q "rows of 8 bytes are more than 2^63 bytes: no file system holds them" "$WORK/synth.txt" &&
     [[ -z $(find "$WORK" -name 'huge*') ]]; then
    pass "synth $args: refused, nothing written"
  else
    fail "synth $args: exit $code, $(head -c 200 "$WORK/synth.txt"), files: $(find "$WORK" -name 'huge*' | wc -l)"
  fi
  rm -f "$WORK"/huge*
done

# "none" still means no limit, when asked for.
"$DDTRAIN" "${train[@]}" --model 16-1000000-1000000-4 --device-memory-limit none --dry-run \
  >"$WORK/none.txt" 2>&1
grep -q "(no device memory limit)" "$WORK/none.txt" && pass "--device-memory-limit none: no limit" ||
  fail "--device-memory-limit none: $(grep 'device total' "$WORK/none.txt")"
finish
