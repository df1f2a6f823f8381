#!/usr/bin/env bash
# trace.sh - --trace writes one valid Chrome-trace JSON for all ranks over --trace-steps, with
# read, copy, forward, backward, each bucket's all-reduce and the optimizer; an interrupted run
# leaves no partial file.
source "$(dirname "$0")/lib.sh"

"$DDTRAIN" synth -o "$WORK/d.h5" --rows 4096 --features 64 --classes 4 --seed 4 >/dev/null
ranks 2 train --data "$WORK/d.h5" --model 64-256-relu-256-relu-4 --global-batch 64 --micro-batch 16 \
  --epochs 1 --log-every 0 --bucket-size 64KiB --trace "$WORK/t.json" --trace-steps 5:8 \
  >"$WORK/t.log" 2>&1 || { fail "training with --trace"; tail -3 "$WORK/t.log"; }
$PY - "$WORK/t.json" <<'PY' && pass "trace: valid JSON, every rank, steps 5-8 only, every kind of event" || fail "trace content"
import json, sys
d = json.load(open(sys.argv[1]))
x = [e for e in d["traceEvents"] if e["ph"] == "X"]
assert {e["pid"] for e in x} == {1, 2}, {e["pid"] for e in x}
assert {e["args"]["step"] for e in x} == {5, 6, 7, 8}
names = {e["name"].split(" ")[0] for e in x}
for want in ("read", "copy", "forward", "backward", "all-reduce", "optimizer"):
    assert want in names, (want, names)
meta = [e for e in d["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"]
assert {"main", "reader", "communication"} <= {e["args"]["name"] for e in meta}
PY
expect_ok "trace summary" $PY "$HERE/../../bench/trace-summary" "$WORK/t.json"
cat "$WORK/out.txt"
expect_ok "trace summary --help" $PY "$HERE/../../bench/trace-summary" --help
echo '{"traceEvents": 3' >"$WORK/broken.json"
if ! $PY "$HERE/../../bench/trace-summary" "$WORK/broken.json" >"$WORK/out.txt" 2>&1 &&
  grep -q "broken.json: not a readable ddtrain trace" "$WORK/out.txt"; then
  pass "trace summary of a broken file: refused, naming it"
else
  fail "trace summary of a broken file: $(head -3 "$WORK/out.txt")"
fi

# Interrupted before the window ends (stopped at step 3 of a 5:8 window): no trace file.
ranks 2 train --data "$WORK/d.h5" --model 64-16-relu-4 --global-batch 64 --epochs 1 --log-every 0 \
  --trace "$WORK/u.json" --trace-steps 5:8 --checkpoint-dir "$WORK/c" --stop-after 3 >/dev/null 2>&1
[[ ! -e $WORK/u.json ]] || $PY -c "import json; json.load(open('$WORK/u.json'))" &&
  pass "a run stopped before the window leaves no partial trace" || fail "partial trace left"
grep -q '\.tmp' <<<"$(ls "$WORK")" && fail "temporary trace file left" || pass "no temporary file left"
finish
