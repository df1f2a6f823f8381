#!/usr/bin/python3
"""vs_pytorch_peer.py - the PyTorch side of ddtrain's peer comparison (see bench/vs-pytorch).

Trains the same MLP as ddtrain on the same HDF5 data with plain PyTorch (DDP over gloo for
2 ranks), so the two can be compared on throughput, memory and time-to-accuracy.

What it does, kept close to what a PyTorch user would write for a data set of this size:
  * loads every shard's /features (float32 N x D) and /labels (int32 N) into torch tensors at
    start-up (each rank holds the whole data set, as with a TensorDataset);
  * builds nn.Sequential from a ddtrain model spec ("784-256-relu-128-relu-10"), initialised
    like ddtrain (He-normal before relu/gelu, Xavier-uniform otherwise, zero biases);
  * each step takes a shuffled, rank-disjoint batch of row indices from a DistributedSampler
    and gathers those rows from the in-memory tensors; CrossEntropy loss, SGD with momentum 0.9;
  * the learning rate follows ddtrain's schedule (--lr-schedule constant|cosine with a linear
    --lr-warmup-steps warm-up; the same formula as lr_schedule_at() in src/engine/optim.c);
  * --device cuda keeps the data set, the model and the steps on the GPU (1 rank);
  * --steps mode: warm-up steps, then a timed region of --steps steps (start-up and warm-up
    excluded); --epochs mode: whole epochs, evaluating after each for time-to-accuracy.

Run it with Debian's interpreter, /usr/bin/python3 (the pyenv python3 on PATH has no torch).
torchrun is broken with torch 1.13 + Python 3.11, so ranks are started with
torch.multiprocessing.spawn. Ranks are pinned to disjoint cores when they fit, as mpirun
pins ddtrain's ranks, and OpenBLAS gets the same kernel upgrade ddtrain applies to itself
(see maybe_reexec_for_openblas).

    /usr/bin/python3 bench/vs_pytorch_peer.py --data 'data/fashion-train-*.h5' \
        --model 784-256-relu-128-relu-10 --micro-batch 128 --steps 1000 --ranks 2 --json
    /usr/bin/python3 bench/vs_pytorch_peer.py --data 'data/fashion-train-*.h5' \
        --eval-data data/fashion-test.h5 --epochs 10 --lr-schedule cosine --lr-warmup-steps 200
"""

import os

# One BLAS thread per process: torch's own OpenMP threads (--threads) do the parallel work, and
# OpenBLAS pthreads on top of them oversubscribe the cores. Must be set before torch loads.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import contextlib
import glob
import json
import math
import resource
import socket
import sys
import time


# OpenBLAS kernels by rough capability level (1 SSE, 2 AVX, 3 AVX2+FMA, 4 AVX-512), and the
# kernel to ask for at each level: the same table as ddtrain's src/driver/blas_setup.c.
KERNEL_LEVELS = {"skylakex": 4, "cooperlake": 4, "sapphirerapids": 4, "haswell": 3, "zen": 3,
                 "skylake": 3, "sandybridge": 2, "bulldozer": 2, "piledriver": 2}
KERNEL_FOR_LEVEL = {4: "SkylakeX", 3: "Haswell", 2: "Sandybridge"}


def cpu_level():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return 1
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        return 4
    if {"avx2", "fma"} <= set(flags):
        return 3
    return 2 if "avx" in flags else 1


def maybe_reexec_for_openblas():
    """Gives torch the same OpenBLAS kernel ddtrain gives itself. torch's matrix products go
    through the system libblas.so.3 (OpenBLAS), which may run a kernel weaker than the CPU
    supports: OpenBLAS 0.3.21 falls back to Prescott (SSE3) on CPUs newer than itself, and
    machine images sometimes pin OPENBLAS_CORETYPE=Haswell on AVX-512 CPUs. Like ddtrain, if
    the kernel is weaker, re-run this script once with OPENBLAS_CORETYPE set to the best kernel
    for the CPU (the variable is only read when the library loads). DDTRAIN_BLAS_FIX=0 keeps
    whatever OpenBLAS would use, for ddtrain and for this peer alike."""
    if os.environ.get("DDTRAIN_BLAS_FIX") == "0" or os.environ.get("VS_PYTORCH_BLAS_REEXEC"):
        return
    core = openblas_core()
    if not core:
        return  # not OpenBLAS
    want = cpu_level()
    if KERNEL_LEVELS.get(core.lower(), 1) >= want or want not in KERNEL_FOR_LEVEL:
        return
    os.environ["VS_PYTORCH_BLAS_REEXEC"] = core
    os.environ["OPENBLAS_CORETYPE"] = KERNEL_FOR_LEVEL[want]
    os.execv(sys.executable, [sys.executable] + sys.argv)


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data

def expand_data_spec(spec):
    """A path, a comma-separated list of paths, or a glob (sorted), as ddtrain's dataset_open()."""
    paths = []
    for part in (p for p in spec.split(",") if p):
        if any(c in part for c in "*?["):
            matched = sorted(glob.glob(part))
            if not matched:
                sys.exit(f"vs_pytorch_peer: --data pattern '{part}' matches no file")
            paths.extend(matched)
        else:
            paths.append(part)
    if not paths:
        sys.exit("vs_pytorch_peer: --data is empty")
    return paths


def load_dataset(spec):
    """Loads all shards of `spec` as (features float32 N x D, labels int64 N, num_classes).
    Shards are read straight into one preallocated array, so the data is held once."""
    import h5py
    import numpy as np
    import torch

    files, rows, width, classes = [], 0, None, None
    for path in expand_data_spec(spec):
        if not os.path.isfile(path):
            sys.exit(f"vs_pytorch_peer: {path}: no such file")
        f = h5py.File(path, "r")
        if "features" not in f or "labels" not in f:
            sys.exit(f"vs_pytorch_peer: {path}: needs /features and /labels")
        x, y = f["features"], f["labels"]
        if x.dtype != np.float32 or x.ndim != 2:
            sys.exit(f"vs_pytorch_peer: {path}: /features must be float32 N x D")
        if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
            sys.exit(f"vs_pytorch_peer: {path}: /labels must be integer class ids, one per row")
        c = int(f.attrs.get("num_classes", 0))
        if width is not None and x.shape[1] != width:
            sys.exit(f"vs_pytorch_peer: {path}: {x.shape[1]} features, other shards have {width}")
        if classes is not None and c != classes:
            sys.exit(f"vs_pytorch_peer: {path}: num_classes {c}, other shards have {classes}")
        files.append(f)
        rows, width, classes = rows + x.shape[0], x.shape[1], c

    features = np.empty((rows, width), dtype=np.float32)
    labels = np.empty(rows, dtype=np.int64)
    at = 0
    for f in files:
        n = f["features"].shape[0]
        f["features"].read_direct(features, dest_sel=np.s_[at:at + n])
        labels[at:at + n] = f["labels"][...]
        at += n
        f.close()
    if classes <= 0:
        classes = int(labels.max()) + 1
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        sys.exit(f"vs_pytorch_peer: {spec}: a label is outside [0, {classes})")
    return torch.from_numpy(features), torch.from_numpy(labels), classes


def openblas_core():
    """The OpenBLAS kernel set torch's BLAS runs (e.g. "SkylakeX"), or "" if not OpenBLAS."""
    try:
        import ctypes
        lib = ctypes.CDLL("libblas.so.3")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return ""


# --------------------------------------------------------------------------------------------
# Model

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid")


def parse_model_spec(text):
    """ddtrain's spec grammar -> (input width, [("dense", n) | (activation,) | ("dropout", p)])."""
    tokens = text.split("-")
    try:
        width = int(tokens[0])
    except ValueError:
        sys.exit(f"vs_pytorch_peer: model spec '{text}' must start with the input width")
    layers = []
    for tok in tokens[1:]:
        if tok.isdigit() and int(tok) > 0:
            layers.append(("dense", int(tok)))
        elif tok in ACTIVATIONS:
            layers.append((tok,))
        elif tok.startswith("dropout"):
            rate = tok[len("dropout"):] or "0.5"  # "dropout" = 0.5, "dropout0.2" = 0.2
            try:
                p = float(rate)
            except ValueError:
                p = -1.0
            if not 0.0 <= p < 1.0:
                sys.exit(f"vs_pytorch_peer: bad dropout rate in '{tok}'")
            layers.append(("dropout", p))
        else:
            sys.exit(f"vs_pytorch_peer: model spec '{text}': unknown token '{tok}'")
    if not any(l[0] == "dense" for l in layers) or layers[-1][0] == "dropout":
        sys.exit(f"vs_pytorch_peer: model spec '{text}' needs a dense layer and must end with "
                 "a dense layer or an activation")
    return width, layers


def build_model(text, init):
    """nn.Sequential for a spec; init "ddtrain" mirrors model_init_parameters(), "torch" keeps
    nn.Linear's default init."""
    import torch.nn as nn

    width, layers = parse_model_spec(text)
    modules, inputs = [], width
    for i, layer in enumerate(layers):
        if layer[0] == "dense":
            lin = nn.Linear(inputs, layer[1])
            if init == "ddtrain":
                following = next((l[0] for l in layers[i + 1:] if l[0] != "dropout"), None)
                if following in ("relu", "gelu"):
                    nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / inputs))
                else:
                    nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
            modules.append(lin)
            inputs = layer[1]
        elif layer[0] == "dropout":
            modules.append(nn.Dropout(layer[1]))
        else:
            modules.append({"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                            "sigmoid": nn.Sigmoid}[layer[0]]())
    return nn.Sequential(*modules), width, inputs


def evaluate(model, x, y, chunk=4096):
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            correct += int((model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
    model.train()
    return correct / len(x)


# --------------------------------------------------------------------------------------------
# Training (one rank)

def lr_at(args, step, total_steps):
    """ddtrain's lr_schedule_at() (src/engine/optim.c) for step 0, 1, ...: a linear warm-up
    from lr/warmup to lr over --lr-warmup-steps, then constant, or a cosine from lr down to
    --min-lr reached at total_steps."""
    warmup = args.lr_warmup_steps
    if step < warmup:
        return args.lr * (step + 1) / warmup
    if args.lr_schedule == "constant":
        return args.lr
    span = total_steps - warmup
    progress = min(1.0, (step - warmup) / span) if span > 0 else 1.0
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_stream(sampler, micro_batch, first_epoch=0):
    """Yields (epoch, index tensor of micro_batch rows) forever: each epoch the sampler's
    shuffled, rank-disjoint row order cut into full micro-batches (the ragged tail dropped, as
    ddtrain does). Same number of batches on every rank."""
    import torch

    epoch = first_epoch
    while True:
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        count = len(order) // micro_batch
        if count == 0:
            sys.exit("vs_pytorch_peer: fewer rows per rank than --micro-batch")
        for batch in order[:count * micro_batch].view(count, micro_batch):
            yield epoch, batch
        epoch += 1


def run_rank(rank, args, port, results_path):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.utils.data.distributed import DistributedSampler

    world = args.ranks
    cuda = args.device == "cuda"
    torch.set_num_threads(args.threads)
    cpus = sorted(os.sched_getaffinity(0))
    if args.bind == "auto" and world * args.threads <= len(cpus):
        os.sched_setaffinity(0, cpus[rank * args.threads:(rank + 1) * args.threads])
    if world > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)

    t_start = time.perf_counter()
    x, y, classes = load_dataset(args.data)
    eval_x = eval_y = None
    if args.eval_data:
        eval_x, eval_y, _ = load_dataset(args.eval_data)
    if cuda:
        x, y = x.cuda(), y.cuda()
        if eval_x is not None:
            eval_x, eval_y = eval_x.cuda(), eval_y.cuda()
        torch.cuda.synchronize()
    load_seconds = time.perf_counter() - t_start

    torch.manual_seed(args.seed)  # same initial parameters on every rank (DDP broadcasts too)
    net, in_width, out_width = build_model(args.model, args.init)
    if in_width != x.shape[1]:
        sys.exit(f"vs_pytorch_peer: model input width {in_width}, data has {x.shape[1]} features")
    if out_width != classes:
        sys.exit(f"vs_pytorch_peer: model output width {out_width}, data has {classes} classes")
    if eval_x is not None and eval_x.shape[1] != in_width:
        sys.exit("vs_pytorch_peer: --eval-data has a different feature width")
    if cuda:
        net = net.cuda()
        # fp32 means fp32 (PyTorch's default for matrix products), tf32 the tensor-core mode;
        # bf16 runs forward and loss under autocast, as PyTorch users train in bf16.
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    autocast_bf16 = cuda and args.precision == "bf16"
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    sampler = DistributedSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    steps_per_epoch = (len(x) // world) // args.micro_batch
    total_steps = (args.epochs * steps_per_epoch if args.epochs
                   else args.warmup_steps + args.steps)  # the length the schedule decays over
    step_count = 0

    def step(batch):
        nonlocal step_count
        lr = lr_at(args, step_count, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        step_count += 1
        if cuda:
            batch = batch.cuda(non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with (torch.autocast("cuda", dtype=torch.bfloat16) if autocast_bf16
              else contextlib.nullcontext()):
            loss = loss_fn(model(x[batch]), y[batch])  # gather rows from the in-memory tensors
        loss.backward()  # DDP all-reduces (averages) gradients here
        opt.step()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()
        if world > 1:
            dist.barrier()

    result = {"framework": "pytorch", "ranks": world, "threads": args.threads,
              "micro_batch": args.micro_batch, "global_batch": args.micro_batch * world,
              "model": args.model, "lr": args.lr, "lr_schedule": args.lr_schedule,
              "lr_warmup_steps": args.lr_warmup_steps, "device": args.device,
              "precision": args.precision,
              "torch_version": torch.__version__,
              "openblas_core": openblas_core(),
              "openblas_core_replaced": os.environ.get("VS_PYTORCH_BLAS_REEXEC", ""),
              "load_seconds": round(load_seconds, 3)}
    stream = batch_stream(sampler, args.micro_batch)
    if args.epochs:
        # Time-to-accuracy: whole epochs, no warm-up; evaluate (rank 0) after each epoch.
        history, train_seconds = [], 0.0
        sync()
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            t_epoch = time.perf_counter()
            for _ in range(steps_per_epoch):
                _, batch = next(stream)
                loss = step(batch)
            sync()
            train_seconds += time.perf_counter() - t_epoch
            entry = {"epoch": epoch + 1, "loss": round(float(loss), 4),
                     "train_seconds": round(train_seconds, 3)}
            if eval_x is not None and rank == 0:
                entry["eval_accuracy"] = round(evaluate(net, eval_x, eval_y), 4)
            entry["elapsed_seconds"] = round(time.perf_counter() - t0, 3)
            if rank == 0:
                log("epoch %d  loss %.4f  %s elapsed %.2f s (train %.2f s)" % (
                    epoch + 1, entry["loss"],
                    "eval_accuracy %.4f " % entry["eval_accuracy"] if "eval_accuracy" in entry
                    else "", entry["elapsed_seconds"], train_seconds))
            history.append(entry)
            sync()
        steps, seconds = args.epochs * steps_per_epoch, train_seconds
        result["epochs"] = history
    else:
        for _ in range(args.warmup_steps):
            step(next(stream)[1])
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(next(stream)[1])
        sync()
        steps, seconds = args.steps, time.perf_counter() - t0
        result["warmup_steps"] = args.warmup_steps
    result.update(steps=steps, seconds=round(seconds, 4),
                  samples_per_s=round(steps * args.micro_batch * world / seconds, 1))
    if eval_x is not None:
        result["eval_accuracy"] = round(evaluate(net, eval_x, eval_y), 4)

    # Peak RSS of this rank (ru_maxrss is KiB on Linux); the job's figure is the max over ranks.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rss)
        result["peak_rss_bytes_per_rank"] = gathered
        rss = max(gathered)
    result["peak_rss_bytes"] = rss
    if rank == 0:
        with open(results_path, "w") as f:
            json.dump(result, f)
    if world > 1:
        # Skip interpreter teardown: with torch 1.13, freeing the DDP reducer's gloo process
        # group at exit can deadlock (its worker thread waits for the GIL the destructor holds;
        # seen here once in a few runs). Every collective is complete, so just leave.
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# --------------------------------------------------------------------------------------------
# Command line

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description="PyTorch peer of ddtrain: same MLP, same HDF5 data.")
    p.add_argument("--data", required=True, help="HDF5 file, comma-separated list, or glob")
    p.add_argument("--model", default="784-256-relu-128-relu-10", help="ddtrain model spec")
    p.add_argument("--micro-batch", type=int, default=128, help="rows per rank per step")
    p.add_argument("--steps", type=int, default=1000, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before timing (not ddtrain's LR warm-up)")
    p.add_argument("--epochs", type=int, default=0,
                   help="train whole epochs instead of --steps (time-to-accuracy)")
    p.add_argument("--ranks", type=int, default=1, choices=(1, 2))
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="as ddtrain's --lr-schedule (cosine decays over all --epochs)")
    p.add_argument("--lr-warmup-steps", type=int, default=0,
                   help="linear LR warm-up steps, as ddtrain's --warmup-steps")
    p.add_argument("--min-lr", type=float, default=0.0, help="cosine schedule: final LR")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: data, model and steps on the GPU (1 rank)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="GPU matrix arithmetic, as ddtrain's --precision: fp32 (TF32 off), tf32 "
                        "(torch.backends.cuda.matmul.allow_tf32), bf16 (torch.autocast); cuda only")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--init", choices=("ddtrain", "torch"), default="ddtrain",
                   help="parameter init: ddtrain's (default) or nn.Linear's")
    p.add_argument("--bind", choices=("auto", "none"), default="auto",
                   help="auto: pin each rank to its own cores when they fit (as mpirun does)")
    p.add_argument("--eval-data", help="HDF5 data to report accuracy on at the end")
    p.add_argument("--json", action="store_true", help="print one JSON line of results")
    args = p.parse_args()
    if args.micro_batch < 1 or args.steps < 1 or args.warmup_steps < 0 or args.threads < 1 \
            or args.epochs < 0 or args.lr_warmup_steps < 0:
        p.error("--micro-batch, --steps, --threads must be >= 1; --warmup-steps, "
                "--lr-warmup-steps, --epochs >= 0")
    if args.device == "cuda" and args.ranks != 1:
        p.error("--device cuda runs 1 rank")
    if args.precision != "fp32" and args.device != "cuda":
        p.error("--precision %s needs --device cuda" % args.precision)

    # Fail on a bad spec or missing shard here, not inside spawned ranks.
    parse_model_spec(args.model)
    for spec in filter(None, (args.data, args.eval_data)):
        for path in expand_data_spec(spec):
            if not os.path.isfile(path):
                sys.exit(f"vs_pytorch_peer: {path}: no such file")

    maybe_reexec_for_openblas()
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit(f"vs_pytorch_peer: --device cuda: torch {torch.__version__} sees no GPU "
                     "(Debian's python3-torch is built without CUDA)")
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="vs_pytorch_") as tmp:
        if args.ranks == 1:
            run_rank(0, args, 0, tmp.name)
        else:
            import torch.multiprocessing as mp
            try:
                mp.spawn(run_rank, args=(args, free_port(), tmp.name), nprocs=args.ranks)
            except mp.ProcessRaisedException as e:
                sys.exit(f"vs_pytorch_peer: a rank failed:\n{e}")
            except mp.ProcessExitedException as e:
                sys.exit(f"vs_pytorch_peer: a rank failed ({e}); see its message above")
        result = json.load(tmp)

    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print("pytorch %s: %d rank(s) x %d thread(s), micro-batch %d, %d steps in %.2f s: "
              "%.0f samples/s, peak RSS %.0f MiB%s" % (
                  result["torch_version"], result["ranks"], result["threads"],
                  result["micro_batch"], result["steps"], result["seconds"],
                  result["samples_per_s"], result["peak_rss_bytes"] / 2**20,
                  ", eval accuracy %.4f" % result["eval_accuracy"]
                  if "eval_accuracy" in result else ""))


if __name__ == "__main__":
    main()
