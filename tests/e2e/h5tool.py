#!/usr/bin/python3
"""h5tool.py - file helpers for ddtrain's end-to-end tests (h5py + numpy).

  make DATASET_KIND OUT.h5      write a small dataset, valid or broken in one named way
  compare A.h5 B.h5 RTOL        model files: same layers, weights equal within RTOL
  compare-floor A.h5 B.h5 RTOL C.h5 D.h5
                                as compare, within max(RTOL, 10 x how far C.h5 is from D.h5):
                                two runs of the same training that differ only in rounding,
                                made beside A and B (the noise floor of that training)
  ulp-perturb IN.h5 OUT.h5      a model file's copy with every float32 weight moved by one
                                unit in the last place, up or down at random (seeded)
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


def tensors(f):
    """A model file's tensors by state_dict name (root datasets); older files' dense_<i>
    groups under the names nn.Sequential would give them."""
    if any(k.startswith("dense_") for k in f.keys()):
        names = sorted((k for k in f.keys() if k.startswith("dense_")), key=lambda k: int(k[6:]))
        out = {}
        for i, k in enumerate(names):
            out[f"dense_{i}.weight"] = f[k]["weight"][...]
            out[f"dense_{i}.bias"] = f[k]["bias"][...]
        return out
    return {k: f[k][...] for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def compare(a, b, rtol):
    rtol = float(rtol)
    worst = worst_relative_difference(a, b)
    print(f"max relative difference {worst:.3g} (tolerance {rtol:g})")
    if worst > rtol:
        sys.exit(1)


def worst_relative_difference(a, b):
    """The largest over the tensors of max|a - b| / max|b| (num_batches_tracked left out)."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ta, tb = tensors(fa), tensors(fb)
        if sorted(ta) != sorted(tb):
            sys.exit(f"{a} has tensors {sorted(ta)}, {b} has {sorted(tb)}")
        worst = 0.0
        for name in sorted(ta):
            p, q = ta[name], tb[name]
            if p.shape != q.shape:
                sys.exit(f"{name}: shapes {p.shape} and {q.shape}")
            if name.endswith("num_batches_tracked"):
                continue
            worst = max(worst, float(np.abs(p - q).max() / max(np.abs(q).max(), 1e-12)))
        return worst


def compare_floor(a, b, rtol, floor_a, floor_b):
    """Training runs that are equal but for the order of float32 sums (N ranks against 1, say)
    drift apart by what rounding does to that training on this CPU, and a ReLU or max-pool
    input within rounding of its kink can take the other branch in one run and grow: a fixed
    bar that held on one CPU need not hold on another. So the bar is tied to a pair of runs
    made beside them that differ in rounding only (1 rank with and without accumulation, say):
    max(RTOL, 10 x their difference)."""
    rtol = float(rtol)
    worst = worst_relative_difference(a, b)
    floor = worst_relative_difference(floor_a, floor_b)
    limit = max(rtol, 10.0 * floor)
    print(f"max relative difference {worst:.3g} (bar {limit:.3g} = max({rtol:g}, 10 x "
          f"noise floor {floor:.3g}))")
    if not worst <= limit:
        sys.exit(1)


def ulp_perturb(source, out):
    """Writes OUT as a copy of the model file SOURCE whose float32 tensors are each moved by
    one unit in the last place, up or down at random: initial weights that differ from
    SOURCE's by rounding only. Training from both measures how far this training's rounding
    carries (compare-floor)."""
    import shutil

    shutil.copyfile(source, out)
    rng = np.random.default_rng(0)
    with h5py.File(out, "r+") as f:
        for name, obj in f.items():
            if not isinstance(obj, h5py.Dataset) or obj.dtype != np.float32 or not obj.shape:
                continue
            x = obj[...]
            up = rng.integers(0, 2, size=x.shape).astype(bool)
            obj[...] = np.where(up, np.nextafter(x, np.float32(np.inf)),
                                np.nextafter(x, np.float32(-np.inf))).astype(np.float32)


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
    """An MLP's model file: its nn.Sequential state_dict, loaded by name into PyTorch."""
    tokens = spec.split("-")
    widths = [int(t) for t in tokens if t.isdigit()]
    with h5py.File(path, "r") as f:
        model = f.attrs["model"]
        model = model.decode() if isinstance(model, bytes) else str(model)
        assert model == spec, f"model attribute {model!r} != {spec!r}"
        state = tensors(f)
    expected = {}
    width = widths[0]
    for index, token in enumerate(tokens[1:]):
        if token.isdigit():
            expected[f"{index}.weight"] = (int(token), width)
            expected[f"{index}.bias"] = (int(token),)
            width = int(token)
    assert {k: v.shape for k, v in state.items()} == expected, (sorted(state), expected)
    try:
        import torch
    except ImportError:
        print("skipped: PyTorch load (python3-torch not installed)")
        return
    layers = []
    width = widths[0]
    for token in tokens[1:]:
        if token.isdigit():
            layers.append(torch.nn.Linear(width, int(token)))
            width = int(token)
        else:
            layers.append(torch.nn.ReLU() if token == "relu" else torch.nn.Identity())
    net = torch.nn.Sequential(*layers)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    print("PyTorch nn.Sequential loaded the model by name (strict)")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"make": make, "compare": compare, "compare-floor": compare_floor, "ulp-perturb": ulp_perturb,
     "check-idx": check_idx, "check-model": check_model}[command](*args)
