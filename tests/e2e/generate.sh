#!/usr/bin/env bash
# generate.sh - sampling from token models: `ddtrain generate` (greedy is deterministic and
# the most likely token at each position; a seed fixes a sample, another seed changes it;
# --tokens counts what is printed; token-id prompts for models that are not byte-level) and
# the sample rank 0 prints at each evaluation during training; bad models and prompts get a
# clear error on every rank.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" convert text "$HERE/../../README.md" -o "$WORK/text.h5" --val-fraction 0.1 >/dev/null ||
  fail "convert text"
gpt="gpt(layers=2,heads=2,width=32,context=32,vocab=256)"
ranks 2 train --data "$WORK/text-train.h5" --eval-data "$WORK/text-val.h5" --model "$gpt" \
  --global-batch 32 --steps 60 --eval-every 30 --eval-rows 64 --log-every 0 --optimizer adamw \
  --lr 0.01 --save "$WORK/g.h5" >"$WORK/train.log" 2>&1 || { fail "training"; tail -5 "$WORK/train.log"; }
[[ $(grep -c '^sample at step \(30\|60\):$' "$WORK/train.log") -eq 2 ]] &&
  pass "a sample after each evaluation (steps 30 and 60)" || fail "samples: $(grep -c sample "$WORK/train.log")"

gen() { "$DDTRAIN" generate --model-file "$WORK/g.h5" "$@"; }
gen --prompt "The model " --tokens 40 --temperature 0 >"$WORK/greedy1.txt" 2>"$WORK/err.txt" ||
  fail "greedy: $(cat "$WORK/err.txt")"
gen --prompt "The model " --tokens 40 --temperature 0 --seed 9 >"$WORK/greedy2.txt" 2>&1
cmp -s "$WORK/greedy1.txt" "$WORK/greedy2.txt" && pass "greedy: the same text whatever the seed" ||
  fail "greedy differs between seeds"
# The prompt, then exactly --tokens bytes (and a newline).
bytes=$(wc -c <"$WORK/greedy1.txt")
[[ $bytes -eq $((10 + 40 + 1)) && $(head -c 10 "$WORK/greedy1.txt") == "The model " ]] &&
  pass "the prompt and 40 bytes printed" || fail "printed $bytes bytes: $(cat "$WORK/greedy1.txt")"
# Greedy at top-k 1 with any temperature is the same argmax.
gen --prompt "The model " --tokens 40 --temperature 1.5 --top-k 1 >"$WORK/topk1.txt" 2>&1
cmp -s "$WORK/greedy1.txt" "$WORK/topk1.txt" && pass "--top-k 1 equals --temperature 0" ||
  fail "--top-k 1 differs from greedy"
gen --prompt "The model " --tokens 80 --seed 3 >"$WORK/s3a.txt" 2>&1
gen --prompt "The model " --tokens 80 --seed 3 >"$WORK/s3b.txt" 2>&1
gen --prompt "The model " --tokens 80 --seed 4 >"$WORK/s4.txt" 2>&1
cmp -s "$WORK/s3a.txt" "$WORK/s3b.txt" && pass "a seed fixes the sample" || fail "seed 3 twice differs"
cmp -s "$WORK/s3a.txt" "$WORK/s4.txt" && fail "seeds 3 and 4 gave the same 80 bytes" ||
  pass "another seed, another sample"
# Generation reads the whole context window, then slides: more tokens than the context.
gen --prompt "A" --tokens 100 --temperature 0 >"$WORK/long.txt" 2>"$WORK/err.txt" &&
  [[ $(wc -c <"$WORK/long.txt") -eq 102 ]] && pass "100 tokens past a context of 32" ||
  fail "long generation: $(cat "$WORK/err.txt")"

# A model that is not byte-level takes token ids.
/usr/bin/python3 - "$WORK/ids.h5" <<'PY' || fail "writing token ids"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    d = f.create_dataset("tokens", data=(np.arange(4000) * 7 % 1000).astype(np.uint16))
    d.attrs["vocab_size"] = 1000
PY
ranks 1 train --data "$WORK/ids.h5" --model "gpt(layers=1,heads=2,width=16,context=16,vocab=1000)" \
  --global-batch 16 --steps 5 --log-every 0 --save "$WORK/ids-model.h5" >/dev/null 2>&1 || fail "ids model"
"$DDTRAIN" generate --model-file "$WORK/ids-model.h5" --prompt "7, 14 21" --tokens 5 --temperature 0 \
  >"$WORK/ids.txt" 2>"$WORK/err.txt" && grep -Eq '^7 14 21( [0-9]+){5}$' "$WORK/ids.txt" &&
  pass "token ids in and out: $(cat "$WORK/ids.txt")" || fail "ids: $(cat "$WORK/ids.txt" "$WORK/err.txt")"

expect_fail_all_ranks "an id beyond the vocabulary" 2 2 "give token ids below 1000" -- \
  generate --model-file "$WORK/ids-model.h5" --prompt "5 1000"
expect_fail_all_ranks "an empty prompt" 2 2 "empty" -- generate --model-file "$WORK/g.h5" --prompt ""
# An empty id is an error, not skipped (test_train_generate covers the rest of the grammar).
expect_fail_all_ranks "an empty id between two commas" 2 2 "an empty id at character 3" -- \
  generate --model-file "$WORK/ids-model.h5" --prompt "1,,2"
expect_fail_all_ranks "a comma at the end" 2 2 "a comma at the end" -- \
  generate --model-file "$WORK/ids-model.h5" --prompt "1,2,"
"$DDTRAIN" synth -o "$WORK/f.h5" --rows 64 --features 4 --classes 2 >/dev/null
ranks 1 train --data "$WORK/f.h5" --model 4-8-relu-2 --global-batch 16 --steps 1 --log-every 0 \
  --save "$WORK/mlp.h5" >/dev/null 2>&1 || fail "an MLP to refuse"
expect_fail_all_ranks "a model that takes no tokens" 2 2 "does not take tokens" -- \
  generate --model-file "$WORK/mlp.h5" --prompt "x"
expect_fail_all_ranks "a missing model file" 2 1 "nope.h5" -- \
  generate --model-file "$WORK/nope.h5" --prompt "x"
finish
