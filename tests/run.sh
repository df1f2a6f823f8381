#!/usr/bin/env bash
# run.sh - the README's test command: installs what is missing, builds, runs the whole suite.
#
#   tests/run.sh [ctest arguments...]     e.g. tests/run.sh -R dp_equivalence
# Build directory: $DDTRAIN_BUILD_DIR (default build/); extra CMake arguments:
# $DDTRAIN_CMAKE_ARGS (e.g. -DDDTRAIN_CUDA=OFF). Warnings fail the build here. Tests that need
# a GPU report "skipped: no GPU" and show as Skipped where there is none. On a GPU node the
# other tests still compute on the CPU: ctest hides the GPUs from every test but the GPU ones,
# which opt in (CUDA_VISIBLE_DEVICES=-1; tests/CMakeLists.txt refuses to configure a test that
# does neither, and e2e/gpus_hidden.sh checks the hiding at run time).
set -euo pipefail
cd "$(dirname "$0")/.."

launch/install-deps.sh build test
build_dir=${DDTRAIN_BUILD_DIR:-build}
# shellcheck disable=SC2086 # DDTRAIN_CMAKE_ARGS is a list of arguments
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DDDTRAIN_WERROR=ON \
  ${DDTRAIN_CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
cd "$build_dir"
ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@" </dev/null
