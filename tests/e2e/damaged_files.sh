#!/usr/bin/env bash
# damaged_files.sh - files on which HDF5 1.10.8 itself crashes or loops forever (found by the
# fuzz target, kept in tests/fuzz/crashers) end ddtrain with a message naming the file and a
# non-zero exit on every rank, promptly: never a segmentation fault, never a hang. A bit flip
# in a dataset's chunk layout crashes H5Dread (H5VM_memcpyvv); damaged global heaps crash or
# hang the read of a model file's "model" attribute.
source "$(dirname "$0")/lib.sh"
crashers=$HERE/../fuzz/crashers
good=$HERE/../fuzz/corpus/synth.h5
cp "$crashers"/*.h5 "$WORK"/
segv_data=$WORK/dataset-bitflip-936-4-segv-h5dread.h5
segv_model=$WORK/model-segv-global-heap.h5
hang_model=$WORK/model-hang-global-heap.h5

# check NAME SECONDS TEXT -- COMMAND...: the command exits non-zero within SECONDS, its output
# has TEXT, and nothing died of a signal.
check() {
  local name=$1 limit=$2 text=$3
  shift 4
  local start=$SECONDS
  timeout -k 5 "$limit" "$@" >"$WORK/out.txt" 2>&1
  local code=$? problems=""
  [[ $code -eq 0 ]] && problems+=" exit 0;"
  [[ $code -eq 124 || $code -eq 137 ]] && problems+=" hung (killed after $limit s);"
  [[ $code -gt 128 && $code -ne 137 ]] && problems+=" died of signal $((code - 128));"
  grep -qF -- "$text" "$WORK/out.txt" || problems+=" no '$text';"
  grep -qiE "segmentation fault|signal 11|core dumped" "$WORK/out.txt" && problems+=" a crash report;"
  if [[ -z $problems ]]; then pass "$name (exit $code, $((SECONDS - start)) s)"; else
    fail "$name:$problems"
    tail -8 "$WORK/out.txt"
  fi
}

check "info on a bit-flipped dataset" 60 \
  "HDF5 crashed (SIGSEGV) while reading $segv_data: the file is damaged" -- \
  "$DDTRAIN" info "$segv_data"
check "info on the other bit flip" 60 "HDF5 crashed (SIGSEGV) while reading" -- \
  "$DDTRAIN" info "$WORK/dataset-bitflip-936-6-segv-h5dread.h5"
check "train on a bit-flipped dataset, 2 ranks" 90 "$segv_data" -- \
  mpirun -np 2 --bind-to none "$DDTRAIN" train --data "$segv_data" --model 3-8-relu-4 \
  --global-batch 8 --steps 3 --log-every 0
check "eval of a model file that crashes HDF5, 2 ranks" 90 \
  "HDF5 crashed (SIGSEGV) while reading $segv_model" -- \
  mpirun -np 2 --bind-to none "$DDTRAIN" eval --model-file "$segv_model" --data "$good"
check "--init from a model file that aborts HDF5" 60 "HDF5 crashed" -- \
  "$DDTRAIN" train --init "$WORK/model-abort-global-heap.h5" --data "$good" --global-batch 8 \
  --steps 1 --log-every 0
check "--init from a model file on which HDF5 loops forever, 2 ranks" 90 \
  "HDF5 has not returned in more than 4 s while reading $hang_model" -- \
  mpirun -np 2 --bind-to none "$DDTRAIN" train --init "$hang_model" --data "$good" \
  --global-batch 8 --steps 1 --log-every 0 --comm-timeout 4
# generate reads model files through the same guard, under its own --comm-timeout (a gpt-tiny
# file with bit 0 of byte 2145 flipped loops the same way, in H5HG_read).
check "generate from a model file on which HDF5 loops forever, 2 ranks" 90 \
  "HDF5 has not returned in more than 4 s while reading $hang_model" -- \
  mpirun -np 2 --bind-to none "$DDTRAIN" generate --model-file "$hang_model" --prompt "x" \
  --comm-timeout 4
check "generate from a model file that crashes HDF5" 60 \
  "HDF5 crashed (SIGSEGV) while reading $segv_model" -- \
  "$DDTRAIN" generate --model-file "$segv_model" --prompt "x"
finish
