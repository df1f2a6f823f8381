#!/usr/bin/env bash
# adversarial.sh - ddtrain's adversarial probe: some 800 hostile cases over model grammar, image
# folders, text and token files, token datasets, generate, damaged model files, stalls and
# kills in every phase (start-up and generate included), output paths and every numeric option,
# each run with a time bound and classified clean / wrong but safe / crash / hang / damaged.
# Not part of ctest (a full run takes 25-40 minutes with --jobs 2 on the project's 2-core
# machine class).
#
#   tests/probe/adversarial.sh BUILD_DIR [BUILD_DIR...] [--class NAME[,NAME]] [--jobs N]
#                              [--out DIR] [--case REGEX] [--keep] [--list]
#
# BUILD_DIR holds a built `ddtrain`. Give a plain build and a sanitizer build to run every case
# on both (a case's verdict is the worst of the two); the stalls class, whose bounds are
# timings, then runs on the plain build only. A sanitizer build (CPU-only, ASan + UBSan):
#
#   cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDDTRAIN_CUDA=OFF \
#     -DCMAKE_C_FLAGS='-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined' \
#     -DCMAKE_EXE_LINKER_FLAGS='-fsanitize=address,undefined'
#   cmake --build build-asan --target ddtrain
#
# Classes: grammar images text tokens generate damaged stalls outputs numeric (default: all).
# --jobs N runs N cases at once (default 1; the stalls class always runs one case at a time).
# Results (default BUILD_DIR/probe-results): summary.md (the table), non-clean.md (every case
# that was not clean: the evidence, the setup, the command, the end of its stderr), cases.tsv
# and results.json (every run), logs/ and work/ (output and folder of each case that was not
# clean; --keep keeps them all). A case's folder holds copies of its inputs; device nodes are
# made there with mknod (null, zero, full, urandom), never taken from /dev. Each process the
# probe starts has RLIMIT_FSIZE 2 GiB and no core dumps; a case whose processes pass 3 GiB of
# resident memory is stopped and counted as a hang. Needs root (mknod, mpirun as root),
# mpirun, and /usr/bin/python3 with h5py, numpy and PIL (python3-h5py, python3-numpy,
# python3-pil). Exit status 0 once the run completes, whatever it found; 2 for a usage error.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
if ! "$py" -c 'import h5py, numpy, PIL' 2>/dev/null; then
  echo "adversarial: needs $py with h5py, numpy and PIL (apt-get install python3-h5py python3-numpy python3-pil)" >&2
  exit 2
fi
command -v mpirun >/dev/null || { echo "adversarial: needs mpirun (openmpi-bin)" >&2; exit 2; }
exec "$py" "$here/probe.py" "$@"
