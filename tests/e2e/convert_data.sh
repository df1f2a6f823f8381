#!/usr/bin/env bash
# convert_data.sh - the data formats beyond flat features: `convert images` on a folder of real
# PNG and JPEG files made here (grey, RGB, palette, alpha, 16-bit, JPEG grey/colour, a
# subfolder, other files), checked value for value against libjpeg's own djpeg and a numpy
# bilinear reference; a corrupt file refused with nothing written, then left out with
# --skip-bad; train/validation split and shards; training on the result and on a plain
# h5py file without num_classes; `convert idx --image-shaped` with class names; `convert text`
# and `convert tokens` (nanoGPT and llm.c files) against their sources, with their errors.
source "$(dirname "$0")/lib.sh"

command -v cjpeg >/dev/null && command -v djpeg >/dev/null || {
  echo "skipped: cjpeg/djpeg missing (launch/install-deps.sh test installs libjpeg-turbo-progs)"
  exit 77
}

# ---- an image folder ------------------------------------------------------------------------
$PY - "$WORK/imgs" <<'PY' || fail "making the image folder"
import os, struct, subprocess, sys, zlib
root = sys.argv[1]
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
def png(path, w, h, colour, rows, depth=8, palette=None, trns=None):
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
    if palette: out += chunk(b"PLTE", palette)
    if trns: out += chunk(b"tRNS", trns)
    out += chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")
    open(path, "wb").write(out)
for c in ("ant", "bee", "cow"):
    os.makedirs(f"{root}/{c}", exist_ok=True)
os.makedirs(f"{root}/bee/more", exist_ok=True)
for i in range(4):  # RGB 6x4
    png(f"{root}/ant/rgb{i}.png", 6, 4, 2,
        [b"".join(bytes((x * 40 + i, y * 60, 255 - x * 9)) for x in range(6)) for y in range(4)])
png(f"{root}/ant/rgba.PNG", 6, 4, 6,  # RGBA: alpha dropped
    [b"".join(bytes((x * 30, y * 50, 90, x * 40)) for x in range(6)) for y in range(4)])
png(f"{root}/bee/grey-alpha.png", 6, 4, 4, [b"".join(bytes((x * 40, 200)) for x in range(6)) for y in range(4)])
png(f"{root}/bee/palette.png", 6, 4, 3, [bytes((x + y) % 3 for x in range(6)) for y in range(4)],
    palette=bytes((255, 0, 0, 0, 255, 0, 10, 20, 30)), trns=bytes((0,)))
png(f"{root}/bee/grey16.png", 6, 4, 0,
    [b"".join(struct.pack(">H", x * 10000 + y) for x in range(6)) for y in range(4)], depth=16)
def ppm(path, w, h, pixel):
    open(path, "wb").write(b"P6 %d %d 255\n" % (w, h) +
                           bytes(v for y in range(h) for x in range(w) for v in pixel(x, y)))
ppm(f"{root}/../colour.ppm", 12, 8, lambda x, y: (x * 20, y * 30, 128))
subprocess.run(["cjpeg", "-quality", "95", "-outfile", f"{root}/bee/more/photo.JPG",
                f"{root}/../colour.ppm"], check=True)
subprocess.run(["cjpeg", "-quality", "95", "-grayscale", "-outfile", f"{root}/cow/grey.jpeg",
                f"{root}/../colour.ppm"], check=True)
subprocess.run(["cjpeg", "-quality", "80", "-outfile", f"{root}/cow/second.jpg",
                f"{root}/../colour.ppm"], check=True)
open(f"{root}/cow/readme.txt", "w").write("not an image\n")
PY
# libjpeg's own decoding of the JPEG files, for the reference.
for f in bee/more/photo.JPG cow/grey.jpeg cow/second.jpg; do
  mkdir -p "$(dirname "$WORK/ref/$f")"
  djpeg -outfile "$WORK/ref/$f.pnm" "$WORK/imgs/$f" || fail "djpeg $f"
done

expect_ok "convert images (6x4, shuffled, 2 shards + validation)" "$DDTRAIN" convert images \
  "$WORK/imgs" -o "$WORK/img.h5" --size 4x6 --shards 2 --val-fraction 0.2 --seed 3
grep -q "found 11 images in 3 classes under $WORK/imgs (1 other file ignored)" "$WORK/out.txt" &&
  pass "11 images in 3 classes, the .txt ignored" ||
  fail "convert images: $(head -3 "$WORK/out.txt")"
ls "$WORK"/img-train-0000{0,1}-of-00002.h5 "$WORK/img-val.h5" >/dev/null 2>&1 &&
  pass "OUT-train shards and OUT-val written" || fail "outputs: $(ls "$WORK")"
ls "$WORK"/*.tmp-* >/dev/null 2>&1 && fail "temporary files left behind" || pass "no temporary files left"

# Every row against the reference: the image (PNG values by their definition, JPEG as djpeg
# decodes it), resized as torch's interpolate(bilinear, align_corners=False), in [0, 1].
$PY - "$WORK" <<'PY' && pass "rows equal the reference (PNG exact, JPEG = djpeg, bilinear = torch's)" ||
import glob, h5py, numpy as np, struct, sys, zlib
work = sys.argv[1]
def read_png(path):  # only what this test writes: filter 0, no interlace
    data = open(path, "rb").read()
    pos, idat, meta = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR": meta = struct.unpack(">IIBB", body[:10])
        if kind == b"PLTE": palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        if kind == b"IDAT": idat += body
        pos += 12 + n
    w, h, depth, colour = meta
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, -1)[:, 1:]
    if depth == 16:
        a = raw.reshape(h, w, channels, 2)[..., 0]  # the high byte
    else:
        a = raw.reshape(h, w, channels)
    if colour == 3: a = palette[a[..., 0]]
    if colour in (4, 6): a = a[..., :-1]  # alpha dropped
    return a
def read_pnm(path):
    data = open(path, "rb").read()
    magic, w, h, _, rest = data.split(maxsplit=4)
    c = 3 if magic == b"P6" else 1
    return np.frombuffer(rest, np.uint8).reshape(int(h), int(w), c)
def bilinear(a, oh, ow):  # torch.nn.functional.interpolate(..., "bilinear", align_corners=False)
    a = a.astype(np.float32) / np.float32(255)
    ih, iw = a.shape[:2]
    def taps(o, i):
        s = np.maximum(np.float32(i) / np.float32(o) * (np.arange(o, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
        lo = np.minimum(s.astype(int), i - 1)
        hi = np.minimum(lo + 1, i - 1)
        l = (s - lo).astype(np.float32)
        return lo, hi, np.float32(1) - l, l
    ylo, yhi, y0, y1 = taps(oh, ih)
    xlo, xhi, x0, x1 = taps(ow, iw)
    top = x0[None, :, None] * a[ylo][:, xlo] + x1[None, :, None] * a[ylo][:, xhi]
    bottom = x0[None, :, None] * a[yhi][:, xlo] + x1[None, :, None] * a[yhi][:, xhi]
    return y0[:, None, None] * top + y1[:, None, None] * bottom
files = sorted(p for p in glob.glob(f"{work}/imgs/**/*", recursive=True)
               if p.lower().endswith((".png", ".jpg", ".jpeg")))
refs = []
for p in files:
    a = read_png(p) if p.lower().endswith(".png") else read_pnm(p.replace("/imgs/", "/ref/") + ".pnm")
    if a.shape[2] == 1: a = np.repeat(a, 3, axis=2)
    refs.append(bilinear(a, 4, 6).transpose(2, 0, 1))
refs = np.stack(refs)
names = [f"{work}/img-val.h5"] + sorted(glob.glob(f"{work}/img-train-*.h5"))
rows = np.concatenate([h5py.File(n)["features"][...] for n in names])
labels = np.concatenate([h5py.File(n)["labels"][...] for n in names])
f = h5py.File(names[0])
assert rows.shape == (11, 3, 4, 6), rows.shape
assert f["features"].dtype == np.float32 and labels.dtype == np.int32
assert list(f["labels"].attrs["class_names"]) == ["ant", "bee", "cow"], f["labels"].attrs["class_names"]
assert int(f.attrs["num_classes"]) == 3
assert h5py.File(names[0])["features"].shape[0] == 2  # round(0.2 * 11) validation rows
expected_labels = [0 if "/ant/" in p else 1 if "/bee/" in p else 2 for p in files]
used = set()
for row, label in zip(rows, labels):
    d = np.abs(refs - row[None]).reshape(len(files), -1).max(1)
    k = int(d.argmin())
    assert d[k] < 1e-6, (k, d[k])
    assert expected_labels[k] == label, (files[k], label)
    used.add(k)
assert len(used) == len(files)
# shuffled: not in file order
assert any(int(np.abs(refs - r[None]).reshape(len(files), -1).max(1).argmin()) != i for i, r in enumerate(rows))
PY
  fail "rows differ from the reference"

# All grey -> one channel; the default size is the first image's.
mkdir -p "$WORK/grey/a" "$WORK/grey/b"
cp "$WORK/imgs/bee/grey-alpha.png" "$WORK/grey/a/1.png"
cp "$WORK/imgs/bee/grey16.png" "$WORK/grey/b/2.png"
expect_ok "convert images: all grey" "$DDTRAIN" convert images "$WORK/grey" -o "$WORK/grey.h5"
grep -q "2 images 1x4x6" "$WORK/out.txt" && pass "all grey: 1 channel, the first image's size" ||
  fail "all grey: $(cat "$WORK/out.txt")"

# A corrupt JPEG (truncated), an empty PNG and a text file named .png: listed, refused, nothing written.
head -c 300 "$WORK/imgs/cow/second.jpg" >"$WORK/imgs/cow/truncated.jpg"
: >"$WORK/imgs/ant/empty.png"
echo "not a png" >"$WORK/imgs/bee/text.png"
expect_fail_all_ranks "convert images refuses bad images" 1 1 "3 of 14 images are unreadable or corrupt" \
  -- convert images "$WORK/imgs" -o "$WORK/bad.h5" --size 4x6
for f in cow/truncated.jpg ant/empty.png bee/text.png; do
  grep -q "bad image: $WORK/imgs/$f" "$WORK/err.txt" && pass "bad image named: $f" ||
    fail "bad image not named: $f"
done
ls "$WORK"/bad* >/dev/null 2>&1 && fail "a refused conversion wrote files" || pass "nothing written when refused"
expect_ok "convert images --skip-bad" "$DDTRAIN" convert images "$WORK/imgs" -o "$WORK/skip.h5" \
  --size 8x8 --skip-bad
grep -q "left out 3 unreadable" "$WORK/out.txt" && grep -q "11 images 3x8x8" "$WORK/out.txt" &&
  pass "--skip-bad leaves the 3 out, resizes to 8x8" || fail "--skip-bad: $(cat "$WORK/out.txt")"

# Training on the converted folder (an MLP over 3x4x6 = 72 inputs) and on plain h5py files:
# int64 labels, no num_classes (the model's width decides), image-shaped features.
ranks 2 train --data "$WORK/img-train-*.h5" --eval-data "$WORK/img-val.h5" --model 72-16-relu-3 \
  --global-batch 4 --epochs 2 --log-every 0 >"$WORK/t.txt" 2>&1 &&
  pass "trains on the image folder's shards on 2 ranks" || { fail "training on images"; tail -5 "$WORK/t.txt"; }
$PY - "$WORK" <<'PY'
import h5py, numpy as np, sys
r = np.random.default_rng(1)
with h5py.File(f"{sys.argv[1]}/plain.h5", "w") as f:
    f["features"] = r.random((96, 1, 2, 4), dtype=np.float32)
    f["labels"] = r.integers(0, 3, 96)  # int64, no num_classes
with h5py.File(f"{sys.argv[1]}/plain-bad.h5", "w") as f:
    f["features"] = r.random((96, 8), dtype=np.float32)
    y = r.integers(0, 3, 96).astype(np.uint8); y[50] = 3
    f["labels"] = y
PY
ranks 2 train --data "$WORK/plain.h5" --model 8-8-relu-3 --global-batch 32 --steps 6 --log-every 0 \
  >"$WORK/t.txt" 2>&1 && pass "a plain h5py file (int64 labels, no num_classes) trains" ||
  { fail "plain h5py file"; tail -5 "$WORK/t.txt"; }
expect_fail_all_ranks "a label beyond the model's outputs" 2 1 \
  "plain-bad.h5: row 50 (global row 50): label 3 outside [0, 3) (the file has no num_classes; 3 is the model's output width)" \
  -- train --data "$WORK/plain-bad.h5" --model 8-8-relu-3 --global-batch 32 --steps 6 --no-shuffle

# ---- IDX, image-shaped, with class names ------------------------------------------------------
$PY - "$WORK" <<'PY'
import struct, sys
d = sys.argv[1]
open(f"{d}/fashion-images", "wb").write(struct.pack(">IIII", 0x803, 6, 3, 2) + bytes(range(36)))
open(f"{d}/fashion-labels", "wb").write(struct.pack(">II", 0x801, 6) + bytes([0, 9, 2, 3, 4, 5]))
PY
expect_ok "convert idx --image-shaped" "$DDTRAIN" convert idx "$WORK/fashion-images" \
  "$WORK/fashion-labels" -o "$WORK/idx-img.h5" --image-shaped
expect_ok "convert idx --class-names" "$DDTRAIN" convert idx "$WORK/fashion-images" \
  "$WORK/fashion-labels" -o "$WORK/idx-names.h5" --class-names a,b,c,d,e,f,g,h,i,j,k
$PY - "$WORK" <<'PY' && pass "idx: N x 1 x H x W, Fashion-MNIST's names by default, --class-names" ||
import h5py, numpy as np, sys
d = sys.argv[1]
f = h5py.File(f"{d}/idx-img.h5")
assert f["features"].shape == (6, 1, 3, 2), f["features"].shape
assert np.array_equal(f["features"][...].reshape(-1), np.arange(36, dtype=np.float32) / 255)
assert list(f["labels"].attrs["class_names"])[9] == "Ankle boot" and int(f.attrs["num_classes"]) == 10
g = h5py.File(f"{d}/idx-names.h5")
assert g["features"].shape == (6, 6) and int(g.attrs["num_classes"]) == 11
assert list(g["labels"].attrs["class_names"]) == list("abcdefghijk")
PY
  fail "idx outputs"

# ---- text and token files -----------------------------------------------------------------------
for i in $(seq 1 60); do echo "In the beginning line $i, with some words to read."; done >"$WORK/a.txt"
printf 'caf\xc3\xa9 \x00\xff end' >"$WORK/b.txt"
expect_ok "convert text (2 files, 3 shards, validation tail)" "$DDTRAIN" convert text \
  "$WORK/a.txt" "$WORK/b.txt" -o "$WORK/text.h5" --shards 3 --val-fraction 0.1
$PY - "$WORK" <<'PY' && pass "text: the bytes, in order, split into shards and a held-out tail" ||
import glob, h5py, numpy as np, sys
d = sys.argv[1]
source = open(f"{d}/a.txt", "rb").read() + open(f"{d}/b.txt", "rb").read()
parts = sorted(glob.glob(f"{d}/text-train-*-of-00003.h5")) + [f"{d}/text-val.h5"]
assert len(parts) == 4, parts
ids = np.concatenate([h5py.File(p)["tokens"][...] for p in parts])
assert bytes(ids.astype(np.uint8)) == source and ids.max() == 255
f = h5py.File(parts[-1])
assert f["tokens"].dtype == np.uint16 and int(f["tokens"].attrs["vocab_size"]) == 256
assert len(f["tokens"]) == round(0.1 * len(source))
PY
  fail "text outputs"
expect_ok "info on the text shards" "$DDTRAIN" info "$WORK/text-train-*.h5"
grep -q "kind       tokens: " "$WORK/out.txt" && pass "info shows a token dataset" || fail "info: $(cat "$WORK/out.txt")"
expect_fail_all_ranks "an MLP refuses token data" 1 1 "holds /tokens (a token dataset)" \
  -- train --data "$WORK/text-val.h5" --model 8-8-relu-3 --steps 1

$PY - "$WORK" <<'PY'
import numpy as np, sys
d = sys.argv[1]
r = np.random.default_rng(2)
r.integers(0, 50257, 3000).astype("<u2").tofile(f"{d}/nano.bin")          # nanoGPT prepare.py
header = np.zeros(256, "<i4"); header[:3] = (20240520, 1, 2000)            # llm.c write_datafile
ids = r.integers(0, 50257, 2000).astype("<u2")
open(f"{d}/llmc.bin", "wb").write(header.tobytes() + ids.tobytes())
open(f"{d}/llmc-short.bin", "wb").write(header.tobytes() + ids[:1999].tobytes())
open(f"{d}/odd.bin", "wb").write(b"\x01\x02\x03")
np.array([5, 50257, 7], "<u2").tofile(f"{d}/beyond.bin")
PY
expect_ok "convert tokens (nanoGPT + llm.c)" "$DDTRAIN" convert tokens "$WORK/nano.bin" \
  "$WORK/llmc.bin" -o "$WORK/tok.h5" --shards 2
grep -q "llm.c format (version 1, uint16), 2000 tokens" "$WORK/out.txt" &&
  grep -q "raw uint16 (nanoGPT's format), 3000 tokens" "$WORK/out.txt" &&
  pass "formats told apart by the header" || fail "convert tokens: $(cat "$WORK/out.txt")"
$PY - "$WORK" <<'PY' && pass "tokens: the ids of both files, in order, vocab_size 50257" ||
import h5py, numpy as np, sys
d = sys.argv[1]
ids = np.concatenate([h5py.File(f"{d}/tok-0000{k}-of-00002.h5")["tokens"][...] for k in (0, 1)])
source = np.concatenate([np.fromfile(f"{d}/nano.bin", "<u2"), np.fromfile(f"{d}/llmc.bin", "<u2")[512:]])
assert np.array_equal(ids, source)
assert int(h5py.File(f"{d}/tok-00000-of-00002.h5")["tokens"].attrs["vocab_size"]) == 50257
PY
  fail "token outputs"
expect_fail_all_ranks "llm.c count against the size" 1 1 \
  "llmc-short.bin: the llm.c header declares 2000 tokens (5024 bytes with the 1024-byte header), but the file has 5022 bytes" \
  -- convert tokens "$WORK/llmc-short.bin" -o "$WORK/x.h5"
expect_fail_all_ranks "odd byte count" 1 1 "odd.bin: 3 bytes is not a whole number of uint16 tokens" \
  -- convert tokens "$WORK/odd.bin" -o "$WORK/x.h5"
expect_fail_all_ranks "an id beyond the vocabulary" 1 1 "beyond.bin: token 1 is 50257, not below the vocabulary size 50257" \
  -- convert tokens "$WORK/nano.bin" "$WORK/beyond.bin" -o "$WORK/x.h5" --shards 2
ls "$WORK"/x*.h5 >/dev/null 2>&1 && fail "a failed conversion left files" || pass "failed conversions leave no files"

# ---- outputs never land on inputs; inputs are regular files ------------------------------------
# -o naming one of the images the folder holds (directly, spelled another way, or as the -val
# part) is refused before anything is written, and the images are untouched.
mkdir -p "$WORK/own/a" "$WORK/own/b"
cp "$WORK/imgs/ant/rgb0.png" "$WORK/own/a/img0.png"
cp "$WORK/imgs/ant/rgb1.png" "$WORK/own/b/img1.png"
cp "$WORK/imgs/ant/rgb2.png" "$WORK/own/b/x-val.png"
sum_before=$(md5sum "$WORK"/own/*/*.png)
expect_fail_all_ranks "-o one of the images" 1 2 \
  "-o $WORK/own/a/img0.png is the same file as the input image $WORK/own/a/img0.png" \
  -- convert images "$WORK/own" -o "$WORK/own/a/img0.png" --size 8x8
expect_fail_all_ranks "-o one of the images, spelled another way" 1 2 "is the same file as the input image" \
  -- convert images "$WORK/own" -o "$WORK/own/b/../a/./img0.png" --size 8x8
expect_fail_all_ranks "-o whose validation part is one of the images" 1 2 \
  "-o $WORK/own/b/x-val.png is the same file as the input image" \
  -- convert images "$WORK/own" -o "$WORK/own/b/x.png" --size 8x8 --val-fraction 0.4
[[ "$(md5sum "$WORK"/own/*/*.png)" == "$sum_before" ]] && ! ls "$WORK"/own/*/*.tmp-* >/dev/null 2>&1 &&
  pass "the images are untouched" || fail "an image was overwritten: $(md5sum "$WORK"/own/*/*)"

# Folder entries named like images that are not regular files: a FIFO, links to /dev/zero and
# /dev/urandom, a dangling link, a link loop. Each is a bad image, named, found without being
# opened (a FIFO would block, a device never end); --skip-bad leaves them out. A FIFO not
# named like an image is ignored as any other file. 20 s each: a hang fails as a timeout.
mkfifo "$WORK/own/a/fifo.png" "$WORK/own/a/notes"
ln -s /dev/zero "$WORK/own/a/zero.png"
ln -s /dev/urandom "$WORK/own/b/random.jpg"
ln -s "$WORK/own/none.png" "$WORK/own/b/dangling.png"
ln -s loop2.png "$WORK/own/b/loop1.png"
ln -s loop1.png "$WORK/own/b/loop2.png"
TIMEOUT=20 expect_fail_all_ranks "special files named like images are bad images" 1 1 \
  "6 of 9 images are unreadable or corrupt" -- convert images "$WORK/own" -o "$WORK/special.h5" --size 8x8
for entry in "a/fifo.png: not a regular file but a FIFO" "a/zero.png: not a regular file but a character device" \
  "b/random.jpg: not a regular file but a character device" "b/dangling.png: cannot open: No such file" \
  "b/loop1.png: cannot open: Too many levels of symbolic links"; do
  grep -qF "bad image: $WORK/own/$entry" "$WORK/err.txt" && pass "named: ${entry%%:*}" ||
    fail "not named: $entry"
done
expect_ok "--skip-bad leaves the special files out" timeout 20 "$DDTRAIN" convert images "$WORK/own" \
  -o "$WORK/special.h5" --size 8x8 --skip-bad
grep -q "left out 6 unreadable" "$WORK/out.txt" && grep -q "3 images 3x8x8" "$WORK/out.txt" &&
  grep -q "(1 other file ignored)" "$WORK/out.txt" &&
  pass "3 images kept, the 6 left out, the FIFO not named like an image ignored" ||
  fail "--skip-bad with special files: $(cat "$WORK/out.txt")"

# The other converters' inputs: a FIFO is refused by name, at once (exit 2).
mkfifo "$WORK/fifo.bin"
for form in "tokens $WORK/fifo.bin" "text $WORK/fifo.bin" "idx $WORK/fashion-images $WORK/fifo.bin" \
  "idx $WORK/fifo.bin $WORK/fashion-labels"; do
  # shellcheck disable=SC2086 # the form's words
  TIMEOUT=20 expect_fail_all_ranks "convert ${form%% *} refuses a FIFO" 1 2 \
    "$WORK/fifo.bin: not a regular file but a FIFO" -- convert $form -o "$WORK/x.h5"
done

# ---- what no model can take ---------------------------------------------------------------------
# Vocabularies past the largest a model takes (the model grammar's own limit) are refused; the
# largest is accepted.
expect_fail_all_ranks "--vocab-size beyond any model's" 1 2 \
  "--vocab-size: 16777217 is out of range (must be between 0 and 16777216)" \
  -- convert tokens "$WORK/nano.bin" -o "$WORK/x.h5" --vocab-size 16777217
expect_fail_all_ranks "--vocab-size 1 (fewer than any model takes)" 1 2 \
  "--vocab-size 1: no model takes fewer than 2 tokens" \
  -- convert tokens "$WORK/nano.bin" -o "$WORK/x.h5" --vocab-size 1
: >"$WORK/empty.txt"
expect_fail_all_ranks "an empty text file, named" 1 1 "$WORK/empty.txt: holds no tokens" \
  -- convert text "$WORK/empty.txt" -o "$WORK/x.h5"
expect_ok "--vocab-size 16777216 (the largest a model takes)" "$DDTRAIN" convert tokens \
  "$WORK/nano.bin" -o "$WORK/vocab-max.h5" --vocab-size 16777216
$PY - "$WORK" <<'PY' && pass "a vocabulary of 16777216: int32 ids" || fail "vocab-max.h5"
import h5py, sys
t = h5py.File(f"{sys.argv[1]}/vocab-max.h5")["tokens"]
assert t.dtype == "int32" and int(t.attrs["vocab_size"]) == 16777216
PY
# Rows no model takes (more than 16777216 values per sample): images, IDX items.
start=$SECONDS
expect_fail_all_ranks "--size 16384x16384 refused up front" 1 2 \
  "--size 16384x16384: 268435456 values per channel, and a model takes at most 16777216" \
  -- convert images "$WORK/imgs" -o "$WORK/x.h5" --size 16384x16384
(( SECONDS - start < 10 )) && pass "refused in $((SECONDS - start)) s" || fail "took $((SECONDS - start)) s"
expect_fail_all_ranks "colour images of 3x4096x4096 refused" 1 2 \
  "the images are 3x4096x4096, 50331648 values each, and a model takes at most 16777216" \
  -- convert images "$WORK/imgs" -o "$WORK/x.h5" --size 4096x4096 --skip-bad
$PY - "$WORK" <<'PY'
import struct, sys
# one item of 4097 x 4097 bytes declared; the data is not there (refused before it is read)
open(f"{sys.argv[1]}/huge-images", "wb").write(struct.pack(">IIII", 0x803, 1, 4097, 4097))
open(f"{sys.argv[1]}/huge-labels", "wb").write(struct.pack(">II", 0x801, 1) + b"\0")
PY
expect_fail_all_ranks "IDX items larger than any model takes" 1 2 \
  "huge-images: items of 16785409 values; a model takes 1 to 16777216 values per sample" \
  -- convert idx "$WORK/huge-images" "$WORK/huge-labels" -o "$WORK/x.h5"

# ---- memory: --host-staging-limit bounds a conversion, refused up front with the numbers --------
expect_fail_all_ranks "convert images over --host-staging-limit" 1 2 \
  "convert images needs 35.0 MiB of host memory at once (a block of 1 row of 1x2048x2048 floats 16.0 MiB, the writer's chunks 19.0 MiB), more than --host-staging-limit 20.0 MiB" \
  -- convert images "$WORK/grey" -o "$WORK/x.h5" --size 2048x2048 --host-staging-limit 20MiB
expect_fail_all_ranks "synth over --host-staging-limit" 1 2 \
  "synth needs 3.74 GiB of host memory at once (the 1000 x 1000000 class centres 3.73 GiB" \
  -- synth -o "$WORK/x.h5" --rows 10 --features 1000000 --classes 1000
# What the limit leaves beside writing's buffers bounds each decoded image: one larger is a
# bad image, named (here 8 bytes are left: 3 MiB of HDF5 buffers and 264 bytes of rows and
# chunks for 2 rows of 1x4x4 take the rest).
expect_fail_all_ranks "images larger than the limit leaves" 1 1 "2 of 2 images are unreadable" \
  -- convert images "$WORK/grey" -o "$WORK/x.h5" --size 4x4 --host-staging-limit 3146000
grep -qF "bad image: $WORK/grey/a/1.png: 6 x 4 pixels x 1 channel take 80 bytes decoded, more than the 8 allowed for one image by --host-staging-limit 3.0 MiB" \
  "$WORK/err.txt" && pass "the image and the numbers named" || fail "budget message: $(cat "$WORK/err.txt")"
ls "$WORK"/x*.h5 "$WORK"/*.tmp-* >/dev/null 2>&1 && fail "a refused conversion left files" ||
  pass "refused conversions leave no files"
# Peak memory stays within the limit, over what the program takes converting 8x8 images:
# 1 x 2048 x 2048 rows (16 MiB each), compressed, under a 56 MiB limit (the plan: 51 MiB).
$PY - "$DDTRAIN" "$WORK" <<'PY' && pass "peak RSS within --host-staging-limit" || fail "peak RSS over the limit"
import resource, subprocess, sys
ddtrain, work = sys.argv[1:]
def peak(*args):
    subprocess.run([ddtrain, "convert", "images", f"{work}/grey", "-o", f"{work}/rss.h5", *args],
                   check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child yet
base = peak("--size", "8x8")
big = peak("--size", "2048x2048", "--host-staging-limit", "56MiB", "--compression", "1")
print(f"peak RSS {base} KiB for 8x8, {big} KiB for 2048x2048 (limit 56 MiB)")
assert big - base <= 56 * 1024, (base, big)
PY
finish
