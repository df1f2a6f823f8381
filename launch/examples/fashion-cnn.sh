#!/usr/bin/env bash
# fashion-cnn.sh - the preset convolutional network (cnn-small) on Fashion-MNIST, 2 MPI ranks,
# end to end from a fresh clone: installs what is missing, builds ddtrain in build/, converts
# Debian's Fashion-MNIST into image-shaped HDF5 shards under data/ (once), trains, and prints
# the test accuracy and the training time.
#
#   launch/examples/fashion-cnn.sh          (extra arguments are passed to `ddtrain train`)
set -euo pipefail

installed="" # cmake --install writes the installed binary's path here
if [[ -n $installed ]]; then
  "$(dirname "$0")/../install-deps.sh" build data
  ddtrain=$installed
else
  cd "$(dirname "$0")/../.."
  launch/install-deps.sh build data
  build_dir=${DDTRAIN_BUILD_DIR:-build}
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" -j "$(nproc)" >/dev/null
  ddtrain=$build_dir/ddtrain
fi

source_dir=/usr/share/datasets/fashion-mnist
mkdir -p data
# N x 784 features read as 1x28x28 images by the model (the model declares the shape).
if [[ ! -f data/fashion-train-00003-of-00004.h5 ]]; then
  "$ddtrain" convert idx "$source_dir/train-images-idx3-ubyte.gz" \
    "$source_dir/train-labels-idx1-ubyte.gz" -o data/fashion-train.h5 --shards 4
fi
if [[ ! -f data/fashion-test.h5 ]]; then
  "$ddtrain" convert idx "$source_dir/t10k-images-idx3-ubyte.gz" \
    "$source_dir/t10k-labels-idx1-ubyte.gz" -o data/fashion-test.h5
fi

mpirun_args=(-np 2)
if [[ $(id -u) -eq 0 ]]; then mpirun_args+=(--allow-run-as-root); fi
if [[ $(nproc) -lt 2 ]]; then mpirun_args+=(--oversubscribe); fi

rm -f data/fashion-cnn-metrics.jsonl
start=$(date +%s.%N)
mpirun "${mpirun_args[@]}" "$ddtrain" train \
  --data 'data/fashion-train-*.h5' --eval-data data/fashion-test.h5 \
  --model cnn-small --epochs 10 --global-batch 128 \
  --optimizer adamw --lr 0.002 --weight-decay 0.05 --lr-schedule cosine --warmup-steps 200 \
  --save data/fashion-cnn.h5 --metrics data/fashion-cnn-metrics.jsonl "$@"
end=$(date +%s.%N)

summary=$(grep '"event":"summary"' data/fashion-cnn-metrics.jsonl | tail -1)
accuracy=$(sed -n 's/.*"eval_accuracy":\([0-9.]*\).*/\1/p' <<<"$summary")
train_seconds=$(sed -n 's/.*"train_seconds":\([0-9.]*\).*/\1/p' <<<"$summary")
seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
printf '\nFashion-MNIST test accuracy: %s  (training %s s, mpirun wall time %s s; model in data/fashion-cnn.h5)\n' \
  "$accuracy" "${train_seconds:-?}" "$seconds"
