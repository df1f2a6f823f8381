#!/usr/bin/env bash
# run.sh - the README's test command: installs what is missing, builds, runs the whole suite.
#
#   tests/run.sh [ctest arguments...]     e.g. tests/run.sh -R dp_equivalence
# Build directory: $DDTRAIN_BUILD_DIR (default build/). Warnings fail the build here.
set -euo pipefail
cd "$(dirname "$0")/.."

launch/install-deps.sh build test
build_dir=${DDTRAIN_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DDDTRAIN_WERROR=ON >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
cd "$build_dir"
ctest --output-on-failure --timeout 600 "$@" </dev/null
