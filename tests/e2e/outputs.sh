#!/usr/bin/env bash
# outputs.sh - nothing ddtrain writes ever lands on what it reads: --save, --metrics, --trace,
# --checkpoint-dir and --tensorboard against --data, --eval-data and --init, and convert's -o against its
# IDX inputs, compared by file identity under every spelling (the same path, ./, a detour
# through .., an absolute path, a symbolic link, a hard link, a shard of a glob). Each is
# refused on every rank (exit 2) before anything is written, and the input is unchanged.
# --metrics adds to an existing file. On a full disk (a small tmpfs; needs root), every
# writer ends with "No space left on device" naming the file, no crash, no temporary file,
# and the previous model or checkpoint intact.
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
"$DDTRAIN" train --help | grep -q -- "--metrics.*kept if it exists" &&
  pass "--help says --metrics keeps and adds to the file" || fail "--help text for --metrics"

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
