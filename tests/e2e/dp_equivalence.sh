#!/usr/bin/env bash
# dp_equivalence.sh - data parallelism is exact: N ranks x micro-batch b x k accumulation
# steps give the same weights as 1 rank x the whole global batch (20 steps, within rounding:
# 1e-5 relative, or 10 times this training's noise floor on this CPU where that is larger,
# see below), for SGD with momentum and for AdamW, with dropout in the model, on every
# all-reduce path (shm on one node, shm on emulated nodes, mpi); the shm path sums in a fixed
# order: the same bits run after run, with overlap on or off; and for a convolutional network
# with pooling and a residual block (no batch normalisation, whose statistics are per
# micro-batch) under AdamW with weight decay on its matrices and gradient clipping; and for a
# GPT with dropout on byte tokens, where --recompute changes no bit.
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

# N ranks and 1 rank add the same float32 terms in other orders, so they drift apart by what
# rounding does to the training, which depends on the CPU and its BLAS kernel (and a ReLU or
# max-pool input within rounding of its kink may take the other branch in one run). The bar
# is tied to this training's noise floor, measured here: the 1-rank run again with the
# learning rate moved by 2^-22 of itself (a few float32 ulps: a rounding-size change at every
# step, through no code that N ranks use); h5tool compare-floor holds the N-rank runs to
# max(1e-5, 10 x how far that run lands from the 1-rank one). Measured here: N ranks within
# 2e-7..1.8e-6 of 1 rank under OpenBLAS's Zen, Prescott, SandyBridge and Nehalem kernels.
nudged() { $PY -c "import sys; print(repr(float(sys.argv[1]) * (1 + 2 ** -22)))" "$1"; }

train sgd-1x64 1 64 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-1x64-floor 1 64 --optimizer sgd --lr "$(nudged 0.1)" --momentum 0.9
train sgd-2x16x2 2 16 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-4x16x1 4 16 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-4x8x2 4 8 --optimizer sgd --lr 0.1 --momentum 0.9
sgd_floor=("$WORK/sgd-1x64-floor.h5" "$WORK/sgd-1x64.h5")
for other in sgd-2x16x2 sgd-4x16x1 sgd-4x8x2; do
  expect_ok "SGD: $other equals 1 rank x 64" \
    $H5TOOL compare-floor "$WORK/$other.h5" "$WORK/sgd-1x64.h5" 1e-5 "${sgd_floor[@]}"
done

# The hierarchical path (DDTRAIN_NODE_RANKS: every K ranks form a node of their own) and MPI's.
DDTRAIN_NODE_RANKS=2 train sgd-4x16x1-nodes2 4 16 --optimizer sgd --lr 0.1 --momentum 0.9
DDTRAIN_NODE_RANKS=1 train sgd-2x16x2-nodes1 2 16 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-4x16x1-mpi 4 16 --optimizer sgd --lr 0.1 --momentum 0.9 --allreduce mpi
for other in sgd-4x16x1-nodes2 sgd-2x16x2-nodes1 sgd-4x16x1-mpi; do
  expect_ok "SGD: $other equals 1 rank x 64" \
    $H5TOOL compare-floor "$WORK/$other.h5" "$WORK/sgd-1x64.h5" 1e-5 "${sgd_floor[@]}"
done
grep -q "communication shm" "$WORK/sgd-4x16x1.log" && pass "CPU ranks all-reduce through shm by default" ||
  fail "the default data plane is not shm: $(grep -m1 communication "$WORK/sgd-4x16x1.log")"

# Fixed sum order: timing cannot change a bit, whether buckets start during backward or not.
train sgd-4x16x1-again 4 16 --optimizer sgd --lr 0.1 --momentum 0.9
train sgd-4x16x1-overlap-off 4 16 --optimizer sgd --lr 0.1 --momentum 0.9 --overlap off
DDTRAIN_NODE_RANKS=2 train sgd-4x16x1-nodes2-again 4 16 --optimizer sgd --lr 0.1 --momentum 0.9
expect_ok "shm: a second run gives the same weights bit for bit" \
  $H5TOOL compare "$WORK/sgd-4x16x1-again.h5" "$WORK/sgd-4x16x1.h5" 0
expect_ok "shm: --overlap off gives the same weights bit for bit" \
  $H5TOOL compare "$WORK/sgd-4x16x1-overlap-off.h5" "$WORK/sgd-4x16x1.h5" 0
expect_ok "shm on 2 emulated nodes: a second run gives the same weights bit for bit" \
  $H5TOOL compare "$WORK/sgd-4x16x1-nodes2-again.h5" "$WORK/sgd-4x16x1-nodes2.h5" 0

train adamw-1x64 1 64 --optimizer adamw --lr 0.003 --weight-decay 0.01
train adamw-1x64-floor 1 64 --optimizer adamw --lr "$(nudged 0.003)" --weight-decay 0.01
train adamw-2x16x2 2 16 --optimizer adamw --lr 0.003 --weight-decay 0.01
expect_ok "AdamW: 2 ranks x 16 x 2 equals 1 rank x 64" \
  $H5TOOL compare-floor "$WORK/adamw-2x16x2.h5" "$WORK/adamw-1x64.h5" 1e-5 \
  "$WORK/adamw-1x64-floor.h5" "$WORK/adamw-1x64.h5"

# A CNN: 72 features read as 2x6x6 images.
"$DDTRAIN" synth -o "$WORK/images.h5" --rows 1024 --features 72 --classes 4 --seed 5 >/dev/null ||
  fail "synth images"
cnn=(--data "$WORK/images.h5" --model "2x6x6-conv(4,k3,p1)-relu-maxpool(2)-res(conv(4,k3,p1)-tanh)-flatten-8-gelu-4"
     --global-batch 64 --steps 20 --seed 4 --log-every 0 --optimizer adamw
     --weight-decay 0.1 --clip-grad-norm 0.5)
for run in 1:64 2:16 4:16 4:8 floor:64; do
  n=${run%%:*} micro=${run##*:} lr=0.01
  [[ $n == floor ]] && n=1 lr=$(nudged 0.01)
  ranks "$n" train "${cnn[@]}" --lr "$lr" --micro-batch "$micro" \
    --save "$WORK/cnn-${run%%:*}-$micro.h5" \
    >"$WORK/cnn-${run%%:*}-$micro.log" 2>&1 ||
    { fail "cnn $run: training failed"; tail -5 "$WORK/cnn-${run%%:*}-$micro.log"; }
done
for other in cnn-2-16 cnn-4-16 cnn-4-8; do
  expect_ok "CNN: $other equals 1 rank x 64" $H5TOOL compare-floor "$WORK/$other.h5" \
    "$WORK/cnn-1-64.h5" 1e-5 "$WORK/cnn-floor-64.h5" "$WORK/cnn-1-64.h5"
done

# A GPT with dropout on byte tokens (this repository's README as text). SGD: the gradient of
# attention's key bias is zero but for rounding (softmax ignores a shift shared by all keys),
# and Adam would scale that rounding noise up to full steps, differently for every sum order.
"$DDTRAIN" convert text "$(dirname "$0")/../../README.md" -o "$WORK/text.h5" >/dev/null || fail "convert text"
gpt=(--data "$WORK/text.h5" --model "gpt(layers=2,heads=2,width=16,context=16,vocab=256,dropout=0.1)"
     --global-batch 32 --steps 10 --seed 6 --log-every 0 --optimizer sgd --momentum 0.9
     --weight-decay 0.01 --clip-grad-norm 1 --lr-schedule cosine --warmup-steps 2)
for run in 1:32 2:8 4:8 floor:32; do
  n=${run%%:*} micro=${run##*:} lr=0.1
  [[ $n == floor ]] && n=1 lr=$(nudged 0.1)
  ranks "$n" train "${gpt[@]}" --lr "$lr" --micro-batch "$micro" \
    --save "$WORK/gpt-${run%%:*}-$micro.h5" \
    >"$WORK/gpt-${run%%:*}-$micro.log" 2>&1 ||
    { fail "gpt $run: training failed"; tail -5 "$WORK/gpt-${run%%:*}-$micro.log"; }
done
for other in gpt-2-8 gpt-4-8; do
  expect_ok "GPT: $other equals 1 rank x 32" $H5TOOL compare-floor "$WORK/$other.h5" \
    "$WORK/gpt-1-32.h5" 1e-5 "$WORK/gpt-floor-32.h5" "$WORK/gpt-1-32.h5"
done
ranks 2 train "${gpt[@]}" --lr 0.1 --micro-batch 8 --recompute --save "$WORK/gpt-recompute.h5" \
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
if $H5TOOL compare-floor "$WORK/sgd-seed9.h5" "$WORK/sgd-1x64.h5" 1e-5 "${sgd_floor[@]}" \
  >/dev/null 2>&1; then
  fail "a different seed gave equal weights (the comparison cannot fail)"
else pass "a different seed gives different weights"; fi
finish
