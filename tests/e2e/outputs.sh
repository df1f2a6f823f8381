#!/usr/bin/env bash
# outputs.sh - nothing ddtrain writes ever lands on what it reads: --save, --metrics, --trace,
# --checkpoint-dir and --tensorboard against --data, --eval-data and --init, and convert's -o against its
# IDX inputs, compared by file identity under every spelling (the same path, ./, a detour
# through .., an absolute path, a symbolic link, a hard link, a shard of a glob). Each is
# refused on every rank (exit 2) before anything is written, and the input is unchanged.
# --metrics adds to an existing file. On a full disk (a small tmpfs; needs root), every
# writer ends with "No space left on device" naming the file, no crash, no temporary file,
# and the previous model or checkpoint intact.
# Outputs that are not regular files (root: device nodes of our own made with mknod, never the
# real /dev/null): every writer (--save, --metrics, --trace, --checkpoint-dir, --tensorboard,
# synth -o, convert idx/images/text/tokens -o, launch/export-hf.py, the bench scripts' --csv
# through bench/project and bench/vs-pytorch) writes through into a
# character device like /dev/null and never replaces it; /dev/full is "No space left on
# device" before training, exit 1 on every rank; a FIFO with no reader is refused at once
# (no hang), and one with a reader gets the whole file; a FIFO or device where a directory
# goes, and several files named after a device (--shards, --val-fraction), are refused.
source "$(dirname "$0")/lib.sh"

cd "$WORK" || exit 1
"$DDTRAIN" synth -o d.h5 --rows 1024 --features 8 --classes 3 --seed 1 >/dev/null
"$DDTRAIN" synth -o e.h5 --rows 256 --features 8 --classes 3 --seed 2 >/dev/null
"$DDTRAIN" synth -o shard.h5 --rows 1024 --features 8 --classes 3 --shards 2 >/dev/null
mkdir -p sub ckpt
ln -s d.h5 link.h5
ln d.h5 hard.h5
model=(--model 8-16-relu-3 --global-batch 64 --steps 3 --log-every 0)
"$DDTRAIN" train --data d.h5 "${model[@]}" --save init.h5 >/dev/null 2>&1 || fail "making init.h5"
cp d.h5 ckpt/inside.h5
cp init.h5 ckpt/init.h5
before=$(md5sum d.h5 e.h5 init.h5 shard-00001-of-00002.h5 ckpt/inside.h5 ckpt/init.h5)

refused() { # NAME TEXT -- TRAIN ARGS...
  local name=$1 text=$2
  shift 3
  for n in 1 2; do
    expect_fail_all_ranks "$name, $n rank(s)" "$n" 2 "$text" -- train "${model[@]}" "$@"
  done
}
same="is the same file as the input"
refused "--save onto --data" "--save d.h5 $same --data" -- --data d.h5 --save d.h5
refused "--save ./d.h5" "$same --data" -- --data d.h5 --save ./d.h5
refused "--save sub/../d.h5" "$same --data" -- --data d.h5 --save sub/../d.h5
refused "--save by absolute path" "$same --data" -- --data d.h5 --save "$WORK/d.h5"
refused "--save onto a symlink to --data" "$same --data" -- --data d.h5 --save link.h5
refused "--save onto a hard link of --data" "$same --data" -- --data d.h5 --save hard.h5
refused "--save onto a shard of a --data glob" "$same --data" -- --data 'shard-*.h5' \
  --save shard-00001-of-00002.h5
refused "--save onto --eval-data" "$same --eval-data" -- --data d.h5 --eval-data e.h5 --save e.h5
refused "--save onto --init" "$same --init" -- --data d.h5 --init init.h5 --save init.h5
refused "--metrics onto --data" "--metrics d.h5 $same --data" -- --data d.h5 --metrics d.h5
refused "--metrics onto --eval-data (symlink)" "$same --eval-data" -- --data 'shard-*.h5' \
  --eval-data link.h5 --metrics d.h5
refused "--trace onto --data" "--trace ./d.h5 $same --data" -- --data d.h5 --trace ./d.h5
refused "--checkpoint-dir holding --data" "--checkpoint-dir ckpt holds the input --data" -- \
  --data ckpt/inside.h5 --checkpoint-dir ckpt
refused "--checkpoint-dir spelled ./ckpt/ holding --init" "holds the input --init" -- \
  --data d.h5 --init "$WORK/ckpt/../ckpt/init.h5" --checkpoint-dir ./ckpt/
refused "--tensorboard holding --eval-data" "--tensorboard ckpt/. holds the input --eval-data" -- \
  --data d.h5 --eval-data ckpt/inside.h5 --tensorboard ckpt/.
refused "--save and --metrics the same file" "are the same file" -- --data d.h5 \
  --save init.h5 --metrics ./init.h5
refused "--save and --trace named alike" "both name" -- --data d.h5 --save out.json \
  --trace out.json

# convert -o onto its own inputs (the IMAGES file).
printf '\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02\x03\x04\x05\x06\x07\x08' >img.idx
printf '\x00\x00\x08\x01\x00\x00\x00\x02\x00\x01' >lab.idx
idx_before=$(md5sum img.idx lab.idx)
expect_fail_all_ranks "convert -o onto IMAGES" 1 2 "-o img.idx is the same file as the input IMAGES" \
  -- convert idx img.idx lab.idx -o img.idx
expect_fail_all_ranks "convert -o onto LABELS (./)" 1 2 "is the same file as the input LABELS" \
  -- convert idx img.idx lab.idx -o ./lab.idx
[[ "$(md5sum img.idx lab.idx)" == "$idx_before" ]] && pass "convert's inputs unchanged" ||
  fail "convert changed its input"
[[ "$(md5sum d.h5 e.h5 init.h5 shard-00001-of-00002.h5 ckpt/inside.h5 ckpt/init.h5)" == "$before" ]] &&
  pass "every input unchanged after all the refusals" || fail "an input changed"

# --metrics adds to an existing file, as its help says.
echo '{"event":"note","text":"kept"}' >run.jsonl
ranks 2 train --data d.h5 "${model[@]}" --metrics run.jsonl >/dev/null 2>&1 || fail "metrics run"
ranks 1 train --data d.h5 "${model[@]}" --metrics run.jsonl >/dev/null 2>&1 || fail "metrics run 2"
[[ $(head -1 run.jsonl) == '{"event":"note","text":"kept"}' && $(grep -c '"event":"summary"' run.jsonl) -eq 2 ]] &&
  pass "--metrics appends: the old line kept, two runs' summaries after it" ||
  fail "--metrics did not append: $(head -c 200 run.jsonl)"
grep -q -- "--metrics.*kept if it exists" <<<"$("$DDTRAIN" train --help)" &&
  pass "--help says --metrics keeps and adds to the file" || fail "--help text for --metrics"

# ---- outputs that are not regular files (root: mknod) ------------------------------------
special_outputs() {
  local dev=$WORK/dev
  export TMPDIR=$WORK/tmp # where ddtrain writes a whole file before copying it into a stream
  mkdir -p "$dev" "$TMPDIR"
  make_nodes() {
    rm -rf "$dev" && mkdir "$dev" && mknod "$dev/null" c 1 3 && mknod "$dev/full" c 1 7 &&
      mkfifo "$dev/fifo"
  }
  # intact NAME: the nodes are what they were, nothing was written beside them, no temporary
  # is left in $TMPDIR; then fresh nodes for the next case (the old code replaced them).
  intact() {
    local problems=""
    [[ $(stat -c '%F %t:%T' "$dev/null" 2>&1) == "character special file 1:3" ]] ||
      problems+=" null is now: $(stat -c %F "$dev/null" 2>&1);"
    [[ $(stat -c '%F %t:%T' "$dev/full" 2>&1) == "character special file 1:7" ]] ||
      problems+=" full is now: $(stat -c %F "$dev/full" 2>&1);"
    [[ $(stat -c '%F' "$dev/fifo" 2>&1) == "fifo" ]] || problems+=" fifo is now: $(stat -c %F "$dev/fifo" 2>&1);"
    local beside
    beside=$(ls -A "$dev" | grep -v '^\(null\|full\|fifo\)$' | tr '\n' ' ')
    [[ -z $beside ]] || problems+=" written beside them: $beside;"
    [[ -z $(ls -A "$TMPDIR" | grep '^\(ddtrain\|bench-output\)-.*\.tmp$') ]] || problems+=" temporaries left in \$TMPDIR;"
    if [[ -z $problems ]]; then pass "$1: the nodes intact, nothing left"; else fail "$1:$problems"; fi
    make_nodes
  }
  # before_training: the last expect_fail_all_ranks ended at set-up, not after training.
  before_training() {
    if grep -q "^done:" "$WORK/out.txt"; then fail "$1: refused only after training"; else
      pass "$1: refused at set-up, before training"; fi
  }
  # read_fifo OUT: a reader of the FIFO into OUT, bounded (the old code never opened it).
  read_fifo() { timeout 60 cat "$dev/fifo" >"$1" & }
  make_nodes
  if ! (: >"$dev/null") 2>/dev/null; then
    echo "skipped: device nodes cannot be opened in $WORK (a file system mounted nodev)"
    return
  fi

  # train: every output into /dev/null at once, on 1 and 2 ranks.
  for n in 1 2; do
    expect_ok "--save, --metrics and --trace into a device like /dev/null, $n rank(s)" \
      ranks "$n" train --data d.h5 "${model[@]}" --save "$dev/null" --metrics "$dev/null" \
      --trace "$dev/null" --trace-steps 1:2
    intact "train into /dev/null, $n rank(s)"
  done
  local what
  for what in --save --metrics --trace; do
    expect_ok "$what alone into a device like /dev/null, 2 ranks" \
      ranks 2 train --data d.h5 "${model[@]}" "$what" "$dev/null"
    intact "$what /dev/null"
    expect_fail_all_ranks "$what into /dev/full, 2 ranks" 2 1 \
      "$what $dev/full (a character device): cannot write: No space left on device" -- \
      train --data d.h5 "${model[@]}" "$what" "$dev/full"
    before_training "$what /dev/full"
    intact "$what /dev/full"
    expect_fail_all_ranks "$what into a FIFO without a reader, 2 ranks" 2 1 \
      "$what $dev/fifo is a FIFO with no reader" -- train --data d.h5 "${model[@]}" "$what" "$dev/fifo"
    intact "$what FIFO without a reader"
  done
  read_fifo "$WORK/from-fifo.h5"
  expect_ok "--save into a FIFO with a reader, 2 ranks" \
    ranks 2 train --data d.h5 "${model[@]}" --save "$dev/fifo"
  wait
  expect_ok "the model read from the FIFO is whole (eval loads it)" \
    "$DDTRAIN" eval --model-file "$WORK/from-fifo.h5" --data d.h5
  intact "--save FIFO"
  read_fifo "$WORK/from-fifo.jsonl"
  expect_ok "--metrics into a FIFO with a reader" \
    ranks 1 train --data d.h5 "${model[@]}" --metrics "$dev/fifo" --metrics-every 1
  wait
  [[ $(grep -c '"event":"step"' "$WORK/from-fifo.jsonl") -eq 3 && $(grep -c '"event":"summary"' "$WORK/from-fifo.jsonl") -eq 1 ]] &&
    pass "the FIFO's reader got every --metrics record" || fail "--metrics through a FIFO: $(head -c 300 "$WORK/from-fifo.jsonl")"
  intact "--metrics FIFO"
  expect_fail_all_ranks "--checkpoint-dir a device, 2 ranks" 2 1 \
    "--checkpoint-dir $dev/null is not a directory but a character device" -- \
    train --data d.h5 "${model[@]}" --checkpoint-dir "$dev/null"
  intact "--checkpoint-dir /dev/null"
  expect_fail_all_ranks "--tensorboard a FIFO, 2 ranks" 2 1 \
    "--tensorboard $dev/fifo is not a directory but a FIFO" -- \
    train --data d.h5 "${model[@]}" --tensorboard "$dev/fifo"
  intact "--tensorboard FIFO"

  # synth and convert -o.
  printf 'some text to make tokens of\n%.0s' {1..40} >text.txt
  $PY -c 'import numpy as np; np.arange(3000, dtype="<u2").tofile("nano.bin")'
  mkdir -p imgs/a imgs/b
  $PY - <<'PY'
import struct, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
for i, name in enumerate(["imgs/a/0.png", "imgs/a/1.png", "imgs/b/0.png", "imgs/b/1.png"]):
    rows = b"".join(b"\0" + bytes((x * 30 + i) % 256 for x in range(4)) for y in range(4))
    open(name, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PY
  local -a forms=("synth --rows 100 --features 4 --classes 2" "convert idx img.idx lab.idx"
    "convert images imgs" "convert text text.txt" "convert tokens nano.bin")
  local form
  for form in "${forms[@]}"; do
    # shellcheck disable=SC2086
    expect_ok "$form -o a device like /dev/null" "$DDTRAIN" $form -o "$dev/null"
    intact "$form -o /dev/null"
    # shellcheck disable=SC2086
    expect_fail_all_ranks "$form -o /dev/full" 1 1 "-o $dev/full (a character device): cannot write: No space left on device" -- \
      $form -o "$dev/full"
    intact "$form -o /dev/full"
  done
  expect_fail_all_ranks "synth -o a FIFO without a reader, 2 ranks" 2 1 "-o $dev/fifo is a FIFO with no reader" -- \
    synth --rows 100 --features 4 --classes 2 -o "$dev/fifo"
  intact "synth -o FIFO without a reader"
  expect_fail_all_ranks "synth --shards 2 -o a device, 2 ranks" 2 2 "-o $dev/null is a character device: it takes one file" -- \
    synth --rows 100 --features 4 --classes 2 --shards 2 -o "$dev/null"
  intact "synth --shards 2 -o /dev/null"
  expect_fail_all_ranks "convert text --val-fraction -o a device" 1 2 "-o $dev/null is a character device: it takes one file" -- \
    convert text text.txt --val-fraction 0.1 -o "$dev/null"
  intact "convert --val-fraction -o /dev/null"
  read_fifo "$WORK/from-fifo-text.h5"
  expect_ok "convert text -o a FIFO with a reader" "$DDTRAIN" convert text text.txt -o "$dev/fifo"
  wait
  "$DDTRAIN" info "$WORK/from-fifo-text.h5" >/dev/null 2>&1 && pass "the dataset read from the FIFO is whole" ||
    fail "convert text through a FIFO: the reader's file is not a dataset"
  intact "convert -o FIFO"

  # launch/export-hf.py: OUT_DIR a device, or a device where it would write a file.
  if $PY -c 'import h5py, numpy' 2>/dev/null; then
    "$DDTRAIN" convert text text.txt -o ids.h5 >/dev/null &&
      "$DDTRAIN" train --data ids.h5 --model "gpt(layers=1,heads=2,width=16,context=16,vocab=256)" \
        --global-batch 8 --steps 1 --log-every 0 --save gpt.h5 >/dev/null 2>&1 || fail "a gpt model to export"
    local export_hf=$HERE/../../launch/export-hf.py
    $PY "$export_hf" gpt.h5 "$dev/null" >"$WORK/hf.log" 2>&1
    [[ $? -eq 1 ]] && grep -q "export-hf: $dev/null is not a directory but a character device" "$WORK/hf.log" &&
      pass "export-hf.py OUT_DIR a device: refused, naming it" || fail "export-hf.py into a device: $(tail -1 "$WORK/hf.log")"
    intact "export-hf.py OUT_DIR /dev/null"
    mkdir -p hf && mknod hf/model.safetensors c 1 3
    $PY "$export_hf" gpt.h5 hf >"$WORK/hf.log" 2>&1
    [[ $? -eq 1 && $(stat -c '%F %t:%T' hf/model.safetensors) == "character special file 1:3" ]] &&
      grep -q "hf/model.safetensors is a character device" "$WORK/hf.log" &&
      pass "export-hf.py: a device node in OUT_DIR is refused and kept" ||
      fail "export-hf.py replaced a device node in OUT_DIR: $(stat -c %F hf/model.safetensors); $(tail -1 "$WORK/hf.log")"
    rm -rf hf
  else
    echo "skipped: export-hf.py checks (python3 lacks h5py or numpy)"
  fi
  # The bench scripts' --csv/--png (bench/outputs.py), through bench/project, which is quick.
  local project=("$PY" "$HERE/../../bench/project" --compute-ms 1 --params 1000 --overlap 0.5 --no-plot)
  expect_ok "bench/project --csv a device like /dev/null" "${project[@]}" --csv "$dev/null"
  intact "bench/project --csv /dev/null"
  "${project[@]}" --csv "$dev/full" >"$WORK/project.log" 2>&1
  [[ $? -eq 1 ]] && grep -q "project: --csv $dev/full: cannot write: No space left on device" "$WORK/project.log" &&
    ! grep -q "^written" "$WORK/project.log" && pass "bench/project --csv /dev/full: said before the work" ||
    fail "bench/project --csv /dev/full: $(tail -1 "$WORK/project.log")"
  intact "bench/project --csv /dev/full"
  read_fifo "$WORK/from-fifo.csv"
  expect_ok "bench/project --csv a FIFO with a reader" "${project[@]}" --csv "$dev/fifo"
  wait
  [[ $(head -1 "$WORK/from-fifo.csv") == kind,scenario,* ]] && pass "the FIFO's reader got the CSV" ||
    fail "bench/project through a FIFO: $(head -c 100 "$WORK/from-fifo.csv")"
  intact "bench/project --csv FIFO"
  if $PY -c 'import torch, h5py' 2>/dev/null; then
    DDTRAIN=$DDTRAIN "$HERE/../../bench/vs-pytorch" --csv "$dev/null" >"$WORK/vs.log" 2>&1
    [[ $? -eq 2 ]] && grep -q "vs-pytorch: --csv $dev/null: is a character device: it takes one file" "$WORK/vs.log" &&
      pass "bench/vs-pytorch --csv a device: refused (its -accuracy and -gpu files would go beside it)" ||
      fail "bench/vs-pytorch --csv /dev/null: $(tail -1 "$WORK/vs.log")"
    intact "bench/vs-pytorch --csv /dev/null"
  fi
  unset TMPDIR
}
if [[ $(id -u) -eq 0 ]]; then
  special_outputs
else
  echo "skipped: the device-node checks need root (mknod)"
fi

# A full disk: a 1 MiB tmpfs.
full=$WORK/full
mkdir -p "$full"
if [[ $(id -u) -ne 0 ]] || ! mount -t tmpfs -o size=1m tmpfs "$full" 2>/dev/null; then
  echo "skipped: the full-disk checks need root to mount a small tmpfs"
  finish
  exit
fi
trap 'umount "$full" 2>/dev/null; rm -rf "$WORK"' EXIT
big=(--model 8-512-relu-512-relu-3 --global-batch 64 --log-every 0) # 1.1 MiB of weights
no_crash() { # NAME LOG CODE: exit 1, the words, no signal, no temporary file left
  local name=$1 log=$2 code=$3
  if [[ $code -eq 1 ]] && grep -q "No space left on device" "$log" && ! grep -qi "segmentation\|signal" "$log" &&
    [[ -z $(ls "$full" | grep '\.tmp-') ]]; then
    pass "$name: exit 1, 'No space left on device' ($(grep -o "$full/[^:]*" "$log" | head -1))"
  else
    fail "$name: exit $code"
    tail -3 "$log" | sed 's/^/    /'
  fi
}
"$DDTRAIN" train --data d.h5 "${model[@]}" --save "$full/small.h5" >/dev/null 2>&1 ||
  fail "a small model fits on the tmpfs"
small_sum=$(md5sum "$full/small.h5")
for n in 1 2; do
  ranks "$n" train --data d.h5 "${big[@]}" --steps 2 --save "$full/small.h5" >"$WORK/full-$n.log" 2>&1
  no_crash "--save on a full disk, $n rank(s)" "$WORK/full-$n.log" $?
done
[[ "$(md5sum "$full/small.h5")" == "$small_sum" ]] && pass "the model already there is intact" ||
  fail "the earlier model was damaged"
rm -f "$full/small.h5"
# Checkpoints: the first fits; then something else fills the disk, and the next cannot.
mkdir -p "$full/ckpt"
ckpt=(--data d.h5 --model 8-64-relu-3 --global-batch 64 --log-every 0 --steps 4
      --checkpoint-dir "$full/ckpt" --checkpoint-every 2)
ranks 2 train "${ckpt[@]}" --stop-after 2 >"$WORK/ckpt-first.log" 2>&1 ||
  { fail "first checkpoint"; tail -3 "$WORK/ckpt-first.log"; }
first=$(ls "$full/ckpt")
fill() { cat /dev/zero >"$full/filler" 2>/dev/null; sync; }
fill
ranks 2 train "${ckpt[@]}" --resume >"$WORK/ckpt.log" 2>&1
no_crash "checkpoint on a full disk, 2 ranks" "$WORK/ckpt.log" $?
[[ -n $first && -f "$full/ckpt/$first" ]] && "$DDTRAIN" eval --model-file "$full/ckpt/$first" \
  --data d.h5 >/dev/null 2>&1 && pass "the previous checkpoint is intact and loads ($first)" ||
  fail "the previous checkpoint is gone or broken"
rm -rf "$full/ckpt"
fill
"$DDTRAIN" synth -o "$full/s.h5" --rows 100000 --features 8 --classes 3 >"$WORK/synth.log" 2>&1
no_crash "synth -o on a full disk" "$WORK/synth.log" $?
fill
ranks 1 train --data d.h5 "${model[@]}" --trace "$full/t.json" --trace-steps 1:2 >"$WORK/trace.log" 2>&1
no_crash "--trace on a full disk" "$WORK/trace.log" $?
fill
ranks 1 train --data d.h5 "${model[@]}" --steps 40 --metrics-every 1 --metrics "$full/m.jsonl" \
  >"$WORK/metrics.log" 2>&1
code=$?
[[ $code -eq 0 ]] && [[ $(grep -c "warning: --metrics $full/m.jsonl: a record could not be written (No space left on device)" "$WORK/metrics.log") -eq 1 ]] &&
  pass "--metrics on a full disk: said once, training finished" ||
  { fail "--metrics on a full disk: exit $code"; tail -3 "$WORK/metrics.log"; }
finish
