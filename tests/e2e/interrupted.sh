#!/usr/bin/env bash
# interrupted.sh - a writer ended by SIGTERM, SIGINT or SIGHUP (kill, Ctrl-C, a closed
# terminal) leaves no temporary file behind and ends as that signal ends a process (exit 128+N):
# convert, synth and train's --save. DDTRAIN_DEBUG_STALL=publish:0:S holds each finished
# temporary file for S seconds before its rename (util/failpoint.h), so the signal lands while
# the temporary files exist. train takes SIGTERM as a request to stop at the next step: it
# finishes the save and exits 0, leaving no temporary file either.
source "$(dirname "$0")/lib.sh"

# Background jobs of a script ignore SIGINT unless job control is on.
set -m

$PY - "$WORK/imgs" <<'PY' || fail "making the image folder"
import os, struct, sys, zlib
root = sys.argv[1]
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
for c in ("a", "b"):
    os.makedirs(f"{root}/{c}", exist_ok=True)
    for i in range(3):
        rows = b"".join(b"\0" + bytes((x * 30 + i) % 256 for x in range(8)) for y in range(6))
        open(f"{root}/{c}/{i}.png", "wb").write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 6, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PY
printf 'some text to read as bytes\n%.0s' $(seq 200) >"$WORK/text.txt"
"$DDTRAIN" synth -o "$WORK/d.h5" --rows 256 --features 8 --classes 3 >/dev/null || fail "synth"

# interrupt NAME SIGNAL EXPECTED_EXIT TEMPS OUTPUT_GLOB DDTRAIN_ARGS...: runs ddtrain with the
# publish stall ($STALL seconds, 60 unless set: `timeout` passes the signal on and kills what
# is left 5 s later, so a run that goes on after it needs a short one), waits (at most 20 s) until TEMPS temporary files exist in $WORK/out, sends
# SIGNAL, and checks the exit status, that no temporary file is left, and what is in
# $WORK/out afterwards matches OUTPUT_GLOB ("" for nothing).
interrupt() {
  local name=$1 signal=$2 expected=$3 temps=$4 outputs=$5
  shift 5
  rm -rf "$WORK/out"
  mkdir -p "$WORK/out"
  DDTRAIN_DEBUG_STALL=publish:0:${STALL:-60} timeout -k 5 "$TIMEOUT" "$DDTRAIN" "$@" >"$WORK/run.txt" 2>&1 &
  local pid=$! waited=0
  until [[ $(find "$WORK/out" -name '*.tmp-*' | wc -l) -ge $temps ]]; do
    sleep 0.1
    waited=$((waited + 1))
    if ((waited > 200)) || ! kill -0 $pid 2>/dev/null; then
      fail "$name: the $temps temporary file(s) never appeared: $(ls "$WORK/out")"
      kill -KILL $pid 2>/dev/null
      wait $pid 2>/dev/null
      return
    fi
  done
  kill -"$signal" $pid
  wait $pid
  local code=$?
  local left
  left=$(cd "$WORK/out" && ls)
  local problems=""
  [[ $code -eq $expected ]] || problems+=" exit $code (expected $expected);"
  [[ -n $(find "$WORK/out" -name '*.tmp-*') ]] && problems+=" temporary files left: $left;"
  if [[ -z $outputs ]]; then
    [[ -z $left ]] || problems+=" files left: $left;"
  else
    # shellcheck disable=SC2086 # the glob
    (cd "$WORK/out" && ls $outputs >/dev/null 2>&1) || problems+=" missing $outputs (there: $left);"
  fi
  if [[ -z $problems ]]; then pass "$name"; else
    fail "$name:$problems"
    tail -5 "$WORK/run.txt"
  fi
}

for signal in TERM INT HUP; do
  number=$(kill -l "$signal")
  interrupt "convert images, SIG$signal: exit $((128 + number)), no temporary file" "$signal" \
    $((128 + number)) 3 "" convert images "$WORK/imgs" -o "$WORK/out/img.h5" --size 4x4 \
    --shards 2 --val-fraction 0.3
done
interrupt "convert text, SIGTERM" TERM 143 1 "" convert text "$WORK/text.txt" -o "$WORK/out/t.h5"
interrupt "synth, SIGTERM" TERM 143 1 "" synth -o "$WORK/out/s.h5" --rows 1000 \
  --features 8 --classes 3
train=(train --data "$WORK/d.h5" --model 8-16-relu-3 --global-batch 32 --steps 3 --log-every 0
  --save "$WORK/out/m.h5")
interrupt "train --save, SIGINT: exit 130, no temporary file" INT 130 1 "" "${train[@]}"
interrupt "train --save, SIGHUP: exit 129, no temporary file" HUP 129 1 "" "${train[@]}"
STALL=1 interrupt "train --save, SIGTERM: stops as asked, the model saved, exit 0" TERM 0 1 m.h5 \
  "${train[@]}"
interrupt "train --checkpoint-dir, SIGINT: exit 130, no temporary file" INT 130 1 ".ddtrain.lock" \
  train --data "$WORK/d.h5" --model 8-16-relu-3 --global-batch 32 --steps 3 --log-every 0 \
  --checkpoint-dir "$WORK/out" --checkpoint-every 2
finish
