#!/usr/bin/env bash
# make-bundle.sh - packs what tests/gpu/acceptance.sh needs for a GPU machine that has CUDA,
# NCCL and PyTorch but no Open MPI, HDF5 or OpenBLAS: the CUDA build (for sm_80 and sm_90),
# its test and bench programs, their libraries and a relocatable Open MPI (through the GPU
# kit's bundle.sh), and Debian's Fashion-MNIST as its four IDX files (converted there).
#
#   tests/gpu/make-bundle.sh [OUT]          (default OUT: .bundle, which .gitignore ignores)
# Then, on the GPU machine, from the repository root:
#   . OUT/env.sh && tests/gpu/acceptance.sh --bin OUT/bin --data OUT/data --out RESULTS
# The kit is looked for at $GPUKIT, else ../shared/gpu beside the repository. Libraries are
# xz-compressed (GPUKIT_COMPRESS=xz; the GPU machine unpacks them with xz or Python's lzma) so
# that the bundle and the data stay well inside a 64 MiB transfer.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.bundle}
kit=${GPUKIT:-../shared/gpu}
[[ -x $kit/bundle.sh ]] || { echo "make-bundle.sh: no GPU kit at $kit (set GPUKIT)" >&2; exit 2; }
build=${DDTRAIN_BUILD_DIR:-build}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDDTRAIN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="80;90" >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
rm -rf "$out"
GPUKIT_COMPRESS=${GPUKIT_COMPRESS:-xz} "$kit/bundle.sh" "$out" "$build/ddtrain" \
  "$build/libddtrain_cuda.so" "$build/tests/test_cuda_device" "$build/tests/test_engine_ops" \
  "$build/tests/mpi_test_comm_nccl" \
  "$build/bench/ddtrain_bench_gemm" "$build/bench/ddtrain_bench_kernels" >"$out.log" 2>&1 ||
  { cat "$out.log" >&2; exit 1; }
rm -f "$out.log"
mkdir -p "$out/data"
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$out/data/"
echo "make-bundle.sh: $out: $(du -sh "$out" | cut -f1) ($(du -sh "$out/data" | cut -f1) of data)"
