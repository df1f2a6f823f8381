#!/usr/bin/env bash
# run.sh - builds the libFuzzer target tests/fuzz/fuzz_readers.c with clang and fuzzes ddtrain's
# dataset and model-file readers for a bounded time (ctest's fuzz_readers; CI runs it).
#
#   DDTRAIN_FUZZ_SECONDS=60 tests/fuzz/run.sh      (ctest sets the variables below)
#
# Exit 77 (ctest: skipped) with a message when clang or libFuzzer is missing. The fuzzer runs
# in fork mode and goes on after a finding, over a scratch copy of tests/fuzz/corpus. Each
# finding is then sorted: one whose report shows the fault inside libhdf5 (HDF5 1.10.8 crashes,
# loops or asks for absurd memory on some damaged files) is replayed through the crash guard
# with test_io_fuzz_replay, and passes if the guard ends it with its message; anything else --
# a fault in ddtrain's own code, or an HDF5 fault the guard does not turn into a message --
# fails the run. Findings are kept in $DDTRAIN_FUZZ_BUILD/findings for a look (add new HDF5
# ones to tests/fuzz/crashers).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${DDTRAIN_FUZZ_BUILD:-$root/build/tests/fuzz}
seconds=${DDTRAIN_FUZZ_SECONDS:-60}
replay=${DDTRAIN_FUZZ_REPLAY:-}
hdf5_include=${DDTRAIN_FUZZ_HDF5_INCLUDE:-/usr/include/hdf5/serial}
hdf5_library=${DDTRAIN_FUZZ_HDF5_LIBRARY:-/usr/lib/x86_64-linux-gnu/hdf5/serial/libhdf5.so}

clang=""
for candidate in clang clang-14 clang-15 clang-16; do
  command -v "$candidate" >/dev/null 2>&1 && { clang=$candidate; break; }
done
if [[ -z $clang ]]; then
  echo "skipped: no clang (the fuzz target needs clang with libFuzzer: apt-get install clang)"
  exit 77
fi
mkdir -p "$build"
probe=$build/probe.c
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe"
if ! "$clang" -fsanitize=fuzzer "$probe" -o "$build/probe" >/dev/null 2>&1; then
  echo "skipped: $clang cannot link -fsanitize=fuzzer (libFuzzer missing: apt-get install clang)"
  exit 77
fi

started=$SECONDS
(cd "$root" &&
  # The readers, and the model grammar with what it links: each layer kind's file (its parser
  # sits beside its passes) and so the device layer with its CPU backend (OpenBLAS).
  sources=(src/util/*.c src/io/dataset.c src/io/hdf5_storage.c src/io/hdf5_lock.c
           src/io/io_exit.c src/io/model_file.c src/engine/model_spec.c src/engine/layers/*.c
           src/engine/device.c src/engine/device_cpu.c src/engine/device_cpu_layers.c) &&
  "$clang" -g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Isrc -I"$hdf5_include" tests/fuzz/fuzz_readers.c "${sources[@]}" "$hdf5_library" -lopenblas \
  -lm -lpthread -ldl -o "$build/fuzz_readers") || { echo "FAIL: building the fuzz target"; exit 1; }
echo "built $build/fuzz_readers with $clang in $((SECONDS - started)) s"

work=$build/corpus
findings=$build/findings
rm -rf "$work" "$findings"
mkdir -p "$work" "$findings"
cp "$here"/corpus/* "$work"/
# As in production: a huge allocation HDF5 asks for fails (returns NULL) instead of aborting.
export ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1
export LSAN_OPTIONS=suppressions=$here/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1
"$build/fuzz_readers" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
  -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -artifact_prefix="$findings/" \
  "$work" >"$build/fuzz.log" 2>&1
tail -3 "$build/fuzz.log"
runs=$(grep -o '^#[0-9]*' "$build/fuzz.log" | tail -1 | tr -d '#')
echo "fuzzed ${seconds} s: ${runs:-0} executions, corpus $(ls "$work" | wc -l) files"

# Sort the findings.
failed=0
shopt -s nullglob
for finding in "$findings"/*; do
  name=$(basename "$finding")
  report=$(timeout 60 "$build/fuzz_readers" -timeout=5 -rss_limit_mb=2048 "$finding" 2>&1)
  # The first stack frame in HDF5 or in ddtrain's sources (the sanitizer's and libFuzzer's
  # own frames, and libc's, come before them and say nothing about whose fault it is).
  frame=$(grep -E '^ +#[0-9]+ ' <<<"$report" | grep -E "libhdf5|$root/(src|tests)/" | head -1)
  if [[ $frame == *libhdf5* ]]; then
    if [[ -n $replay ]] && "$replay" "$finding" >"$build/replay.txt" 2>&1; then
      echo "HDF5 fault: $name; in ddtrain (no sanitizer):$(head -1 "$build/replay.txt" | cut -d: -f2-)"
    elif [[ -z $replay ]]; then
      echo "HDF5 fault (not replayed: DDTRAIN_FUZZ_REPLAY unset): $name"
    else
      echo "FAIL: HDF5 fault the crash guard does not handle: $name"
      cat "$build/replay.txt"
      failed=1
    fi
  elif [[ -z $frame ]]; then
    echo "note: $name, with no frame in HDF5 or ddtrain (see $finding)"
    grep -E 'ERROR|SUMMARY' <<<"$report" | head -3
  else
    echo "FAIL: a fault outside HDF5 (ddtrain's code): $name"
    grep -E 'ERROR|SUMMARY|^ +#[0-9]+ ' <<<"$report" | head -15
    failed=1
  fi
done
[[ $failed -eq 0 ]] && echo "fuzz_readers: no fault in ddtrain's code" || echo "fuzz_readers: FAILED"
exit $failed
