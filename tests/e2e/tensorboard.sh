#!/usr/bin/env bash
# tensorboard.sh - --tensorboard DIR: TensorBoard's own reader (EventAccumulator, from the
# tensorboard package launch/install-deps.sh puts in a venv) loads the event files of a
# 2-rank run, and every scalar agrees with the --metrics JSONL of the same run: the step
# records (loss, learning rate, samples/s, gradient norm, time split), each rank's memory and
# limits, the epoch records (evaluation loss and accuracy); the configuration text and the
# custom-scalars layout are there. The files are complete while training still runs; a second
# run adds a new file and leaves the first alone; a bad DIR ends every rank. Without the
# reader (PyPI unreachable) the checks that need it are skipped, visibly.
source "$(dirname "$0")/lib.sh"

VENV=${DDTRAIN_TENSORBOARD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ddtrain/tensorboard-venv}
TBPY=$VENV/bin/python
reader=1
"$TBPY" -c 'import tensorboard' 2>/dev/null || reader=0

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 4096 --features 32 --classes 4 >/dev/null
"$DDTRAIN" synth -o "$WORK/e.h5" --rows 1024 --features 32 --classes 4 >/dev/null
common=(train --data "$WORK/d.h5" --eval-data "$WORK/e.h5" --model 32-64-relu-4
        --global-batch 64 --log-every 0 --device-memory-limit 64MiB)

# A finished run: 2 epochs of 64 steps, a step record every 16 steps.
ranks 2 "${common[@]}" --epochs 2 --metrics-every 16 --metrics "$WORK/m.jsonl" \
  --tensorboard "$WORK/tb/run" >"$WORK/run.log" 2>&1 &&
  pass "2-rank run with --metrics and --tensorboard" ||
  { fail "2-rank run with --tensorboard"; tail -5 "$WORK/run.log"; }
files=("$WORK"/tb/run/events.out.tfevents.*)
[[ ${#files[@]} -eq 1 && $(basename "${files[0]}") =~ ^events\.out\.tfevents\.[0-9]{10}\..+\.[0-9]+\.0$ ]] &&
  pass "one event file, named as TensorFlow names them ($(basename "${files[0]}"))" ||
  fail "event files: ${files[*]}"

# grad_norm is in every step record, positive and finite.
$PY - "$WORK/m.jsonl" <<'PY' && pass "step records carry grad_norm and every rank's memory" || fail "step records"
import json, math, sys
steps = [r for r in map(json.loads, open(sys.argv[1])) if r["event"] == "step"]
assert [r["step"] for r in steps] == list(range(16, 129, 16)), [r["step"] for r in steps]
for r in steps:
    assert r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]), r
    assert len(r["device_bytes_per_rank"]) == 2 and len(r["rss_bytes_per_rank"]) == 2, r
    assert r["device_bytes_per_rank"][0] == r["device_bytes_in_use"], r
PY

# TensorBoard's reader against the JSONL.
check_with_reader() { # EVENT_DIR JSONL
  "$TBPY" - "$1" "$2" <<'PY'
import json, math, sys, warnings
warnings.filterwarnings("ignore")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

records = [json.loads(line) for line in open(sys.argv[2])]
steps = [r for r in records if r["event"] == "step"]
epochs = [r for r in records if r["event"] == "epoch"]
summary = [r for r in records if r["event"] == "summary"][-1]
ranks = summary["ranks"]
accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
accumulator.Reload()
tags = accumulator.Tags()
problems = []

def series(tag):
    if tag not in tags["scalars"]:
        problems.append("no scalar " + tag)
        return {}
    return {e.step: e.value for e in accumulator.Scalars(tag)}

def agree(tag, expected):  # expected: {step: value}; float32 in the file
    got = series(tag)
    if sorted(got) != sorted(expected):
        problems.append(f"{tag}: steps {sorted(got)} != {sorted(expected)}")
        return
    for step, value in expected.items():
        if not math.isclose(got[step], value, rel_tol=1e-6, abs_tol=1e-12):
            problems.append(f"{tag} at step {step}: {got[step]} != {value}")

for tag, key in [("train/loss", "loss"), ("train/learning_rate", "lr"),
                 ("train/samples_per_s", "samples_per_s"), ("train/grad_norm", "grad_norm"),
                 ("time/data_wait_s", "data_wait_s"), ("time/compute_s", "compute_s"),
                 ("time/communication_s", "communication_s"), ("time/optimizer_s", "optimizer_s")]:
    agree(tag, {r["step"]: r[key] for r in steps})
if "allreduce_device_s" in steps[0]:  # GPUs: step times from the device
    agree("time/allreduce_device_s", {r["step"]: r["allreduce_device_s"] for r in steps})
for rank in range(ranks):
    for tag, key in [("device_bytes", "device_bytes_per_rank"),
                     ("staging_bytes", "staging_bytes_per_rank"), ("rss_bytes", "rss_bytes_per_rank")]:
        agree(f"memory/rank{rank}/{tag}", {r["step"]: r[key][rank] for r in steps})
    for tag, key in [("device_limit_bytes", "device_limit_bytes"),
                     ("staging_limit_bytes", "staging_limit_bytes")]:
        agree(f"memory/rank{rank}/{tag}", {r["step"]: summary[key][rank] for r in steps})
epoch_steps, done = {}, 0
for r in epochs:
    done += r["steps"]
    epoch_steps[done] = r
agree("eval/loss", {s: r["eval_loss"] for s, r in epoch_steps.items()})
agree("eval/accuracy", {s: r["eval_accuracy"] for s, r in epoch_steps.items()})
agree("train/epoch_loss", {s: r["train_loss"] for s, r in epoch_steps.items()})

if "config" not in tags["tensors"]:
    problems.append("no text 'config'")
else:
    text = accumulator.Tensors("config")[0].tensor_proto.string_val[0].decode()
    for part in [f"ddtrain train: {ranks} ranks", "    ", "tensorboard", "=> model 32-64-relu-4",
                 f"rank {ranks - 1} of {ranks}"]:
        if part not in text:
            problems.append(f"config text lacks {part!r}")
    try:
        text_tags = accumulator.PluginTagToContent("text")
    except KeyError:
        text_tags = {}
    if "config" not in text_tags:
        problems.append("config is not a text-plugin summary")
layout = layout_pb2.Layout.FromString(
    accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
charts = [c.title for category in layout.category for c in category.chart]
if "device memory in use and its limit" not in charts:
    problems.append(f"layout charts: {charts}")
print(f"{len(tags['scalars'])} scalar tags, {len(steps)} step records, {len(epochs)} epochs")
if problems:
    print("\n".join(problems[:20]))
    sys.exit(1)
PY
}

if [[ $reader -eq 1 ]]; then
  check_with_reader "$WORK/tb/run" "$WORK/m.jsonl" >"$WORK/reader.txt" 2>&1 &&
    pass "TensorBoard's reader: every tag and value agrees with the JSONL ($(tail -1 "$WORK/reader.txt"))" ||
    { fail "TensorBoard's reader disagrees with the JSONL"; cat "$WORK/reader.txt"; }
fi

# While training runs: the step records the JSONL holds are already readable in TensorBoard.
before=$(md5sum "${files[0]}")
mpirun -np 2 --bind-to none "$DDTRAIN" "${common[@]}" --steps 1000000 \
  --metrics-every 50 --metrics "$WORK/live.jsonl" --tensorboard "$WORK/tb/run" \
  >"$WORK/live.log" 2>&1 &
job=$!
for _ in $(seq 200); do # until 3 step records are out (at most 20 s)
  [[ $(grep -c '"event":"step"' "$WORK/live.jsonl" 2>/dev/null) -ge 3 ]] && break
  sleep 0.1
done
if [[ $reader -eq 1 ]]; then
  live=$("$TBPY" - "$WORK/tb/run" "$WORK/live.jsonl" <<'PY' 2>&1
import glob, json, os, sys, warnings
warnings.filterwarnings("ignore")
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
written = [json.loads(l)["step"] for l in open(sys.argv[2]) if '"event":"step"' in l]
newest = max(glob.glob(os.path.join(sys.argv[1], "events.out.tfevents.*")), key=os.path.getmtime)
read = [e.step for e in EventFileLoader(newest).Load()
        if any(v.tag == "train/loss" for v in e.summary.value)]
print(f"{len(read)} step events read, {len(written)} records written before")
sys.exit(0 if written and set(written) <= set(read) else 1)
PY
  ) && running=1 || running=0
  kill -0 $job 2>/dev/null || running=0
  [[ $running -eq 1 ]] && pass "readable while the run goes on ($live)" ||
    fail "not readable while running: $live"
fi
kill -USR1 $job 2>/dev/null # as Slurm's warning: stop at a step boundary, exit 0
wait $job
code=$?
[[ $code -eq 0 ]] && pass "the live run stopped cleanly on SIGUSR1" || fail "live run exit $code"
count=$(ls "$WORK"/tb/run/events.out.tfevents.* | wc -l)
[[ $count -eq 2 && $(md5sum "${files[0]}") == "$before" ]] &&
  pass "a second run into the same directory adds a file and leaves the first untouched" ||
  fail "second run: $count files, first changed: $(md5sum "${files[0]}") vs $before"

# A --tensorboard path that is a file ends every rank with one message.
touch "$WORK/not-a-dir"
expect_fail_all_ranks "--tensorboard on a regular file" 2 1 "is not a directory" -- \
  "${common[@]}" --steps 2 --tensorboard "$WORK/not-a-dir"

if [[ $reader -eq 0 && $FAILED -eq 0 ]]; then
  echo "$PASSED passed, 0 failed"
  echo "skipped: TensorBoard's reader is not installed at $VENV (PyPI was unreachable when" \
    "launch/install-deps.sh test ran); its checks did not run"
  exit 77
fi
finish
