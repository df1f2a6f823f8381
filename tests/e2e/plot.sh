#!/usr/bin/env bash
# plot.sh - bench/plot draws the --metrics files of two runs (2 ranks with evaluation and step
# records; 1 rank with epoch records only) into one PNG of the expected size with both runs'
# curves on it, with --x samples too; it reads a run still being written; bad inputs get a message.
source "$(dirname "$0")/lib.sh"

PLOT="$HERE/../../bench/plot"
if ! $PY -c 'import matplotlib' 2>/dev/null; then
  echo "skipped: python3-matplotlib is not installed (launch/install-deps.sh test installs it)"
  exit 77
fi

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 4096 --features 32 --classes 4 >/dev/null
ranks 2 train --data "$WORK/d.h5" --eval-data "$WORK/d.h5" --model 32-64-relu-4 --global-batch 64 \
  --epochs 3 --metrics-every 8 --log-every 0 --metrics "$WORK/a.jsonl" >/dev/null 2>&1 &&
  ranks 1 train --data "$WORK/d.h5" --model 32-64-relu-4 --global-batch 32 --epochs 3 --lr 0.01 \
    --metrics-every 0 --log-every 0 --metrics "$WORK/b.jsonl" >/dev/null 2>&1 &&
  pass "two runs with --metrics" || fail "training runs"

# image_check PNG: prints "WIDTHxHEIGHT BLUE ORANGE": the fractions of pixels in the colours
# of the first and second run (matplotlib's first two), i.e. how much of each run is drawn.
image_check() {
  $PY - "$1" <<'PY'
import sys
import matplotlib.image
image = matplotlib.image.imread(sys.argv[1])[:, :, :3]
def share(rgb):
    return (abs(image - [c / 255 for c in rgb]).max(axis=2) < 0.1).mean()
print(f"{image.shape[1]}x{image.shape[0]} {share((31, 119, 180)):.4f} {share((255, 127, 14)):.4f}")
PY
}

expect_ok "plot two runs" "$PLOT" "$WORK/a.jsonl" "$WORK/b.jsonl" -o "$WORK/ab.png"
read -r size blue orange < <(image_check "$WORK/ab.png")
[[ $size == 1430x935 ]] && awk -v b="$blue" -v o="$orange" 'BEGIN { exit !(b > 0.0002 && o > 0.0002) }' &&
  pass "PNG $size with both runs drawn ($blue and $orange of the pixels in their colours)" ||
  fail "PNG $size, run colours $blue and $orange"
expect_ok "plot against samples" "$PLOT" "$WORK/a.jsonl" "$WORK/b.jsonl" --x samples \
  --labels two-ranks,one-rank -o "$WORK/samples.png"

# A run still being written: no summary yet, its last line cut short.
head -n 5 "$WORK/a.jsonl" >"$WORK/partial.jsonl"
sed -n 6p "$WORK/a.jsonl" | head -c 40 >>"$WORK/partial.jsonl"
expect_ok "plot a run in progress" "$PLOT" "$WORK/partial.jsonl" -o "$WORK/partial.png"

check_error() { # NAME TEXT PLOT-ARGS...
  local name=$1 text=$2
  shift 2
  if "$PLOT" "$@" >"$WORK/err.txt" 2>&1; then fail "$name: exit 0"; elif grep -qF -- "$text" "$WORK/err.txt"; then
    pass "$name: $(tail -1 "$WORK/err.txt")"; else fail "$name: $(cat "$WORK/err.txt")"; fi
}
echo "not json" >"$WORK/bad.jsonl"
echo '{"event":"other"}' >"$WORK/empty.jsonl"
check_error "not a metrics file" "not a JSON line" "$WORK/bad.jsonl" -o "$WORK/x.png"
check_error "no records" "holds no step or epoch records" "$WORK/empty.jsonl" -o "$WORK/x.png"
check_error "missing file" "no such file" "$WORK/none.jsonl" -o "$WORK/x.png"
check_error "labels mismatch" "--labels names 1 runs, but 2" "$WORK/a.jsonl" "$WORK/b.jsonl" --labels x
check_error "samples without a summary" "use --x steps" "$WORK/partial.jsonl" --x samples -o "$WORK/x.png"
check_error "-o a directory" "is a directory: give a file path" "$WORK/a.jsonl" -o "$WORK"

# -o not a regular file (root: device nodes of our own, never the real /dev/null): written
# through into a device, nothing put beside it; /dev/full said; a FIFO without a reader
# refused at once, one with a reader gets the PNG.
if [[ $(id -u) -eq 0 ]]; then
  dev=$WORK/dev
  mkdir "$dev" && mknod "$dev/null" c 1 3 && mknod "$dev/full" c 1 7 && mkfifo "$dev/fifo"
fi
if [[ $(id -u) -eq 0 ]] && ! (: >"$dev/null") 2>/dev/null; then
  echo "skipped: device nodes cannot be opened in $WORK (a file system mounted nodev)"
elif [[ $(id -u) -eq 0 ]]; then
  expect_ok "-o a device like /dev/null" "$PLOT" "$WORK/a.jsonl" -o "$dev/null"
  check_error "-o /dev/full" "-o $dev/full: No space left on device" "$WORK/a.jsonl" -o "$dev/full"
  check_error "-o a FIFO without a reader" "is a FIFO with no reader" "$WORK/a.jsonl" -o "$dev/fifo"
  timeout 60 cat "$dev/fifo" >"$WORK/from-fifo.png" &
  expect_ok "-o a FIFO with a reader" "$PLOT" "$WORK/a.jsonl" -o "$dev/fifo"
  wait
  [[ $(head -c 4 "$WORK/from-fifo.png" | od -An -c | tr -d ' ') == '211PNG' ]] &&
    pass "the FIFO's reader got the PNG" || fail "the FIFO's reader got no PNG"
  [[ $(stat -c '%F %t:%T' "$dev/null") == "character special file 1:3" &&
    $(stat -c '%F %t:%T' "$dev/full") == "character special file 1:7" &&
    $(stat -c %F "$dev/fifo") == fifo && $(ls "$dev" | wc -l) -eq 3 ]] &&
    pass "the nodes intact, nothing written beside them" || fail "the nodes changed: $(ls -l "$dev")"
else
  echo "skipped: the device-node checks need root (mknod)"
fi
finish
