#!/usr/bin/python3
"""h5tool.py - file helpers for ddtrain's end-to-end tests (h5py + numpy).

  make DATASET_KIND OUT.h5      write a small dataset, valid or broken in one named way
  compare A.h5 B.h5 RTOL        model files: same layers, weights equal within RTOL
  check-idx OUT.h5 IMAGES LABELS  converter output equals the IDX source scaled to [0,1]
  check-model M.h5 SPEC         layout readable by h5py (and PyTorch's nn.Linear if present)
"""
import gzip
import struct
import sys

import h5py
import numpy as np


def write(path, features, labels, classes=3, features_dtype=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features, dtype=features_dtype or "f4",
                         chunks=True if np.ndim(features) else None)
        if labels is not None:
            f.create_dataset("labels", data=labels)
        if classes is not None:
            f.attrs["num_classes"] = np.int32(classes)


def make(kind, out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8)).astype("f4")
    y = (rng.integers(0, 3, 256)).astype("i4")
    if kind == "good":
        write(out, x, y)
    elif kind == "not-hdf5":
        open(out, "w").write("this is not an HDF5 file\n")
    elif kind == "no-features":
        with h5py.File(out, "w") as f:
            f.create_dataset("labels", data=y)
            f.attrs["num_classes"] = np.int32(3)
    elif kind == "no-labels":
        write(out, x, None)
    elif kind == "features-rank1":
        write(out, x[:, 0].copy(), y)
    elif kind == "features-float64":
        write(out, x, y, features_dtype="f8")
    elif kind == "labels-out-of-range":
        y2 = y.copy()
        y2[100] = 7
        write(out, x, y2)
    elif kind == "nan":
        x2 = x.copy()
        x2[37, 5] = np.nan
        write(out, x2, y)
    elif kind == "few-rows":
        write(out, x[:20], y[:20])
    elif kind == "width-9":
        write(out, rng.standard_normal((256, 9)).astype("f4"), y)
    elif kind == "rows-mismatch":
        write(out, x, y[:200])
    else:
        sys.exit(f"h5tool: unknown dataset kind {kind}")


def dense_layers(f):
    names = sorted((k for k in f.keys() if k.startswith("dense_")), key=lambda k: int(k[6:]))
    return [(f[k]["weight"][...], f[k]["bias"][...]) for k in names]


def compare(a, b, rtol):
    rtol = float(rtol)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        la, lb = dense_layers(fa), dense_layers(fb)
        if len(la) != len(lb):
            sys.exit(f"{a} has {len(la)} dense layers, {b} has {len(lb)}")
        worst = 0.0
        for i, ((wa, ba), (wb, bb)) in enumerate(zip(la, lb)):
            for name, p, q in (("weight", wa, wb), ("bias", ba, bb)):
                if p.shape != q.shape:
                    sys.exit(f"dense_{i}/{name}: shapes {p.shape} and {q.shape}")
                scale = max(np.abs(q).max(), 1e-12)
                rel = float(np.abs(p - q).max() / scale)
                worst = max(worst, rel)
        print(f"max relative difference {worst:.3g} (tolerance {rtol:g})")
        if worst > rtol:
            sys.exit(1)


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        magic = struct.unpack(">I", f.read(4))[0]
        dims = [struct.unpack(">I", f.read(4))[0] for _ in range(magic & 0xFF)]
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)


def check_idx(out, images, labels):
    x = read_idx(images)
    x = x.reshape(x.shape[0], -1).astype("f4") / 255.0
    y = read_idx(labels).astype("i4")
    with h5py.File(out, "r") as f:
        fx, fy = f["features"][...], f["labels"][...]
        assert fx.dtype == np.float32 and fy.dtype == np.int32, (fx.dtype, fy.dtype)
        assert np.array_equal(fx, x), "features differ from the IDX source"
        assert np.array_equal(fy, y), "labels differ from the IDX source"
        assert int(f.attrs["num_classes"]) == int(y.max()) + 1
    print(f"{out}: {len(y)} rows equal to the IDX source")


def check_model(path, spec):
    with h5py.File(path, "r") as f:
        model = f.attrs["model"]
        model = model.decode() if isinstance(model, bytes) else str(model)
        assert model == spec, f"model attribute {model!r} != {spec!r}"
        widths = [int(t) for t in spec.split("-") if t.isdigit()]
        layers = dense_layers(f)
        assert len(layers) == len(widths) - 1
        for (w, b), fan_in, fan_out in zip(layers, widths, widths[1:]):
            assert w.shape == (fan_out, fan_in) and b.shape == (fan_out,), (w.shape, b.shape)
    try:
        import torch
    except ImportError:
        print("skipped: PyTorch load (python3-torch not installed)")
        return
    with h5py.File(path, "r") as f:
        for (w, b), fan_in, fan_out in zip(dense_layers(f), widths, widths[1:]):
            layer = torch.nn.Linear(fan_in, fan_out)
            layer.load_state_dict({"weight": torch.from_numpy(w), "bias": torch.from_numpy(b)})
    print("PyTorch nn.Linear loaded every dense layer")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"make": make, "compare": compare, "check-idx": check_idx, "check-model": check_model}[
        command](*args)
