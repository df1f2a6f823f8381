"""craft.py - files for the adversarial probe (tests/probe/adversarial.sh): images (valid,
corrupt, with lying headers), token files (nanoGPT's raw uint16, llm.c's headed ones), IDX
files, HDF5 datasets and model files bent in named ways, bit flips and truncations.

Every function writes only the path it is given. Nothing here reads or writes a device: device
nodes the probe needs are made by the probe itself with mknod inside its own work folder.
"""
import gzip
import io
import os
import struct
import zlib

import h5py
import numpy as np
from PIL import Image

LLMC_MAGIC = 20240520


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---- images ------------------------------------------------------------------------------------

def image_bytes(fmt, width=8, height=8, mode="RGB", seed=0, **save):
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "I;16": 1, "P": 3}[mode]
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16), "I;16")
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
        img = img.convert("P")
    else:
        shape = (height, width) if channels == 1 else (height, width, channels)
        img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_lying(width, height, bit_depth=8, color_type=2, idat=None, interlace=0):
    """A PNG whose IHDR claims width x height, with a small (too short) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    idat = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) +
            png_chunk(b"IEND", b""))


def jpeg_lying(width, height):
    """A valid small JPEG whose SOF0 is patched to claim width x height."""
    data = bytearray(image_bytes("JPEG", 8, 8))
    i = 2
    while i < len(data) - 9:
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        if data[i] == 0xFF:
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            i += 2 + length
        else:
            i += 1
    raise ValueError("no SOF marker")


def flip(data, offset, bit=0):
    data = bytearray(data)
    data[offset % len(data)] ^= 1 << bit
    return bytes(data)


def image_folder(root, per_class=3, classes=("cat", "dog"), size=8, fmt="PNG"):
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            ext = {"PNG": "png", "JPEG": "jpg"}[fmt if i % 3 else "JPEG"]
            actual = "PNG" if ext == "png" else "JPEG"
            write_bytes(os.path.join(root, name, f"img{i}.{ext}"),
                        image_bytes(actual, size, size, seed=k * 100 + i))


# ---- token files -------------------------------------------------------------------------------

def llmc_file(path, ids, version=1, count=None, magic=LLMC_MAGIC):
    header = [0] * 256
    header[0], header[1] = magic, version
    header[2] = len(ids) if count is None else count
    dtype = "<u2" if version == 1 else "<u4"
    write_bytes(path, struct.pack("<256i", *header) + np.asarray(ids, dtype=dtype).tobytes())


def raw_tokens(path, ids, dtype="<u2"):
    write_bytes(path, np.asarray(ids).astype(dtype).tobytes())


# ---- IDX -------------------------------------------------------------------------------------

def idx_file(path, dims, data=None, type_code=0x08, compress=False, claim=None):
    header = struct.pack(">BBBB", 0, 0, type_code, len(dims)) + b"".join(
        struct.pack(">I", d) for d in (claim or dims))
    if data is None:
        data = bytes((np.arange(int(np.prod(dims))) % 256).astype(np.uint8))
    blob = header + data
    write_bytes(path, gzip.compress(blob) if compress else blob)


# ---- HDF5 ------------------------------------------------------------------------------------

def token_dataset(path, kind, n=4000, vocab=256):
    """A /tokens dataset (context 16 models read windows of 17 ids), bent as `kind` says."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, n)
    with h5py.File(path, "w") as f:
        def put(data, dtype="u2", vocab_attr=vocab, **kw):
            d = f.create_dataset("tokens", data=np.asarray(data).astype(dtype), **kw)
            if vocab_attr is not None:
                d.attrs["vocab_size"] = vocab_attr
            return d
        if kind == "good":
            put(ids)
        elif kind == "int32":
            put(ids, "i4")
        elif kind == "int64":
            put(ids, "i8")
        elif kind == "uint32":
            put(ids, "u4")
        elif kind == "uint8":
            put(ids, "u1")
        elif kind == "float32":
            put(ids, "f4")
        elif kind == "2d":
            put(ids.reshape(-1, 4))
        elif kind == "empty":
            put(np.zeros(0))
        elif kind == "one-id":
            put(ids[:1])
        elif kind == "short":
            put(ids[:16])
        elif kind == "exactly-window":
            put(ids[:17])
        elif kind == "id-at-vocab":
            ids[1234] = vocab
            put(ids)
        elif kind == "id-max-u16":
            ids[77] = 65535
            put(ids)
        elif kind == "negative-int32":
            ids = ids.astype("i4")
            ids[55] = -1
            put(ids, "i4")
        elif kind == "no-vocab":
            put(ids, vocab_attr=None)
        elif kind == "vocab-root":
            put(ids, vocab_attr=None)
            f.attrs["vocab_size"] = np.int64(vocab)
        elif kind in ("vocab-0", "vocab-1", "vocab-neg", "vocab-2^40", "vocab-2^31",
                      "vocab-16777217"):
            value = {"vocab-0": 0, "vocab-1": 1, "vocab-neg": -5, "vocab-2^40": 2 ** 40,
                     "vocab-2^31": 2 ** 31, "vocab-16777217": 16777217}[kind]
            put(np.zeros(n) if value < 2 else ids, vocab_attr=np.int64(value))
        elif kind == "vocab-float":
            put(ids, vocab_attr=np.float64(256.5))
        elif kind == "vocab-nan":
            put(ids, vocab_attr=np.float64("nan"))
        elif kind == "vocab-string":
            put(ids, vocab_attr="256")
        elif kind == "vocab-array":
            put(ids, vocab_attr=np.array([256, 512], dtype="i4"))
        elif kind == "vocab-mismatch":
            put(ids % 100, vocab_attr=100)
        elif kind == "chunked-unwritten":
            d = f.create_dataset("tokens", shape=(n,), dtype="u2", chunks=(256,))
            d[:512] = ids[:512]
            d.attrs["vocab_size"] = vocab
        elif kind == "huge-declared":
            d = f.create_dataset("tokens", shape=(2 ** 40,), dtype="u2", chunks=(4096,))
            d.attrs["vocab_size"] = vocab
        elif kind == "huge-maxshape":
            put(ids, chunks=(256,), maxshape=(None,))
        elif kind == "deflate":
            put(ids, chunks=(512,), compression="gzip")
        elif kind == "group":
            g = f.create_group("tokens")
            g.attrs["vocab_size"] = vocab
        elif kind == "scalar":
            d = f.create_dataset("tokens", data=np.uint16(3))
            d.attrs["vocab_size"] = vocab
        elif kind == "with-features":
            put(ids)
            f.create_dataset("features", data=np.zeros((10, 4), "f4"))
            f.create_dataset("labels", data=np.zeros(10, "i4"))
        elif kind == "soft-link":
            d = f.create_dataset("real", data=ids.astype("u2"))
            d.attrs["vocab_size"] = vocab
            f["tokens"] = h5py.SoftLink("/real")
        elif kind == "dangling-soft-link":
            f["tokens"] = h5py.SoftLink("/nowhere")
        elif kind == "external-link":
            f["tokens"] = h5py.ExternalLink("other.h5", "/tokens")
        elif kind == "external-storage":
            raw = os.path.join(os.path.dirname(os.path.abspath(path)), "raw.bin")
            write_bytes(raw, ids.astype("<u2").tobytes())
            d = f.create_dataset("tokens", shape=(n,), dtype="<u2", external=[(raw, 0, 2 * n)])
            d.attrs["vocab_size"] = vocab
        else:
            raise SystemExit(f"craft: unknown token dataset kind {kind}")


def image_dataset(path, n=256, shape=(1, 8, 8), classes=4):
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.random((n,) + shape).astype("f4"), chunks=True)
        f.create_dataset("labels", data=rng.integers(0, classes, n).astype("i4"))
        f.attrs["num_classes"] = np.int32(classes)


def set_model_attr(src, dst, value):
    """A copy of model file src whose root attribute `model` is `value`."""
    data = open(src, "rb").read()
    write_bytes(dst, data)
    with h5py.File(dst, "r+") as f:
        f.attrs["model"] = value


def reshape_model_tensor(src, dst, name, shape, chunks=None):
    """A copy of model file src with tensor `name` replaced by zeros of another shape (chunked
    and never written when `chunks` is given: a huge shape then costs nothing)."""
    write_bytes(dst, open(src, "rb").read())
    with h5py.File(dst, "r+") as f:
        dtype = f[name].dtype
        del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)


def data_regions(path):
    """(offset, size) of every dataset's raw values in an HDF5 file (contiguous or chunked)."""
    regions = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            offset = obj.id.get_offset()
            if offset is not None:
                regions.append((offset, obj.id.get_storage_size()))
                return
            try:
                for k in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(k)
                    regions.append((info.byte_offset, info.size))
            except Exception:
                pass
        f.visititems(visit)
    return sorted(regions)


SIGNATURES = (b"\x89HDF", b"OHDR", b"TREE", b"HEAP", b"GCOL", b"SNOD", b"FRHP", b"BTHD",
              b"BTLF", b"FSHD", b"FSSE", b"OCHK")


def flip_positions(path, metadata_count, data_count, seed):
    """Offsets for bit flips: in the file's metadata (bytes outside every dataset's values:
    most are zero padding HDF5 never reads, so half are spread over the non-zero ones, a quarter
    fall within 48 bytes after a structure's signature -- superblock, object headers, B-trees,
    local and global heaps -- and the rest anywhere in metadata) and in its raw values."""
    blob = open(path, "rb").read()
    size = len(blob)
    in_data = np.zeros(size, bool)
    for offset, length in data_regions(path):
        in_data[offset:offset + length] = True
    values = np.frombuffer(blob, np.uint8)
    meta = np.flatnonzero(~in_data)
    meta_nonzero = np.flatnonzero(~in_data & (values != 0))
    near = np.zeros(size, bool)
    for sig in SIGNATURES:
        at = blob.find(sig)
        while at >= 0:
            near[at:at + 48] = True
            at = blob.find(sig, at + 1)
    meta_near = np.flatnonzero(near & ~in_data)
    data = np.flatnonzero(in_data)
    rng = np.random.default_rng(seed)
    chosen = {}

    def take(pool, count, kind, spread=False):
        pool = np.setdiff1d(pool, np.fromiter(chosen, int, len(chosen)))
        if len(pool) == 0 or count <= 0:
            return
        if spread:
            picked = pool[np.linspace(0, len(pool) - 1, min(count, len(pool))).astype(int)]
        else:
            picked = rng.choice(pool, min(count, len(pool)), replace=False)
        for offset in picked.tolist():
            chosen[int(offset)] = kind
    take(meta_nonzero, metadata_count // 2, "meta", spread=True)
    take(meta_near, metadata_count // 4, "meta")
    take(meta, metadata_count - len(chosen), "meta")
    take(data, data_count, "data")
    return [(kind, offset, int(rng.integers(0, 8))) for offset, kind in sorted(chosen.items())]
