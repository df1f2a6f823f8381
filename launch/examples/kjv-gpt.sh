#!/usr/bin/env bash
# kjv-gpt.sh - a small GPT (the gpt-tiny preset: 4 layers, 4 heads, width 128, context 64)
# trained on the King James Bible as bytes, 2 MPI ranks, end to end from a fresh clone:
# installs what is missing, builds ddtrain in build/, makes the data (kjv-data.sh: Debian's
# bible-kjv, the last tenth held out), trains for a fixed number of steps, and prints the
# validation loss and a sample.
#
#   launch/examples/kjv-gpt.sh          (extra arguments are passed to `ddtrain train`)
set -euo pipefail

installed="" # cmake --install writes the installed binary's path here
if [[ -n $installed ]]; then
  here=$(dirname "$0")
  "$here/../install-deps.sh" build kjv
  ddtrain=$installed
else
  cd "$(dirname "$0")/../.."
  here=launch/examples
  launch/install-deps.sh build kjv
  build_dir=${DDTRAIN_BUILD_DIR:-build}
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" -j "$(nproc)" >/dev/null
  ddtrain=$build_dir/ddtrain
fi
"$here/kjv-data.sh" "$ddtrain" data

mpirun_args=(-np 2)
if [[ $(id -u) -eq 0 ]]; then mpirun_args+=(--allow-run-as-root); fi
if [[ $(nproc) -lt 2 ]]; then mpirun_args+=(--oversubscribe); fi

rm -f data/kjv-gpt-metrics.jsonl
# 64 windows of 64 bytes a step (4096 tokens); AdamW with decay on matrices, clipping, warm-up
# and cosine, as nanoGPT trains its character-level models.
mpirun "${mpirun_args[@]}" "$ddtrain" train \
  --data data/kjv-train.h5 --eval-data data/kjv-val.h5 --model gpt-tiny \
  --steps 1200 --global-batch 64 --optimizer adamw --lr 0.002 --beta2 0.99 \
  --weight-decay 0.1 --clip-grad-norm 1 --lr-schedule cosine --warmup-steps 100 --min-lr 0.0002 \
  --eval-every 300 --eval-rows 1024 --log-every 100 \
  --save data/kjv-gpt.h5 --metrics data/kjv-gpt-metrics.jsonl "$@"

summary=$(grep '"event":"summary"' data/kjv-gpt-metrics.jsonl | tail -1)
loss=$(sed -n 's/.*"eval_loss":\([0-9.]*\).*/\1/p' <<<"$summary")
train_seconds=$(sed -n 's/.*"train_seconds":\([0-9.]*\).*/\1/p' <<<"$summary")
printf '\nKJV validation loss %s (bytes, nats per byte) after %s s of training; a sample:\n\n' \
  "$loss" "$train_seconds"
"$ddtrain" generate --model-file data/kjv-gpt.h5 --prompt "And God said" --tokens 300 \
  --temperature 0.8 --top-k 40 --seed 7
