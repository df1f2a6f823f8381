#!/usr/bin/python3
"""make_seeds.py - writes the fuzz seed corpus (tests/fuzz/corpus): small valid files of each
kind the readers meet, so mutations start from real HDF5 structure.

  /usr/bin/python3 tests/fuzz/make_seeds.py tests/fuzz/corpus

Datasets (h5py, HDF5's default and latest file formats): class labels in chunks, float
targets contiguous, deflate+shuffle chunks, a compact /labels, a virtual /features whose
source is in the same file, and a model file in the --save layout. Two more come from
ddtrain's own writers and were made once, by hand, beside these:
  ddtrain synth -o corpus/synth.h5 --rows 40 --features 3 --classes 4
  ddtrain train --data corpus/synth.h5 --model 3-5-relu-4 --global-batch 8 --steps 2 \
      --save corpus/model-saved.h5
"""
import sys

import h5py
import numpy as np

out = sys.argv[1]
rng = np.random.default_rng(7)
x = rng.standard_normal((40, 3)).astype("f4")
y = rng.integers(0, 4, 40).astype("i4")


def dataset(name, libver="earliest", **features):
    with h5py.File(f"{out}/{name}", "w", libver=libver) as f:
        f.create_dataset("features", data=x, **features)
        f.create_dataset("labels", data=y)
        f.attrs["num_classes"] = np.int32(4)


dataset("chunked.h5", chunks=(8, 3))
dataset("chunked-latest.h5", libver="latest", chunks=(8, 3))
dataset("deflate.h5", chunks=(16, 3), compression="gzip", shuffle=True)
with h5py.File(f"{out}/targets.h5", "w") as f:
    f.create_dataset("features", data=x)
    f.create_dataset("labels", data=rng.standard_normal((40, 2)).astype("f4"))
with h5py.File(f"{out}/compact.h5", "w") as f:
    f.create_dataset("features", data=x, chunks=(10, 3))
    space = h5py.h5s.create_simple((40,))
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    labels = h5py.h5d.create(f.id, b"labels", h5py.h5t.STD_I32LE, space, plist)
    labels.write(h5py.h5s.ALL, h5py.h5s.ALL, y)
    f.attrs["num_classes"] = np.int32(4)
with h5py.File(f"{out}/virtual.h5", "w", libver="latest") as f:
    f.create_dataset("source", data=x)
    layout = h5py.VirtualLayout(shape=(40, 3), dtype="f4")
    layout[:] = h5py.VirtualSource(".", "source", shape=(40, 3))
    f.create_virtual_dataset("features", layout)
    f.create_dataset("labels", data=y)
    f.attrs["num_classes"] = np.int32(4)
with h5py.File(f"{out}/model.h5", "w") as f:
    f.attrs["model"] = "3-5-relu-4"
    for i, (n_in, n_out) in enumerate([(3, 5), (5, 4)]):
        f.create_dataset(f"dense_{i}/weight", data=rng.standard_normal((n_out, n_in)).astype("f4"))
        f.create_dataset(f"dense_{i}/bias", data=rng.standard_normal(n_out).astype("f4"))
