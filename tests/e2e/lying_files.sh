#!/usr/bin/env bash
# lying_files.sh - files that lie about their size or read from elsewhere are refused by train,
# eval and info on every rank, with one message naming the file and the dataset, quickly and in
# little memory: a few-KB file declaring 2^40 rows, chunks never written, contiguous values
# past the end of the file, a virtual dataset whose source is missing, HDF5 external storage
# (/etc/passwd as features) and external links. --allow-external-data lets trusted external
# links through. Model files: a few KB claiming 1M x 1M layers is refused by eval and
# --init; a real model larger than the memory plan is refused before its values are read.
source "$(dirname "$0")/lib.sh"

$PY - "$WORK" <<'PY' || fail "making the test files"
import os, struct, sys
import h5py, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 8)).astype("f4")
y = rng.integers(0, 3, 256).astype("i4")

def root(f):
    f.attrs["num_classes"] = np.int32(3)

with h5py.File(f"{d}/good.h5", "w") as f:
    f.create_dataset("features", data=x, chunks=(32, 8)); f.create_dataset("labels", data=y); root(f)
with h5py.File(f"{d}/huge.h5", "w") as f:              # 2^40 rows declared, nothing written
    f.create_dataset("features", shape=(2**40, 8), dtype="f4", chunks=(1024, 8))
    f.create_dataset("labels", shape=(2**40,), dtype="i4", chunks=(4096,)); root(f)
with h5py.File(f"{d}/partial.h5", "w") as f:           # half the chunks written
    ds = f.create_dataset("features", shape=(256, 8), dtype="f4", chunks=(32, 8))
    ds[:128] = x[:128]
    f.create_dataset("labels", data=y); root(f)
with h5py.File(f"{d}/passwd.h5", "w") as f:            # external storage: /etc/passwd
    rows = os.path.getsize("/etc/passwd") // 32
    f.create_dataset("features", shape=(rows, 8), dtype="f4",
                     external=[("/etc/passwd", 0, rows * 32)])
    f.create_dataset("labels", data=np.zeros(rows, "i4")); root(f)
with h5py.File(f"{d}/link.h5", "w") as f:              # external link to good.h5
    f["features"] = h5py.ExternalLink("good.h5", "/features")
    f.create_dataset("labels", data=y); root(f)
layout = h5py.VirtualLayout(shape=(256, 8), dtype="f4")
layout[:] = h5py.VirtualSource("missing-source.h5", "features", shape=(256, 8))
with h5py.File(f"{d}/virtual.h5", "w") as f:           # virtual, its source missing
    f.create_virtual_dataset("features", layout, fillvalue=0)
    f.create_dataset("labels", data=y); root(f)
# Contiguous values cut off the end, the superblock's end-of-file address told the new length.
with h5py.File(f"{d}/cut.h5", "w", libver="earliest") as f:
    f.create_dataset("labels", data=y, chunks=None); root(f)
    f.create_dataset("features", data=x)
    offset = f["features"].id.get_offset()
data = bytearray(open(f"{d}/cut.h5", "rb").read()[:offset])
struct.pack_into("<Q", data, 40, len(data))
open(f"{d}/cut.h5", "wb").write(data)
# A model file claiming 1M x 1M layers (4 TiB), every layer in shape, no value written.
with h5py.File(f"{d}/claims-4tib.h5", "w") as f:
    f.attrs["model"] = "8-1000000-relu-1000000-3"
    for i, (n_in, n_out) in enumerate([(8, 10**6), (10**6, 10**6), (10**6, 3)]):
        f.create_dataset(f"dense_{i}/weight", shape=(n_out, n_in), dtype="f4",
                         chunks=(min(n_out, 1024), min(n_in, 1024)))
        f.create_dataset(f"dense_{i}/bias", shape=(n_out,), dtype="f4", chunks=(min(n_out, 4096),))
# A real model of 8-4096-4096-3 (67 MB of values, compressed: zeros).
with h5py.File(f"{d}/big-model.h5", "w") as f:
    f.attrs["model"] = "8-4096-relu-4096-3"
    for i, (n_in, n_out) in enumerate([(8, 4096), (4096, 4096), (4096, 3)]):
        f.create_dataset(f"dense_{i}/weight", data=np.zeros((n_out, n_in), "f4"),
                         chunks=(min(n_out, 1024), n_in), compression="gzip")
        f.create_dataset(f"dense_{i}/bias", data=np.zeros(n_out, "f4"))
PY
model=(--model 8-16-relu-3 --global-batch 32 --steps 5 --log-every 0)

# info on the 2^40-row file: refused at once, in little memory (it ran for minutes before).
# Peak RSS from GNU time where it is installed.
measure=()
[[ -x /usr/bin/time ]] && measure=(/usr/bin/time -f "%M" -o "$WORK/rss.txt")
start=$SECONDS
"${measure[@]}" timeout -k 5 60 "$DDTRAIN" info "$WORK/huge.h5" >"$WORK/out.txt" 2>"$WORK/err.txt"
code=$?
rss_kb=$(tail -1 "$WORK/rss.txt" 2>/dev/null || echo 0)
if [[ $code -eq 1 && $((SECONDS - start)) -le 10 && $rss_kb -lt 204800 ]] &&
  grep -qF "$WORK/huge.h5: /features: 1073741824 of its 1073741824 chunks were never written" \
    "$WORK/err.txt"; then
  pass "info on 2^40 declared rows refused in $((SECONDS - start)) s, peak RSS $((rss_kb / 1024)) MiB"
else
  fail "info on 2^40 declared rows: exit $code after $((SECONDS - start)) s, RSS $rss_kb KiB"
  cat "$WORK/err.txt"
fi

for n in 1 2; do
  expect_fail_all_ranks "train on 2^40 unwritten rows, no staging limit, $n rank(s)" "$n" 1 \
    "$WORK/huge.h5: /features: 1073741824 of its 1073741824 chunks were never written" -- \
    train "${model[@]}" --data "$WORK/huge.h5" --host-staging-limit 0
  expect_fail_all_ranks "train on half-written chunks, $n rank(s)" "$n" 1 \
    "$WORK/partial.h5: /features: 4 of its 8 chunks were never written" -- \
    train "${model[@]}" --data "$WORK/partial.h5"
  expect_fail_all_ranks "train on values cut off the file, $n rank(s)" "$n" 1 \
    "$WORK/cut.h5: /features: declares 8192 bytes of values at offset" -- \
    train "${model[@]}" --data "$WORK/cut.h5"
  expect_fail_all_ranks "train on a virtual dataset without its source, $n rank(s)" "$n" 1 \
    "$WORK/virtual.h5: /features: virtual source file 'missing-source.h5'" -- \
    train "${model[@]}" --data "$WORK/virtual.h5"
  expect_fail_all_ranks "train on /etc/passwd through external storage, $n rank(s)" "$n" 1 \
    "$WORK/passwd.h5: /features: its values are stored outside the HDF5 file, in '/etc/passwd'" \
    -- train "${model[@]}" --data "$WORK/passwd.h5"
  expect_fail_all_ranks "train through an external link, $n rank(s)" "$n" 1 \
    "$WORK/link.h5: /features is an external link to /features in 'good.h5'" -- \
    train "${model[@]}" --data "$WORK/link.h5"
done
expect_fail_all_ranks "lying --eval-data" 2 1 "$WORK/partial.h5: /features: 4 of its 8 chunks" \
  -- train "${model[@]}" --data "$WORK/good.h5" --eval-data "$WORK/partial.h5"
expect_fail_all_ranks "info on external storage" 1 1 "in '/etc/passwd'" -- info "$WORK/passwd.h5"

# Trusted external links: allowed when asked, in train, eval and info (the target named
# relative to the linking file's directory, as HDF5 resolves it).
ranks 2 train "${model[@]}" --data "$WORK/link.h5" --allow-external-data \
  --save "$WORK/model.h5" >"$WORK/out.txt" 2>&1 &&
  pass "train through an external link with --allow-external-data" ||
  { fail "train with --allow-external-data"; tail -5 "$WORK/out.txt"; }
expect_fail_all_ranks "eval through an external link" 2 1 "is an external link" -- \
  eval --model-file "$WORK/model.h5" --data "$WORK/link.h5"
expect_ok "eval through an external link with --allow-external-data" \
  ranks 2 eval --model-file "$WORK/model.h5" --data "$WORK/link.h5" --allow-external-data
expect_ok "info with --allow-external-data" "$DDTRAIN" info --allow-external-data "$WORK/link.h5"

# Model files claiming more than they hold, or more than the plan allows.
expect_fail_all_ranks "eval of a model file claiming 1M x 1M layers" 2 1 \
  "$WORK/claims-4tib.h5: dense_0/weight: 977 of its 977 chunks were never written" -- \
  eval --model-file "$WORK/claims-4tib.h5" --data "$WORK/good.h5"
expect_fail_all_ranks "--init from a model file claiming 1M x 1M layers" 2 1 \
  "$WORK/claims-4tib.h5: dense_0/weight" -- train "${model[@]}" --model 8-1000000-relu-1000000-3 \
  --init "$WORK/claims-4tib.h5" --data "$WORK/good.h5"
start=$SECONDS
"${measure[@]}" timeout -k 5 60 "$DDTRAIN" train --data "$WORK/good.h5" --global-batch 32 \
  --steps 1 --init "$WORK/big-model.h5" --device-memory-limit 64MiB >"$WORK/out.txt" \
  2>"$WORK/err.txt"
code=$?
rss_kb=$(tail -1 "$WORK/rss.txt" 2>/dev/null || echo 0)
if [[ $code -eq 1 && $rss_kb -lt 61440 ]] && grep -q "the memory plan needs" "$WORK/err.txt"; then
  pass "--init of a 67 MB model over --device-memory-limit 64MiB: refused by the plan, values" \
    "unread (peak RSS $((rss_kb / 1024)) MiB)"
else
  fail "--init over the memory limit: exit $code, RSS $rss_kb KiB"
  cat "$WORK/err.txt"
fi

# Nothing given to ddtrain was changed by any of this.
sum_before=$(md5sum "$WORK"/huge.h5 "$WORK"/passwd.h5 "$WORK"/link.h5 "$WORK"/good.h5 /etc/passwd)
ranks 2 train "${model[@]}" --data "$WORK/passwd.h5" >/dev/null 2>&1
[[ "$(md5sum "$WORK"/huge.h5 "$WORK"/passwd.h5 "$WORK"/link.h5 "$WORK"/good.h5 /etc/passwd)" == \
  "$sum_before" ]] && pass "input files unchanged" || fail "an input file changed"
finish
