#!/usr/bin/env python3
"""export-hf.py - a ddtrain gpt(...) model file as a Hugging Face GPT2LMHeadModel directory.

usage: launch/export-hf.py MODEL.h5 OUT_DIR

Writes OUT_DIR/config.json and OUT_DIR/model.safetensors, which
    transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR)
loads. ddtrain stores nn.Linear weights as PyTorch does, [out, in] (nanoGPT's layout);
GPT-2's checkpoints use Conv1D, [in, out]: c_attn, c_proj and c_fc weights are transposed,
everything else is copied as is, and lm_head is tied to wte (the tied weight is written once,
as transformers expects). GELU is GPT-2's tanh form ("gelu_new"), layer-norm epsilon 1e-5.
Needs only python3, numpy and h5py (Debian: python3-h5py); the safetensors file is written
by hand (8-byte header length, JSON header, raw little-endian data).
"""
import json
import os
import re
import stat
import struct
import sys

import h5py
import numpy as np


def parse_gpt(text):
    match = re.fullmatch(r"gpt\((.*)\)", text)
    if not match:
        sys.exit(f"export-hf: the model is '{text}', not a gpt(...) decoder")
    settings = dict(item.split("=") for item in match.group(1).split(","))
    return {k: (float(v) if k == "dropout" else int(v)) for k, v in settings.items()}


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4")
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": list(data.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    temp = path + ".tmp"
    with open(temp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    os.replace(temp, path)


def kind_of(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_directory(out):
    """Before anything is read: OUT_DIR is a directory or is created, and what is written into
    it replaces regular files only (a device node or FIFO there is never replaced)."""
    if os.path.exists(out) and not os.path.isdir(out):
        sys.exit(f"export-hf: {out} is not a directory but {kind_of(os.stat(out).st_mode)}: "
                 f"give a directory (it is created if missing)")
    for name in ("config.json", "model.safetensors"):
        path = os.path.join(out, name)
        if os.path.exists(path) and not os.path.isfile(path):
            sys.exit(f"export-hf: {path} is {kind_of(os.stat(path).st_mode)}: export-hf "
                     f"replaces regular files only; remove it or give another directory")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    source, out = sys.argv[1], sys.argv[2]
    check_output_directory(out)
    with h5py.File(source, "r") as f:
        text = f.attrs["model"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        g = parse_gpt(text)
        state = {k: f[k][...] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    transposed = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
    tensors = {}
    for name, value in state.items():
        tensors[name] = value.T if transposed.fullmatch(name) else value
    expected = 2 + 12 * g["layers"] + 2
    if len(tensors) != expected:
        sys.exit(f"export-hf: {source} holds {len(tensors)} tensors, a gpt with "
                 f"{g['layers']} layers has {expected}")
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": g["vocab"],
        "n_positions": g["context"],
        "n_ctx": g["context"],
        "n_embd": g["width"],
        "n_layer": g["layers"],
        "n_head": g["heads"],
        "n_inner": 4 * g["width"],
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": g.get("dropout", 0.0),
        "embd_pdrop": g.get("dropout", 0.0),
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "bos_token_id": g["vocab"] - 1 if g["vocab"] == 50257 else 0,
        "eos_token_id": g["vocab"] - 1 if g["vocab"] == 50257 else 0,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(out, "model.safetensors"), tensors)
    print(f"{out}: GPT2LMHeadModel ({g['layers']} layers, {g['heads']} heads, width "
          f"{g['width']}, context {g['context']}, vocabulary {g['vocab']}) from {source}")


if __name__ == "__main__":
    main()
