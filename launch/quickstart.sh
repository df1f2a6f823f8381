#!/usr/bin/env bash
# quickstart.sh - the README's main command: from a fresh Debian 12 machine to a trained
# Fashion-MNIST classifier on 2 MPI ranks.
#
#   launch/quickstart.sh            (extra arguments are passed to `ddtrain train`)
# Installs what is missing, builds ddtrain in build/, converts Debian's Fashion-MNIST into
# HDF5 shards under data/ (once), trains with `mpirun -np 2`, and prints the test accuracy.
# The copy `cmake --install` puts in PREFIX/share/ddtrain/launch uses the installed binary
# instead, builds nothing, and works in data/ under the current directory.
set -euo pipefail

installed="" # cmake --install writes the installed binary's path here
source "$(dirname "$0")/common.sh"
ddtrain_ready build data
fashion_data

start=$(date +%s.%N)
mpirun "${mpirun_args[@]}" "$ddtrain" train \
  --data 'data/fashion-train-*.h5' --eval-data data/fashion-test.h5 \
  --model 784-256-relu-128-relu-10 --epochs 15 --global-batch 128 \
  --optimizer sgd --lr 0.05 --momentum 0.9 --lr-schedule cosine --warmup-steps 200 \
  --save data/fashion-mlp.h5 --metrics data/fashion-metrics.jsonl "$@"
end=$(date +%s.%N)

accuracy=$(grep '"event":"summary"' data/fashion-metrics.jsonl | tail -1 |
           sed -n 's/.*"eval_accuracy":\([0-9.]*\).*/\1/p')
seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
printf '\nFashion-MNIST test accuracy: %s  (mpirun wall time %s s; model in data/fashion-mlp.h5)\n' \
  "$accuracy" "$seconds"
