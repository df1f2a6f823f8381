"""ddtrain_torch.py - ddtrain's model grammar as PyTorch modules, and ddtrain's model files.

The reference side of the external oracles (tests/oracle/) and of the peer benches (bench/):
it reads a ddtrain model description (the grammar in the README and design/layer-engine.md)
and builds the torch.nn.Module that the description means, with exactly the state_dict names
and shapes ddtrain's layout table gives its tensors, so weights move between the two by name.

  * Generic text (`1x28x28-conv(32,k3,p1)-relu-...-10`) is an nn.Sequential: one module index
    per top-level token (activations, dropout, pools and flatten included) after N*(...) is
    expanded; res(BODY|SHORTCUT) holds i.body and i.shortcut (Sequentials); embed(D) holds
    i.wte and i.wpe; attn(H) i.c_attn and i.c_proj; lmhead has no parameters (tied to the
    embed's token table).
  * gpt(layers=L,heads=H,width=D,context=T,vocab=V[,dropout=P]) is nanoGPT's GPT: the names
    transformer.wte/wpe/h.N.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}/ln_f, GELU
    in its tanh form, causal attention, LayerNorm eps 1e-5 with bias, and an LM head tied to
    transformer.wte (computed from it, not registered, so it is not a separate state_dict key;
    to_nanogpt_state_dict() adds lm_head.weight for nanoGPT's own GPT class).
  * Model files are HDF5: one root dataset per state_dict key (fp32; num_batches_tracked
    int64) and the root attribute "model" holding the expanded text. Files of the MLP-only
    releases (groups dense_N/weight, dense_N/bias) are read too.

Parsing, files and FLOP counts need only numpy and h5py, so a process without torch (the
TensorFlow peer) can use them; the module builders import torch when called.

Usage:
    import ddtrain_torch as dt
    spec = dt.parse("cnn-small")                  # or text, or "@FILE"
    model = dt.build_torch(spec)                  # nn.Module, names as ddtrain's
    dt.save_model_file("init.h5", spec.text, model.state_dict())
    text, tensors = dt.load_model_file("out.h5")  # name -> numpy array
    dt.load_into(model, tensors)
    dt.flops_per_sample(spec)                     # {"forward": ..., "train": ...}
"""

import math
import os
import re

# --------------------------------------------------------------------------------------------
# Presets: what `--model NAME` expands to. expand_text() takes them from ddtrain's source
# (src/engine/model_spec.c) where it is beside this file, so they cannot drift; this copy (as
# of the layer engine's first version) serves where it is not.

PRESETS = {
    "cnn-small": "1x28x28-conv(32,k3,p1)-bn-relu-maxpool(2)-conv(64,k3,p1)-bn-relu-maxpool(2)"
                 "-flatten-256-relu-dropout0.3-10",
    "resnet-small": "3x32x32-conv(16,k3,p1,nobias)-bn-relu"
                    "-2*(res(conv(16,k3,p1,nobias)-bn-relu-conv(16,k3,p1,nobias)-bn)-relu)"
                    "-res(conv(32,k3,s2,p1,nobias)-bn-relu-conv(32,k3,p1,nobias)-bn"
                    "|conv(32,k1,s2,nobias)-bn)-relu"
                    "-res(conv(32,k3,p1,nobias)-bn-relu-conv(32,k3,p1,nobias)-bn)-relu"
                    "-res(conv(64,k3,s2,p1,nobias)-bn-relu-conv(64,k3,p1,nobias)-bn"
                    "|conv(64,k1,s2,nobias)-bn)-relu"
                    "-res(conv(64,k3,p1,nobias)-bn-relu-conv(64,k3,p1,nobias)-bn)-relu"
                    "-gap-10",
    "gpt-tiny": "gpt(layers=4,heads=4,width=128,context=64,vocab=256)",
    "gpt-small": "gpt(layers=6,heads=6,width=384,context=256,vocab=256)",
    "gpt2-124m": "gpt(layers=12,heads=12,width=768,context=1024,vocab=50257)",
}

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid")
LAYERNORM_EPS = 1e-5
BATCHNORM_EPS = 1e-5
BATCHNORM_MOMENTUM = 0.1


class SpecError(ValueError):
    """A description that does not parse, naming the token and what was expected."""


class Layer:
    """One parsed layer: kind plus its arguments; `inp`/`out` are per-sample shapes:
    ("flat", D), ("image", C, H, W), ("tokens", T, V) or ("seq", T, D)."""

    def __init__(self, kind, **args):
        self.kind = kind
        self.args = args
        self.inp = self.out = None
        self.body = self.shortcut = None  # res only: lists of Layer

    def __repr__(self):
        return "Layer(%s, %s)" % (self.kind, self.args)


class Spec:
    """A parsed description: `text` (the expanded text), `input` (a shape as above), `layers`
    (top-level Layers, N*(...) expanded; one nn.Sequential index each) or `gpt` (a dict of
    layers/heads/width/context/vocab/dropout) for gpt(...)."""

    def __init__(self, text, input_shape, layers, gpt=None):
        self.text, self.input, self.layers, self.gpt = text, input_shape, layers, gpt

    @property
    def output(self):
        if self.gpt:
            return ("seq", self.gpt["context"], self.gpt["vocab"])
        return self.layers[-1].out if self.layers else self.input

    @property
    def is_tokens(self):
        return self.input[0] == "tokens"


def source_presets(path=None):
    """The preset table of ddtrain's own source (src/engine/model_spec.c: {"name", "text"
    "text"...} entries), so the oracle and the benches expand a preset exactly as the binary
    beside them does; {} where the source is not there."""
    path = path or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "src", "engine", "model_spec.c")
    try:
        with open(path) as f:
            source = f.read()
    except OSError:
        return {}
    table = re.search(r"presets\[\]\s*=\s*\{(.*?)\n\};", source, re.S)
    if not table:
        return {}
    found = {}
    for entry in re.finditer(r'\{\s*"([a-z0-9-]+)"\s*,((?:\s*"[^"]*")+)\s*\}', table.group(1)):
        found[entry.group(1)] = "".join(re.findall(r'"([^"]*)"', entry.group(2)))
    return found


def expand_text(text):
    """Preset names (ddtrain's source table first, then PRESETS) and @FILE expanded; '#'
    comments and all whitespace removed."""
    text = text.strip()
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    text = re.sub(r"\s+", "", text)
    return source_presets().get(text) or PRESETS.get(text, text)


def split_top(text, separators):
    """Splits at any character of `separators` outside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SpecError("unbalanced ')' in '%s'" % text)
        if depth == 0 and ch in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SpecError("unbalanced '(' in '%s'" % text)
    parts.append("".join(current))
    return parts


def _call(token):
    """'name(a,b)' -> ('name', ['a', 'b']); None if the token is not a call."""
    m = re.fullmatch(r"([A-Za-z_]+)\((.*)\)", token)
    if not m:
        return None
    return m.group(1), split_top(m.group(2), ",")


def _int(text, token, what):
    if not re.fullmatch(r"[0-9]+", text or ""):
        raise SpecError("'%s': expected %s, got '%s'" % (token, what, text))
    return int(text)


def _window_args(name, args, token, need_out):
    """conv(OUT,kK[,sS][,pP][,nobias]) and pool(K[,sS][,pP])."""
    out = None
    if need_out:
        out = _int(args[0], token, "the output channels")
        args = args[1:]
        if not args or not args[0].startswith("k"):
            raise SpecError("'%s': expected kK (the kernel size) after the channels" % token)
        kernel = _int(args[0][1:], token, "a kernel size")
    else:
        kernel = _int(args[0][1:] if args and args[0].startswith("k") else args[0], token,
                      "a kernel size")
    stride, pad, bias = None, 0, True
    for a in args[1:]:
        if a.startswith("s"):
            stride = _int(a[1:], token, "a stride")
        elif a.startswith("p"):
            pad = _int(a[1:], token, "a padding")
        elif a == "nobias" and need_out:
            bias = False
        else:
            raise SpecError("'%s': unexpected '%s' (expected sS, pP%s)" % (
                token, a, ", nobias" if need_out else ""))
    if stride is None:
        stride = 1 if need_out else kernel
    if kernel < 1 or stride < 1:
        raise SpecError("'%s': kernel and stride must be positive" % token)
    return dict(out=out, kernel=kernel, stride=stride, pad=pad, bias=bias)


def _parse_input(token):
    if re.fullmatch(r"[0-9]+", token):
        return ("flat", int(token))
    m = re.fullmatch(r"([0-9]+)x([0-9]+)x([0-9]+)", token)
    if m:
        return ("image",) + tuple(int(g) for g in m.groups())
    call = _call(token)
    if call and call[0] == "tokens" and len(call[1]) == 2:
        return ("tokens", _int(call[1][0], token, "the context"),
                _int(call[1][1], token, "the vocabulary size"))
    raise SpecError("'%s': expected an input (WIDTH, CxHxW or tokens(CONTEXT,VOCAB))" % token)


def _parse_gpt(token):
    _, args = _call(token)
    values = {}
    for a in args:
        if "=" not in a:
            raise SpecError("'%s': expected key=value, got '%s'" % (token, a))
        k, v = a.split("=", 1)
        if k == "dropout":
            values[k] = float(v)
        elif k in ("layers", "heads", "width", "context", "vocab"):
            values[k] = _int(v, token, k)
        else:
            raise SpecError("'%s': unknown key '%s' (layers, heads, width, context, vocab, "
                            "dropout)" % (token, k))
    missing = [k for k in ("layers", "heads", "width", "context", "vocab") if k not in values]
    if missing:
        raise SpecError("'%s': missing %s" % (token, ", ".join(missing)))
    if values["width"] % values["heads"]:
        raise SpecError("'%s': width must be a multiple of heads" % token)
    values.setdefault("dropout", 0.0)
    return values


def _parse_layers(text):
    """A '-'-separated layer list with N*(...) expanded (res bodies parsed recursively)."""
    layers = []
    for token in split_top(text, "-"):
        if not token:
            raise SpecError("empty layer in '%s' (two '-' in a row?)" % text)
        m = re.fullmatch(r"([0-9]+)\*\((.*)\)", token)
        if m:
            inner = _parse_layers(m.group(2))
            for _ in range(int(m.group(1))):
                layers.extend(_copy_layers(inner))
            continue
        layers.append(_parse_layer(token))
    return layers


def _copy_layers(layers):
    out = []
    for layer in layers:
        c = Layer(layer.kind, **layer.args)
        if layer.body is not None:
            c.body = _copy_layers(layer.body)
        if layer.shortcut is not None:
            c.shortcut = _copy_layers(layer.shortcut)
        out.append(c)
    return out


def _parse_layer(token):
    if re.fullmatch(r"[0-9]+", token):
        return Layer("dense", width=int(token))
    if token in ACTIVATIONS:
        return Layer("act", name=token)
    m = re.fullmatch(r"dropout([0-9.]*)", token)
    if m:
        rate = float(m.group(1)) if m.group(1) else 0.5
        if not 0 <= rate < 1:
            raise SpecError("'%s': the dropout rate must be in [0, 1)" % token)
        return Layer("dropout", rate=rate)
    if token in ("gap", "flatten", "bn", "ln", "rms", "lmhead"):
        return Layer(token)
    call = _call(token)
    if not call:
        raise SpecError("'%s': expected a width or one of %s, dropout, dropoutRATE, conv(...), "
                        "maxpool(...), avgpool(...), gap, flatten, bn, ln, rms, res(...), N*(...), "
                        "embed(D), attn(H), lmhead" % (token, ", ".join(ACTIVATIONS)))
    name, args = call
    if name == "conv":
        return Layer("conv", **_window_args(name, args, token, True))
    if name in ("maxpool", "avgpool"):
        return Layer(name, **_window_args(name, args, token, False))
    if name == "res":
        parts = split_top(token[4:-1], "|")
        if len(parts) > 2:
            raise SpecError("'%s': res(BODY|SHORTCUT) takes at most one '|'" % token)
        layer = Layer("res")
        layer.body = _parse_layers(parts[0])
        layer.shortcut = _parse_layers(parts[1]) if len(parts) == 2 else None
        return layer
    if name == "embed":
        return Layer("embed", width=_int(args[0], token, "the embedding width"))
    if name == "attn":
        return Layer("attn", heads=_int(args[0], token, "the head count"))
    if name == "gpt":
        raise SpecError("'%s': gpt(...) is a whole model: write it alone (or after "
                        "tokens(T,V))" % token)
    raise SpecError("'%s': unknown layer '%s'" % (token, name))


def _infer(layers, shape, embed_width=None):
    """Fills in each layer's input and output shapes; returns the output shape."""
    for layer in layers:
        layer.inp = shape
        kind, a = layer.kind, layer.args
        if kind == "dense":
            if shape[0] == "image":
                raise SpecError("dense layer %d after an image: flatten or gap first" %
                                a["width"])
            if shape[0] == "tokens":
                raise SpecError("dense layer on token ids: embed(D) first")
            shape = shape[:-1] + (a["width"],)
        elif kind in ("act", "dropout"):
            if shape[0] == "tokens":
                raise SpecError("%s on token ids" % kind)
        elif kind == "conv":
            if shape[0] != "image":
                raise SpecError("conv needs an image input (CxHxW)")
            _, c, h, w = shape
            oh = (h + 2 * a["pad"] - a["kernel"]) // a["stride"] + 1
            ow = (w + 2 * a["pad"] - a["kernel"]) // a["stride"] + 1
            if oh < 1 or ow < 1:
                raise SpecError("conv window does not fit %dx%d" % (h, w))
            shape = ("image", a["out"], oh, ow)
        elif kind in ("maxpool", "avgpool"):
            if shape[0] != "image":
                raise SpecError("%s needs an image input" % kind)
            _, c, h, w = shape
            oh = (h + 2 * a["pad"] - a["kernel"]) // a["stride"] + 1
            ow = (w + 2 * a["pad"] - a["kernel"]) // a["stride"] + 1
            shape = ("image", c, oh, ow)
        elif kind == "gap":
            if shape[0] != "image":
                raise SpecError("gap needs an image input")
            shape = ("flat", shape[1])
        elif kind == "flatten":
            if shape[0] != "image":
                raise SpecError("flatten needs an image input")
            shape = ("flat", shape[1] * shape[2] * shape[3])
        elif kind == "bn":
            if shape[0] not in ("image", "flat"):
                raise SpecError("bn needs an image or flat input")
        elif kind in ("ln", "rms"):
            if shape[0] == "tokens":
                raise SpecError("%s on token ids" % kind)
        elif kind == "res":
            out = _infer(layer.body, shape, embed_width)
            short = _infer(layer.shortcut, shape, embed_width) if layer.shortcut else shape
            if out != short:
                raise SpecError("res: the body gives %s but the shortcut %s" % (out, short))
            shape = out
        elif kind == "embed":
            if shape[0] != "tokens":
                raise SpecError("embed(D) needs a tokens(CONTEXT,VOCAB) input")
            a["context"], a["vocab"] = shape[1], shape[2]
            embed_width = (a["width"], a["vocab"])
            shape = ("seq", shape[1], a["width"])
        elif kind == "attn":
            if shape[0] != "seq" or shape[2] % a["heads"]:
                raise SpecError("attn(%d) needs a sequence whose width divides by the heads" %
                                a["heads"])
        elif kind == "lmhead":
            if shape[0] != "seq" or not embed_width or embed_width[0] != shape[2]:
                raise SpecError("lmhead needs a sequence as wide as an earlier embed(D)")
            shape = ("seq", shape[1], embed_width[1])
        layer.out = shape
    return shape


def parse(text):
    """A Spec from model text, a preset name or @FILE; SpecError when it does not parse."""
    text = expand_text(text)
    parts = split_top(text, "-")
    if len(parts) == 1 and parts[0].startswith("gpt("):
        return Spec(text, ("tokens", None, None), [], gpt=_parse_gpt(parts[0]))
    input_shape = _parse_input(parts[0])
    if len(parts) == 2 and parts[1].startswith("gpt("):
        g = _parse_gpt(parts[1])
        if input_shape != ("tokens", g["context"], g["vocab"]):
            raise SpecError("'%s' does not match gpt's context and vocab" % parts[0])
        return Spec(text, input_shape, [], gpt=g)
    if len(parts) < 2:
        raise SpecError("'%s': a model needs at least one layer after its input" % text)
    layers = _parse_layers("-".join(parts[1:]))
    _infer(layers, input_shape)
    return Spec(text, input_shape, layers)


def _spec_of(spec):
    return spec if isinstance(spec, Spec) else parse(spec)


def gpt_config(spec):
    """The gpt dict of a gpt(...) Spec (context and vocab filled in)."""
    spec = _spec_of(spec)
    if not spec.gpt:
        raise SpecError("not a gpt(...) model: %s" % spec.text)
    if spec.input[1] is None:
        spec.input = ("tokens", spec.gpt["context"], spec.gpt["vocab"])
    return spec.gpt


# --------------------------------------------------------------------------------------------
# FLOPs: the multiply-adds of the matrix products (conv, dense, attention's two batched
# products, the LM head), 2 FLOP each. Forward once; training = forward + the weight gradient
# (same count) + the input gradient (same count) except where the input is the data itself
# (the first conv or dense layer, which no framework differentiates). Elementwise work
# (activations, norms, softmax, pooling, the optimizer) is left out: a few percent here.
# Attention counts its full T x T score and context products, which ddtrain's batched GEMMs
# compute (the mask is applied in the softmax).

def _layer_macs(layer):
    kind, a = layer.kind, layer.args
    if kind == "dense":
        positions = layer.inp[1] if layer.inp[0] == "seq" else 1
        return layer.inp[-1] * a["width"] * positions
    if kind == "conv":
        _, c, _, _ = layer.inp
        _, o, oh, ow = layer.out
        return o * c * a["kernel"] * a["kernel"] * oh * ow
    if kind == "attn":
        _, t, d = layer.inp
        return 3 * d * d * t + 2 * t * t * d + d * d * t
    if kind == "lmhead":
        _, t, d = layer.inp
        return layer.out[2] * d * t
    if kind == "res":
        return sum(_layer_macs(l) for l in layer.body) + \
            sum(_layer_macs(l) for l in (layer.shortcut or []))
    return 0


def flops_per_sample(spec):
    """{"forward", "train", "params"}: FLOP per sample (per sequence for token models) of the
    matrix products, and the parameter count."""
    spec = _spec_of(spec)
    if spec.gpt:
        g = gpt_config(spec)
        L, D, T, V = g["layers"], g["width"], g["context"], g["vocab"]
        per_block = (3 * D * D + D * D + 4 * D * D + 4 * D * D) * T + 2 * T * T * D
        macs = L * per_block + V * D * T
        first_data_macs = 0  # the first product (block 0's c_attn) reads a LayerNorm, not data
    else:
        macs = sum(_layer_macs(l) for l in spec.layers)
        first = next((l for l in spec.layers if l.kind in ("dense", "conv")), None)
        first_data_macs = _layer_macs(first) if first is not None and first.inp == spec.input \
            else 0
    forward = 2 * macs
    return {"forward": forward, "train": 3 * forward - 2 * first_data_macs,
            "params": parameter_count(spec)}


def parameter_count(spec):
    spec = _spec_of(spec)
    if spec.gpt:
        g = gpt_config(spec)
        L, D, T, V = g["layers"], g["width"], g["context"], g["vocab"]
        block = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (4 * D * D + 4 * D) + \
            (4 * D * D + D)
        return V * D + T * D + L * block + 2 * D
    return _count_layers(spec.layers)


def _count_layers(layers):
    n = 0
    for layer in layers:
        kind, a = layer.kind, layer.args
        if kind == "dense":
            n += layer.inp[-1] * a["width"] + a["width"]
        elif kind == "conv":
            n += a["out"] * layer.inp[1] * a["kernel"] ** 2 + (a["out"] if a["bias"] else 0)
        elif kind == "bn":
            n += 2 * layer.inp[1]
        elif kind == "ln":
            n += 2 * layer.inp[-1]
        elif kind == "rms":
            n += layer.inp[-1]
        elif kind == "res":
            n += _count_layers(layer.body) + _count_layers(layer.shortcut or [])
        elif kind == "embed":
            n += (a["vocab"] + a["context"]) * a["width"]
        elif kind == "attn":
            d = layer.inp[2]
            n += 4 * d * d + 4 * d
    return n


# --------------------------------------------------------------------------------------------
# ddtrain's dropout mask (src/engine/device_cpu.c dropout_keeps, src/util/rng.h): unit `col`
# of global row `row` of layer `layer` at global step `step` is kept when
# rng_uniform(rng_hash4(seed, RNG_PURPOSE_DROPOUT=4, step, (layer << 40) ^ (row * cols + col)))
# >= rate, and kept units are scaled by 1 / (1 - rate). Reproduced here with numpy's
# wrapping uint64 arithmetic so the oracle can train through dropout bit for bit.

RNG_PURPOSE_DROPOUT = 4
_M64 = (1 << 64) - 1


def _splitmix64(x):
    import numpy as np

    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ddtrain_dropout_keep(seed, step, layer, rows, cols, rate):
    """Boolean keep mask [len(rows), cols] for global rows `rows` (ints)."""
    import numpy as np

    with np.errstate(over="ignore"):
        rows = np.asarray(rows, dtype=np.uint64).reshape(-1, 1)
        unit = rows * np.uint64(cols) + np.arange(cols, dtype=np.uint64).reshape(1, -1)
        index = np.uint64((layer << 40) & _M64) ^ unit
        h = _splitmix64(np.full(1, seed & _M64, dtype=np.uint64))
        h = _splitmix64(h ^ np.uint64(RNG_PURPOSE_DROPOUT))
        h = _splitmix64(h ^ np.uint64(step & _M64))
        bits = _splitmix64(h ^ index)
        uniform = (bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return uniform >= np.float32(rate)


# --------------------------------------------------------------------------------------------
# Learning-rate schedule and optimizer set-up, as ddtrain does them.

def ddtrain_lr(step, base_lr, warmup_steps=0, schedule="constant", total_steps=0, min_lr=0.0,
               step_size=0, gamma=0.1):
    """ddtrain's lr_schedule_at() (src/engine/optim.c) for global step 0, 1, ...: linear
    warm-up base*(step+1)/warmup, then constant, cosine from base to min_lr reached at
    total_steps, or step decay."""
    step = max(step, 0)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    after = step - max(warmup_steps, 0)
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        span = total_steps - max(warmup_steps, 0)
        progress = min(1.0, after / span) if span > 0 else 1.0
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr if step_size <= 0 else base_lr * gamma ** (after // step_size)
    raise ValueError("unknown schedule %s" % schedule)


def decay_groups(model, weight_decay, rule="matrices"):
    """AdamW parameter groups. rule "matrices": decay on the weights of linear and conv layers
    only: not biases, norms or embeddings (wte, wpe); "nanogpt": every parameter with 2 or
    more dimensions (nanoGPT's configure_optimizers, which decays the embeddings too); "all"."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if rule == "all":
            use = True
        elif rule == "nanogpt":
            use = p.dim() >= 2
        elif rule == "matrices":
            use = p.dim() >= 2 and not re.search(r"(^|\.)(wte|wpe)\.", name)
        else:
            raise ValueError("unknown decay rule %s" % rule)
        (decay if use else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------
# Model files

def save_model_file(path, text, tensors):
    """Writes a ddtrain model file: root attribute "model" = text, one root dataset per name
    (fp32; int64 for num_batches_tracked). Written to a temporary name and renamed."""
    import h5py
    import numpy as np

    tmp = "%s.tmp%d" % (path, os.getpid())
    with h5py.File(tmp, "w") as f:
        f.attrs["model"] = text
        for name, value in tensors.items():
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            dtype = np.int64 if name.endswith("num_batches_tracked") else np.float32
            f.create_dataset(name, data=value.astype(dtype))
    os.replace(tmp, path)


def load_model_file(path):
    """(text, {name: numpy array}) from a ddtrain model file (or a checkpoint, which holds a
    model in the same layout). Old MLP files (dense_N groups) come back under the Sequential
    names of their spec."""
    import h5py

    with h5py.File(path, "r") as f:
        text = f.attrs["model"]
        if isinstance(text, bytes):
            text = text.decode()
        tensors = {}
        for name, obj in f.items():
            if isinstance(obj, h5py.Dataset):
                tensors[name] = obj[...]
        groups = sorted((n for n, o in f.items() if isinstance(o, h5py.Group) and
                         re.fullmatch(r"dense_[0-9]+", n)), key=lambda n: int(n[6:]))
        if groups:
            spec = parse(text)
            dense = [i for i, l in enumerate(spec.layers) if l.kind == "dense"]
            for g in groups:
                i = dense[int(g[6:])]
                tensors["%d.weight" % i] = f[g]["weight"][...]
                tensors["%d.bias" % i] = f[g]["bias"][...]
    return text, tensors


def save_model_file_v1(path, text, tensors):
    """An MLP in the layout of the releases before the layer engine (dense_N groups), for
    binaries that read nothing else."""
    import h5py
    import numpy as np

    spec = parse(text)
    dense = [i for i, l in enumerate(spec.layers) if l.kind == "dense"]
    tmp = "%s.tmp%d" % (path, os.getpid())
    with h5py.File(tmp, "w") as f:
        f.attrs["model"] = text
        for k, i in enumerate(dense):
            for part in ("weight", "bias"):
                value = tensors["%d.%s" % (i, part)]
                if hasattr(value, "detach"):
                    value = value.detach().cpu().numpy()
                f.create_dataset("dense_%d/%s" % (k, part), data=np.asarray(value, np.float32))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Data files

def load_dataset(path_spec, limit=None):
    """(features float32 [N, ...], labels) from ddtrain HDF5 data: a path, a comma list or a
    glob (sorted), shards concatenated in that order (ddtrain's row space)."""
    import glob
    import h5py
    import numpy as np

    paths = []
    for part in path_spec.split(","):
        found = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        paths.extend(found)
    xs, ys = [], []
    rows = 0
    for p in paths:
        with h5py.File(p, "r") as f:
            n = f["features"].shape[0] if limit is None else min(f["features"].shape[0],
                                                                 limit - rows)
            xs.append(f["features"][:n].astype(np.float32))
            ys.append(f["labels"][:n])
        rows += n
        if limit is not None and rows >= limit:
            break
    return np.concatenate(xs), np.concatenate(ys)


def load_tokens(path_spec):
    """A list of 1-D int arrays, one per shard (windows never cross shards)."""
    import glob
    import h5py

    paths = []
    for part in path_spec.split(","):
        paths.extend(sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part])
    out = []
    for p in paths:
        with h5py.File(p, "r") as f:
            out.append(f["tokens"][...].astype("int64"))
    return out


def write_tokens(path, tokens, vocab=256):
    """ddtrain token data: /tokens (uint16 when vocab <= 65536, else int32) with a
    vocab_size attribute; written to a temporary name and renamed."""
    import h5py
    import numpy as np

    tokens = np.asarray(tokens)
    tokens = tokens.astype(np.uint16 if vocab <= 65536 else np.int32)
    tmp = "%s.tmp%d" % (path, os.getpid())
    with h5py.File(tmp, "w") as f:
        d = f.create_dataset("tokens", data=tokens, chunks=(min(len(tokens), 1 << 16),))
        d.attrs["vocab_size"] = vocab
    os.replace(tmp, path)


def token_windows(shards, context):
    """[windows, context + 1] int64: sample k of a shard with n tokens is tokens[kT, kT+T+1)
    for k < (n - 1) // T, shards in order (ddtrain's row space for token data)."""
    import numpy as np

    parts = []
    for tokens in shards:
        count = (len(tokens) - 1) // context
        idx = np.arange(count)[:, None] * context + np.arange(context + 1)[None, :]
        parts.append(tokens[idx])
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# PyTorch modules (torch imported here only)

def _torch_classes():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class KeyedDropout(nn.Dropout):
        """nn.Dropout, or ddtrain's keyed mask while a context (seed, step, row ids) is set
        with set_dropout_context(): then the mask equals ddtrain's for the same rows."""

        def __init__(self, rate, layer_key):
            super().__init__(rate)
            self.layer_key = layer_key
            self.context = None

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            if self.context is None:
                return super().forward(x)
            seed, step, rows = self.context
            cols = x[0].numel()
            keep = ddtrain_dropout_keep(seed, step, self.layer_key, rows, cols, self.p)
            keep = torch.from_numpy(keep).to(x.device).reshape(x.shape)
            return torch.where(keep, x * (1.0 / (1.0 - self.p)), torch.zeros_like(x))

    class RMSNorm(nn.Module):
        """torch.nn.RMSNorm (PyTorch 2.4+; written out for older ones such as Debian's):
        x * rsqrt(mean(x^2, last axis) + eps) * weight."""

        def __init__(self, width, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(width))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class GlobalAveragePool(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class Residual(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body = body
            if shortcut is not None:
                self.shortcut = shortcut

        def forward(self, x):
            short = self.shortcut(x) if hasattr(self, "shortcut") else x
            return self.body(x) + short

    class Embed(nn.Module):
        def __init__(self, vocab, context, width):
            super().__init__()
            self.wte = nn.Embedding(vocab, width)
            self.wpe = nn.Embedding(context, width)

        def forward(self, ids):
            pos = torch.arange(ids.shape[1], device=ids.device)
            return self.wte(ids) + self.wpe(pos)

    class CausalSelfAttention(nn.Module):
        """nanoGPT's: c_attn (D -> 3D), heads, causal softmax(QK^T / sqrt(d)), c_proj."""

        def __init__(self, width, heads, dropout=0.0):
            super().__init__()
            self.c_attn = nn.Linear(width, 3 * width)
            self.c_proj = nn.Linear(width, width)
            self.resid_dropout = nn.Dropout(dropout)
            self.heads = heads
            self.use_sdpa = hasattr(F, "scaled_dot_product_attention")

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.c_attn(x).split(d, dim=2)
            q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                       for z in (q, k, v))
            if self.use_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
                y = att @ v
            y = y.transpose(1, 2).contiguous().view(b, t, d)
            return self.resid_dropout(self.c_proj(y))

    class LMHead(nn.Module):
        """Logits from the embed's token table (tied; no parameters of its own)."""

        def __init__(self, embed):
            super().__init__()
            self.__dict__["tied"] = embed  # not registered: not a state_dict key

        def forward(self, x):
            return F.linear(x, self.tied.wte.weight)

    class SpecSequential(nn.Sequential):
        """The Sequential of generic text; reshapes flat image rows to C x H x W."""

        def __init__(self, spec, modules):
            super().__init__(*modules)
            self.__dict__["spec"] = spec

        def forward(self, x):
            if self.spec.input[0] == "image" and x.dim() == 2:
                x = x.view(x.shape[0], *self.spec.input[1:])
            return super().forward(x)

    class MLP(nn.Module):
        def __init__(self, width, dropout):
            super().__init__()
            self.c_fc = nn.Linear(width, 4 * width)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * width, width)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    class Block(nn.Module):
        def __init__(self, width, heads, dropout):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width, eps=LAYERNORM_EPS)
            self.attn = CausalSelfAttention(width, heads, dropout)
            self.ln_2 = nn.LayerNorm(width, eps=LAYERNORM_EPS)
            self.mlp = MLP(width, dropout)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        """nanoGPT's GPT (bias=True), lm_head tied to transformer.wte."""

        def __init__(self, g):
            super().__init__()
            self.config = dict(g)
            D = g["width"]
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(g["vocab"], D),
                wpe=nn.Embedding(g["context"], D),
                drop=nn.Dropout(g["dropout"]),
                h=nn.ModuleList(Block(D, g["heads"], g["dropout"]) for _ in range(g["layers"])),
                ln_f=nn.LayerNorm(D, eps=LAYERNORM_EPS)))

        def forward(self, ids):
            tr = self.transformer
            pos = torch.arange(ids.shape[1], device=ids.device)
            x = tr.drop(tr.wte(ids) + tr.wpe(pos))
            for block in tr.h:
                x = block(x)
            return F.linear(tr.ln_f(x), tr.wte.weight)

    return dict(KeyedDropout=KeyedDropout, GlobalAveragePool=GlobalAveragePool, RMSNorm=RMSNorm,
                Residual=Residual, Embed=Embed, CausalSelfAttention=CausalSelfAttention,
                LMHead=LMHead, SpecSequential=SpecSequential, GPT=GPT)


def _build_modules(layers, classes, embeds, key_base=0):
    import torch.nn as nn

    modules = []
    for i, layer in enumerate(layers):
        kind, a = layer.kind, layer.args
        if kind == "dense":
            modules.append(nn.Linear(layer.inp[-1], a["width"]))
        elif kind == "act":
            modules.append({"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                            "sigmoid": nn.Sigmoid}[a["name"]]() if a["name"] != "gelu_tanh"
                           else nn.GELU(approximate="tanh"))
        elif kind == "dropout":
            modules.append(classes["KeyedDropout"](a["rate"], key_base + i))
        elif kind == "conv":
            modules.append(nn.Conv2d(layer.inp[1], a["out"], a["kernel"], stride=a["stride"],
                                     padding=a["pad"], bias=a["bias"]))
        elif kind == "maxpool":
            modules.append(nn.MaxPool2d(a["kernel"], stride=a["stride"], padding=a["pad"]))
        elif kind == "avgpool":
            modules.append(nn.AvgPool2d(a["kernel"], stride=a["stride"], padding=a["pad"]))
        elif kind == "gap":
            modules.append(classes["GlobalAveragePool"]())
        elif kind == "flatten":
            modules.append(nn.Flatten())
        elif kind == "bn":
            cls = nn.BatchNorm2d if layer.inp[0] == "image" else nn.BatchNorm1d
            modules.append(cls(layer.inp[1], eps=BATCHNORM_EPS, momentum=BATCHNORM_MOMENTUM))
        elif kind == "ln":
            modules.append(nn.LayerNorm(layer.inp[-1], eps=LAYERNORM_EPS))
        elif kind == "rms":  # Llama's RMSNorm, as ddtrain's rms
            modules.append(classes["RMSNorm"](layer.inp[-1], LAYERNORM_EPS))
        elif kind == "res":
            body = nn.Sequential(*_build_modules(layer.body, classes, embeds))
            short = (nn.Sequential(*_build_modules(layer.shortcut, classes, embeds))
                     if layer.shortcut else None)
            modules.append(classes["Residual"](body, short))
        elif kind == "embed":
            e = classes["Embed"](a["vocab"], a["context"], a["width"])
            embeds.append(e)
            modules.append(e)
        elif kind == "attn":
            modules.append(classes["CausalSelfAttention"](layer.inp[2], a["heads"]))
        elif kind == "lmhead":
            modules.append(classes["LMHead"](embeds[-1]))
        else:
            raise SpecError("no module for %s" % kind)
    return modules


def build_torch(spec, seed=None, init="torch"):
    """The nn.Module a description means, initialised under torch.manual_seed(seed) when a
    seed is given. init "torch": PyTorch's default initialisation, except for token models,
    whose embeddings and linear layers get nanoGPT's (normal 0.02, residual projections
    0.02/sqrt(2L), zero biases); "ddtrain": ddtrain's rule for dense and conv layers (He-normal
    when a relu or gelu follows, through any dropout or pooling, else Xavier-uniform; zero
    biases)."""
    import torch

    spec = _spec_of(spec)
    if seed is not None:
        torch.manual_seed(seed)
    classes = _torch_classes()
    if spec.gpt:
        model = classes["GPT"](gpt_config(spec))
    else:
        model = classes["SpecSequential"](spec, _build_modules(spec.layers, classes, []))
    if spec.is_tokens:
        _init_like_nanogpt(model)
    elif init == "ddtrain":
        _init_like_ddtrain(spec.layers, list(model))
    elif init != "torch":
        raise ValueError("unknown init %s" % init)
    return model


def _init_like_ddtrain(layers, modules):
    import torch.nn as nn

    for i, (layer, module) in enumerate(zip(layers, modules)):
        if layer.kind == "res":
            _init_like_ddtrain(layer.body, list(module.body))
            if layer.shortcut:
                _init_like_ddtrain(layer.shortcut, list(module.shortcut))
            continue
        if layer.kind not in ("dense", "conv"):
            continue
        following = next((l for l in layers[i + 1:] if l.kind not in
                          ("dropout", "maxpool", "avgpool", "flatten")), None)
        if following is not None and following.kind == "act" and \
                following.args["name"] in ("relu", "gelu", "gelu_tanh"):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        else:
            nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _init_like_nanogpt(model):
    import torch.nn as nn

    layers = sum(1 for n, _ in model.named_modules() if n.endswith("c_attn")) or 1
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * layers) if name.endswith("c_proj") else 0.02
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)


def set_dropout_context(model, seed, step, rows):
    """Makes every KeyedDropout in `model` draw ddtrain's mask for global rows `rows` at
    global step `step` (None: PyTorch's own random mask)."""
    for m in model.modules():
        if hasattr(m, "layer_key"):
            m.context = None if seed is None else (seed, step, rows)


def load_into(model, tensors, strict=True):
    """Loads {name: array} (load_model_file's) into `model` by name."""
    import torch

    state = {k: torch.as_tensor(v) for k, v in tensors.items()}
    model.load_state_dict(state, strict=strict)
    return model


def to_nanogpt_state_dict(model):
    """state_dict for nanoGPT's GPT class: ours plus lm_head.weight (= transformer.wte)."""
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state
