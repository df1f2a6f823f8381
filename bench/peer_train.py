"""peer_train.py - the PyTorch 2.x and TensorFlow 2.x (Keras) peers of bench/vs-peers-cnn and
bench/vs-peers-gpt: the same model as ddtrain (built from ddtrain's model text by
tests/oracle/ddtrain_torch.py), the same data, the same recipe, run as a user of each would
run it on one 2-core machine: one process, --threads intra-op threads (pinned to that many
cores), the whole data set in memory.

    $(bench/peers-venv torch) bench/peer_train.py --framework torch --model cnn-small \
        --data 'data/fashion-train-*.h5' --threads 2 --global-batch 128 --steps 100 --json
    $(bench/peers-venv tensorflow) bench/peer_train.py --framework tensorflow ...
    $(bench/peers-venv torch) bench/peer_train.py --framework torch --model gpt-tiny \
        --data data/kjv-train.h5 --eval-data data/kjv-val.h5 --optimizer adamw --init init.h5 \
        --order sequential --compile

Timing: --warmup-steps untimed steps (graph tracing, torch.compile, oneDNN's first calls),
then --steps timed ones; samples/s (and tokens/s for token models) over the timed steps.
Both count toward the learning-rate schedule, whose length is warmup + steps, as ddtrain's
run of the same total length. Images: a random permutation per epoch (as ddtrain's shuffle;
not the same order); tokens with --order sequential: windows in file order, global step s
taking windows [sB, (s+1)B), as ddtrain with --no-shuffle, so from the same --init both see
the same data and their validation losses are comparable.

Prints one JSON line (--json) with samples_per_s, tokens_per_s, seconds, peak_rss_bytes,
eval_loss (token models with --eval-data: mean loss over every full window of it), versions
and settings.
"""

import argparse
import json
import math
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "oracle"))
import ddtrain_torch as dt  # noqa: E402


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def pin(threads):
    cpus = sorted(os.sched_getaffinity(0))
    if threads <= len(cpus):
        os.sched_setaffinity(0, cpus[:threads])


def schedule(args, total):
    return lambda step: dt.ddtrain_lr(step, args.lr, args.lr_warmup_steps, args.lr_schedule,
                                      total, args.min_lr)


# --------------------------------------------------------------------------------------------
# PyTorch

def run_torch(args, spec):
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    model = dt.build_torch(spec, seed=args.seed)
    if args.init:
        _, tensors = dt.load_model_file(args.init)
        dt.load_into(model, tensors)
    model.train()
    B, total = args.global_batch, args.warmup_steps + args.steps
    if spec.is_tokens:
        context = dt.gpt_config(spec)["context"] if spec.gpt else spec.input[1]
        windows = torch.from_numpy(dt.token_windows(dt.load_tokens(args.data), context))
        rows = len(windows)
    else:
        x, y = dt.load_dataset(args.data)
        x, y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        rows = len(x)
    steps_per_epoch = rows // B
    if steps_per_epoch < 1:
        sys.exit("peer_train: fewer rows (%d) than --global-batch" % rows)

    if args.optimizer == "sgd":
        opt = torch.optim.SGD(dt.decay_groups(model, args.weight_decay, args.weight_decay_on),
                              lr=args.lr, momentum=args.momentum)
    else:
        opt = torch.optim.AdamW(dt.decay_groups(model, args.weight_decay, args.weight_decay_on),
                                lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    lr_at = schedule(args, total)

    def forward_loss(inputs, labels):
        logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    step_fn = forward_loss
    if args.compile:
        step_fn = torch.compile(forward_loss)

    generator = torch.Generator().manual_seed(args.seed)
    order = None

    def batch(step):
        nonlocal order
        epoch, k = divmod(step, steps_per_epoch)
        if args.order == "sequential":
            index = torch.arange(k * B, (k + 1) * B)
        else:
            if k == 0 or order is None:
                order = torch.randperm(rows, generator=generator)
            index = order[k * B:(k + 1) * B]
        if spec.is_tokens:
            w = windows[index]
            return w[:, :-1], w[:, 1:]
        return x[index], y[index]

    def train_step(step):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        inputs, labels = batch(step)
        opt.zero_grad(set_to_none=True)
        loss = step_fn(inputs, labels)
        loss.backward()
        if args.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        opt.step()
        return loss

    started = time.perf_counter()
    for s in range(args.warmup_steps):
        train_step(s)
    warm = time.perf_counter()
    for s in range(args.warmup_steps, total):
        loss = train_step(s)
    seconds = time.perf_counter() - warm
    result = {"framework": "pytorch", "version": torch.__version__,
              "compile": bool(args.compile), "warmup_seconds": round(warm - started, 3),
              "final_train_loss": round(float(loss), 5)}
    if args.eval_data:
        result["eval_loss"] = torch_eval_loss(model, spec, args.eval_data)
    if args.save:
        dt.save_model_file(args.save, spec.text, model.state_dict())
    return result, seconds


def torch_eval_loss(model, spec, path, batch=64):
    """Mean cross-entropy over every full window (tokens) or row (images) of `path`."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        if spec.is_tokens:
            context = dt.gpt_config(spec)["context"] if spec.gpt else spec.input[1]
            w = torch.from_numpy(dt.token_windows(dt.load_tokens(path), context))
            for i in range(0, len(w), batch):
                logits = model(w[i:i + batch, :-1])
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               w[i:i + batch, 1:].reshape(-1), reduction="sum"))
                count += logits.shape[0] * logits.shape[1]
        else:
            x, y = dt.load_dataset(path)
            x, y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
            for i in range(0, len(x), 1024):
                total += float(F.cross_entropy(model(x[i:i + 1024]), y[i:i + 1024],
                                               reduction="sum"))
                count += len(x[i:i + 1024])
    model.train()
    return round(total / count, 5)


# --------------------------------------------------------------------------------------------
# TensorFlow / Keras: the same layers in Keras' own idiom (channels last; gpt(...) as
# keras_gpt)

def keras_model(spec):
    import keras
    from keras import layers as L

    if spec.gpt:
        return keras_gpt(spec)
    if spec.is_tokens:
        sys.exit("peer_train: the TensorFlow peer runs gpt(...), image and flat models only")
    shape = spec.input
    inputs = keras.Input((shape[2], shape[3], shape[1]) if shape[0] == "image" else (shape[1],))

    def apply(layer_list, x):
        for layer in layer_list:
            kind, a = layer.kind, layer.args
            if kind == "dense":
                x = L.Dense(a["width"])(x)
            elif kind == "act":
                x = L.Activation({"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu",
                                  "tanh": "tanh", "sigmoid": "sigmoid"}[a["name"]])(x)
            elif kind == "dropout":
                x = L.Dropout(a["rate"])(x)
            elif kind == "conv":
                if a["pad"]:
                    x = L.ZeroPadding2D(a["pad"])(x)
                x = L.Conv2D(a["out"], a["kernel"], strides=a["stride"], use_bias=a["bias"])(x)
            elif kind in ("maxpool", "avgpool"):
                if a["pad"]:
                    x = L.ZeroPadding2D(a["pad"])(x)
                cls = L.MaxPooling2D if kind == "maxpool" else L.AveragePooling2D
                x = cls(a["kernel"], strides=a["stride"])(x)
            elif kind == "gap":
                x = L.GlobalAveragePooling2D()(x)
            elif kind == "flatten":
                x = L.Flatten()(x)
            elif kind == "bn":
                x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
            elif kind == "ln":
                x = L.LayerNormalization(epsilon=1e-5)(x)
            elif kind == "res":
                body = apply(layer.body, x)
                short = apply(layer.shortcut, x) if layer.shortcut else x
                x = L.Add()([body, short])
            else:
                sys.exit("peer_train: no Keras layer for %s" % kind)
        return x

    return keras.Model(inputs, apply(spec.layers, inputs))


def keras_gpt(spec):
    """gpt(...) as a Keras model written the way a Keras user would: Embedding plus a learned
    position table, pre-norm blocks of MultiHeadAttention (causal mask; separate q, k, v and
    output projections with biases: the same products as c_attn and c_proj) and a GELU (tanh)
    MLP, a final LayerNorm and the LM head tied to the token table. Keras' own initialisation
    (no --init: its variables do not map one to one onto ddtrain's)."""
    import keras
    from keras import layers as L
    from keras import ops

    g = dt.gpt_config(spec)
    width, heads, context, vocab = g["width"], g["heads"], g["context"], g["vocab"]

    class GPT(keras.Model):
        def __init__(self):
            super().__init__()
            self.wte = L.Embedding(vocab, width)
            self.wpe = L.Embedding(context, width)
            self.blocks = []
            for _ in range(g["layers"]):
                self.blocks.append((
                    L.LayerNormalization(epsilon=1e-5),
                    L.MultiHeadAttention(heads, width // heads, dropout=g["dropout"]),
                    L.LayerNormalization(epsilon=1e-5),
                    L.Dense(4 * width, activation=lambda x: keras.activations.gelu(
                        x, approximate=True)),
                    L.Dense(width),
                    L.Dropout(g["dropout"])))
            self.ln_f = L.LayerNormalization(epsilon=1e-5)

        def call(self, ids, training=False):
            x = self.wte(ids) + self.wpe(ops.arange(ops.shape(ids)[1]))
            for ln_1, attn, ln_2, fc, proj, drop in self.blocks:
                h = ln_1(x)
                x = x + attn(h, h, use_causal_mask=True, training=training)
                x = x + drop(proj(fc(ln_2(x))), training=training)
            return ops.matmul(self.ln_f(x), ops.transpose(self.wte.embeddings))

    model = GPT()
    model(ops.zeros((1, context), dtype="int32"))  # builds the variables
    return model


def run_tensorflow(args, spec):
    import numpy as np
    import tensorflow as tf
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    if spec.gpt:
        windows = dt.token_windows(dt.load_tokens(args.data), dt.gpt_config(spec)["context"])
        x, y = windows[:, :-1].astype(np.int32), windows[:, 1:].astype(np.int64)
    else:
        x, y = dt.load_dataset(args.data)
        if spec.input[0] == "image":
            c, h, w = spec.input[1:]
            x = x.reshape(-1, c, h, w).transpose(0, 2, 3, 1).copy()  # NHWC, Keras' layout
        y = y.astype(np.int64)
    B, total = args.global_batch, args.warmup_steps + args.steps
    model = keras_model(spec)
    lr_at = schedule(args, total)

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.py_function(lambda s: np.float32(lr_at(int(s))), [step], tf.float32)

    if args.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=Schedule(), momentum=args.momentum,
                                   weight_decay=args.weight_decay or None)
    else:
        opt = keras.optimizers.AdamW(learning_rate=Schedule(), weight_decay=args.weight_decay,
                                     beta_1=args.beta1, beta_2=args.beta2, epsilon=args.eps,
                                     global_clipnorm=args.clip_grad_norm or None)
        if args.weight_decay_on == "matrices":
            opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=opt,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((x, y))
    if args.order == "shuffled":
        data = data.shuffle(len(x), seed=args.seed)
    data = data.batch(B, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)

    marks = {}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == args.warmup_steps - 1:
                marks["warm"] = time.perf_counter()
            marks["end"] = time.perf_counter()
            marks["loss"] = (logs or {}).get("loss")

    started = time.perf_counter()
    marks["warm"] = started
    model.fit(data, steps_per_epoch=total, epochs=1, verbose=0, callbacks=[Timer()])
    seconds = marks["end"] - marks["warm"]
    loss = marks.get("loss")
    result = {"framework": "tensorflow", "version": tf.__version__,
              "keras_version": keras.__version__, "jit_compile": bool(model.jit_compile),
              "warmup_seconds": round(marks["warm"] - started, 3),
              "final_train_loss": None if loss is None else round(float(loss), 5)}
    if args.eval_data and spec.gpt:
        w = dt.token_windows(dt.load_tokens(args.eval_data), dt.gpt_config(spec)["context"])
        result["eval_loss"] = round(float(model.evaluate(
            w[:, :-1].astype(np.int32), w[:, 1:].astype(np.int64), batch_size=64, verbose=0)),
            5)
    return result, seconds


# --------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description="PyTorch / TensorFlow peer of ddtrain's benches")
    p.add_argument("--framework", required=True, choices=("torch", "tensorflow"))
    p.add_argument("--model", required=True, help="ddtrain model text or preset")
    p.add_argument("--data", required=True, help="ddtrain HDF5 data: file, comma list or glob")
    p.add_argument("--eval-data", help="token models: report the validation loss on it")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (and cores)")
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--weight-decay-on", choices=("matrices", "all"), default="matrices")
    p.add_argument("--clip-grad-norm", type=float, default=0.0)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--lr-warmup-steps", type=int, default=0)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--init", help="torch: start from this ddtrain model file")
    p.add_argument("--save", help="torch: write the final weights as a ddtrain model file")
    p.add_argument("--order", choices=("shuffled", "sequential"), default="shuffled")
    p.add_argument("--compile", action="store_true", help="torch: torch.compile the step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    pin(args.threads)
    spec = dt.parse(args.model)
    if args.framework == "torch":
        result, seconds = run_torch(args, spec)
    else:
        result, seconds = run_tensorflow(args, spec)
    samples = args.steps * args.global_batch
    context = dt.gpt_config(spec)["context"] if spec.gpt else \
        (spec.input[1] if spec.is_tokens else 0)
    result.update(model=spec.text, threads=args.threads, global_batch=args.global_batch,
                  steps=args.steps, warmup_steps=args.warmup_steps, seconds=round(seconds, 3),
                  samples_per_s=round(samples / seconds, 2),
                  peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if context:
        result["tokens_per_s"] = round(samples * context / seconds, 1)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        log(result)


if __name__ == "__main__":
    main()
