#!/usr/bin/env bash
# dp_equivalence.sh - data parallelism is exact: N ranks x micro-batch b x k accumulation
# steps give the same weights as 1 rank x the whole global batch (20 steps, within 1e-5
# relative), for SGD with momentum and for AdamW, with dropout in the model; and for a
# convolutional network with pooling and a residual block (no batch normalisation, whose
# statistics are per micro-batch) under AdamW with weight decay on its matrices and gradient
# clipping; and for a GPT with dropout on byte tokens, where --recompute changes no bit.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/train.h5" --rows 2048 --features 32 --classes 4 --seed 7 --shards 2 \
  >/dev/null || { fail "synth"; finish; exit; }
common=(--data "$WORK/train-*.h5" --model 32-64-relu-dropout0.1-32-tanh-4 --global-batch 64
        --steps 20 --seed 3 --log-every 0)

train() { # train NAME NRANKS MICRO [extra args]
  local name=$1 n=$2 micro=$3
  shift 3
  ranks "$n" train "${common[@]}" --micro-batch "$micro" --save "$WORK/$name.h5" "$@" \
    >"$WORK/$name.log" 2>&1 || { fail "$name: training failed"; tail -5 "$WORK/$name.log"; }
}

train sgd-1x64 1 64 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-2x16x2 2 16 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-4x16x1 4 16 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-4x8x2 4 8 --optimizer sgd --lr 0.1 --momentum 0.9
for other in sgd-2x16x2 sgd-4x16x1 sgd-4x8x2; do
  expect_ok "SGD: $other equals 1 rank x 64" $H5TOOL compare "$WORK/$other.h5" "$WORK/sgd-1x64.h5" 1e-5
done

train adamw-1x64 1 64 --optimizer adamw --lr 0.003 --weight-decay 0.01
train adamw-2x16x2 2 16 --optimizer adamw --lr 0.003 --weight-decay 0.01
expect_ok "AdamW: 2 ranks x 16 x 2 equals 1 rank x 64" \
  $H5TOOL compare "$WORK/adamw-2x16x2.h5" "$WORK/adamw-1x64.h5" 1e-5

# A CNN: 72 features read as 2x6x6 images.
"$DDTRAIN" synth -o "$WORK/images.h5" --rows 1024 --features 72 --classes 4 --seed 5 >/dev/null ||
  fail "synth images"
cnn=(--data "$WORK/images.h5" --model "2x6x6-conv(4,k3,p1)-relu-maxpool(2)-res(conv(4,k3,p1)-tanh)-flatten-8-gelu-4"
     --global-batch 64 --steps 20 --seed 4 --log-every 0 --optimizer adamw --lr 0.01
     --weight-decay 0.1 --clip-grad-norm 0.5)
for run in 1:64 2:16 4:16 4:8; do
  n=${run%%:*} micro=${run##*:}
  ranks "$n" train "${cnn[@]}" --micro-batch "$micro" --save "$WORK/cnn-$n-$micro.h5" \
    >"$WORK/cnn-$n-$micro.log" 2>&1 || { fail "cnn $n x $micro: training failed"; tail -5 "$WORK/cnn-$n-$micro.log"; }
done
for other in cnn-2-16 cnn-4-16 cnn-4-8; do
  expect_ok "CNN: $other equals 1 rank x 64" $H5TOOL compare "$WORK/$other.h5" "$WORK/cnn-1-64.h5" 1e-5
done

# A GPT with dropout on byte tokens (this repository's README as text). SGD: the gradient of
# attention's key bias is zero but for rounding (softmax ignores a shift shared by all keys),
# and Adam would scale that rounding noise up to full steps, differently for every sum order.
"$DDTRAIN" convert text "$(dirname "$0")/../../README.md" -o "$WORK/text.h5" >/dev/null || fail "convert text"
gpt=(--data "$WORK/text.h5" --model "gpt(layers=2,heads=2,width=16,context=16,vocab=256,dropout=0.1)"
     --global-batch 32 --steps 10 --seed 6 --log-every 0 --optimizer sgd --lr 0.1 --momentum 0.9
     --weight-decay 0.01 --clip-grad-norm 1 --lr-schedule cosine --warmup-steps 2)
for run in 1:32 2:8 4:8; do
  n=${run%%:*} micro=${run##*:}
  ranks "$n" train "${gpt[@]}" --micro-batch "$micro" --save "$WORK/gpt-$n-$micro.h5" \
    >"$WORK/gpt-$n-$micro.log" 2>&1 || { fail "gpt $n x $micro: training failed"; tail -5 "$WORK/gpt-$n-$micro.log"; }
done
for other in gpt-2-8 gpt-4-8; do
  expect_ok "GPT: $other equals 1 rank x 32" $H5TOOL compare "$WORK/$other.h5" "$WORK/gpt-1-32.h5" 1e-5
done
ranks 2 train "${gpt[@]}" --micro-batch 8 --recompute --save "$WORK/gpt-recompute.h5" \
  >"$WORK/gpt-recompute.log" 2>&1 || fail "gpt --recompute: training failed"
expect_ok "GPT: --recompute gives the same weights bit for bit" \
  $H5TOOL compare "$WORK/gpt-recompute.h5" "$WORK/gpt-2-8.h5" 0

# Evaluation between epochs must not disturb training: the same weights, bit for bit, and the
# same reported training loss, with and without --eval-data (it shares the input buffers and
# device scalars with the training pipeline, which prefetches across the epoch boundary).
"$DDTRAIN" synth -o "$WORK/eval.h5" --rows 300 --features 32 --classes 4 --seed 8 >/dev/null
for with in no yes; do
  extra=()
  [[ $with == yes ]] && extra=(--eval-data "$WORK/eval.h5")
  ranks 2 train --data "$WORK/train-*.h5" --model 32-64-relu-4 --global-batch 64 --micro-batch 16 \
    --epochs 3 --seed 3 --log-every 0 --save "$WORK/eval-$with.h5" --metrics "$WORK/eval-$with.jsonl" \
    "${extra[@]}" >"$WORK/eval-$with.log" 2>&1 || fail "training with eval=$with"
done
expect_ok "evaluation between epochs leaves the weights bit for bit" \
  $H5TOOL compare "$WORK/eval-yes.h5" "$WORK/eval-no.h5" 0
losses() { grep '"event":"epoch"' "$1" | sed 's/.*"train_loss":\([^,]*\).*/\1/' | tr '\n' ' '; }
[[ "$(losses "$WORK/eval-yes.jsonl")" == "$(losses "$WORK/eval-no.jsonl")" ]] &&
  pass "evaluation leaves the reported training loss alone ($(losses "$WORK/eval-no.jsonl"))" ||
  fail "train loss with eval $(losses "$WORK/eval-yes.jsonl") != without $(losses "$WORK/eval-no.jsonl")"

# The check can fail: a different seed must give different weights.
train sgd-seed9 1 64 --optimizer sgd --lr 0.1 --momentum 0.9 --seed 9
if $H5TOOL compare "$WORK/sgd-seed9.h5" "$WORK/sgd-1x64.h5" 1e-5 >/dev/null 2>&1; then
  fail "a different seed gave equal weights (the comparison cannot fail)"
else pass "a different seed gives different weights"; fi
finish
