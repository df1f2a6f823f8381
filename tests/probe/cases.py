"""cases.py - the adversarial probe's cases, by class (see adversarial.sh), and the fixtures
they copy. A case is one ddtrain command with its inputs, what it should do, and what its
error must name; probe.py runs and classifies it.

Expectations:
  ok      exit 0, and `check` (the effect) holds
  ends    a non-zero exit (a rank was killed: mpirun's report is the message)
  fail    a non-zero exit on every rank with one "ddtrain: error" line naming each of `names`
  usage   the same with exit 2 (README: "2 for usage errors")
  either  exit 0 (with `check`), or a failure as for fail
  any     ended by the probe's own signal: only damage, crashes, hangs and leftovers count
"""
import os
import random
import re
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np

import craft

CLASSES = ["grammar", "images", "text", "tokens", "generate", "damaged", "stalls", "outputs",
           "numeric"]
HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "..", "README.md")
GPT = "gpt(layers=1,heads=2,width=16,context=16,vocab=256)"
GPT1000 = "gpt(layers=1,heads=2,width=16,context=16,vocab=1000)"
CNN = "1x8x8-conv(4,k3,p1)-bn-relu-maxpool(2)-flatten-4"
MLP = "16-8-relu-4"
# what an error about a FIFO, device or folder given as an input says (issue 22 item 3: refuse
# anything that is not a regular file, naming it, before reading it)
NOT_REGULAR = ("regular", "FIFO", "device", "special", "director")
TRAIN = ["train", "--data", "d.h5", "--model", MLP, "--global-batch", "64", "--steps", "2",
         "--log-every", "0"]


class Named:
    """A name an error must contain, found by a regular expression, shown as its label."""

    def __init__(self, pattern, label):
        self.regex, self.label = re.compile(pattern), label


class Case:
    def __init__(self, cls, name, args, expect="fail", names=(), ranks=1, timeout=20,
                 setup=None, outputs=(), mutable=(), check=None, why="", env=None,
                 prestop=None, controller=None, timing=False, hard_extra=0.0, strict=False,
                 build_args=None, expected_signal=None, clean_note="", kills=False, once=True):
        self.cls, self.name, self.args, self.expect = cls, name, list(args), expect
        self.names = list(names)
        self.ranks, self.timeout, self.setup = ranks, timeout, setup
        self.outputs, self.mutable, self.check = list(outputs), list(mutable), check
        self.why = why or name
        self.env = dict(env or {})
        self.prestop, self.controller = prestop, controller
        self.timing = timing
        self.exclusive = timing
        self.hard_extra = hard_extra
        self.strict = strict or timing
        self.build_args = build_args
        self.expected_signal = expected_signal
        self.clean_note = clean_note
        self.once = once  # the error must be printed once (bad input); not for stalls
        # the case ends a process with SIGKILL on purpose: its temporary files are noted only
        self.kills = kills or bool(prestop and prestop[1] == "KILL") or "DDTRAIN_DEBUG_KILL" in self.env
        self.describe = getattr(setup, "text", "")
        self.id = ""

    def bound(self, build):
        return self.timeout * (1 if self.strict or not build.sanitized else 2.5)


# ---- setup steps -----------------------------------------------------------------------------

def step(text, fn):
    fn.text = text
    return fn


def setup(*steps):
    steps = [s for s in steps if s]

    def run(ctx):
        for s in steps:
            s(ctx)
    return step("; ".join(s.text for s in steps), run)


def cp(name, dest=None):
    return step(f"copy of {name}" + (f" as {dest}" if dest else ""), lambda c: c.cp(name, dest))


def fifo(name):
    return step(f"FIFO {name}", lambda c: c.fifo(name))


def node(name, kind):
    return step(f"mknod {name} ({kind}, in the case folder)", lambda c: c.node(name, kind))


def link(target, name):
    return step(f"symlink {name} -> {target}", lambda c: c.link(target, name))


def hardlink(existing, name):
    return step(f"hard link {name} = {existing}", lambda c: c.hardlink(existing, name))


def write(name, data, text=None):
    size = len(data)
    return step(text or f"{name} ({size} bytes)", lambda c: c.write(name, data))


def mkdir(name):
    return step(f"folder {name}", lambda c: c.mkdir(name))


def call(text, fn):
    return step(text, fn)


# ---- checks ----------------------------------------------------------------------------------

def h5_rows(path, rows, dataset="features"):
    def check(ctx, run):
        p = ctx.path(path)
        if not os.path.isfile(p):
            return f"{path} was not written"
        try:
            with h5py.File(p, "r") as f:
                n = f[dataset].shape[0]
        except Exception as e:
            return f"{path} does not read: {e}"
        if rows is not None and n != rows:
            return f"{path} holds {n} rows, expected {rows}"
        return None
    return check


def exists(path):
    def check(ctx, run):
        return None if os.path.lexists(ctx.path(path)) else f"{path} was not written"
    return check


def printed_bytes(prompt_bytes, tokens):
    def check(ctx, run):
        out = open(ctx.stdout_path, "rb").read()
        expected = prompt_bytes + tokens + 1
        return None if len(out) == expected else f"printed {len(out)} bytes, expected {expected}"
    return check


def printed_ids(count):
    def check(ctx, run):
        ids = run["stdout"].split()
        if len(ids) != count or not all(i.isdigit() for i in ids):
            return f"printed {len(ids)} ids ({run['stdout'][:80]!r}), expected {count}"
        if any(int(i) >= 1000 for i in ids):
            return f"printed an id past the vocabulary: {run['stdout'][:80]!r}"
        return None
    return check


# ---- fixtures --------------------------------------------------------------------------------

def make_fixtures(binary, fx, env):
    stamp = os.path.join(fx, ".made-by")
    identity = f"{binary} {os.path.getmtime(binary)}"
    if os.path.exists(stamp) and open(stamp).read() == identity:
        return
    shutil.rmtree(fx, ignore_errors=True)
    os.makedirs(fx)

    def ddtrain(*args):
        subprocess.run([binary] + list(args), cwd=fx, env=env, check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    ddtrain("synth", "-o", "d.h5", "--rows", "512", "--features", "16", "--classes", "4")
    ddtrain("synth", "-o", "e.h5", "--rows", "128", "--features", "16", "--classes", "4",
            "--seed", "2")
    ddtrain("synth", "-o", "big.h5", "--rows", "8192", "--features", "16", "--classes", "4",
            "--seed", "3")
    craft.image_dataset(os.path.join(fx, "img.h5"))
    craft.token_dataset(os.path.join(fx, "tok.h5"), "good", n=4000, vocab=256)
    craft.token_dataset(os.path.join(fx, "tok1000.h5"), "good", n=4000, vocab=1000)
    quiet = ["--log-every", "0", "--steps", "2"]
    ddtrain("train", "--data", "d.h5", "--model", MLP, "--global-batch", "64", *quiet,
            "--save", "mlp.h5")
    ddtrain("train", "--data", "img.h5", "--model", CNN, "--global-batch", "8", *quiet,
            "--save", "cnn.h5")
    ddtrain("train", "--data", "tok.h5", "--model", GPT, "--global-batch", "8", *quiet,
            "--optimizer", "adamw", "--lr", "0.01", "--save", "gpt.h5")
    ddtrain("train", "--data", "tok1000.h5", "--model", GPT1000, "--global-batch", "8", *quiet,
            "--save", "gpt1000.h5")
    ddtrain("train", "--data", "d.h5", "--model", MLP, "--global-batch", "64", "--log-every", "0",
            "--steps", "4", "--checkpoint-dir", "ckpt", "--checkpoint-every", "2")
    with open(README, "rb") as f:
        open(os.path.join(fx, "text.txt"), "wb").write(f.read(20000))
    rng = np.random.default_rng(5)
    craft.raw_tokens(os.path.join(fx, "tokens.bin"), rng.integers(0, 50257, 3000))
    craft.llmc_file(os.path.join(fx, "llmc.bin"), rng.integers(0, 50257, 3000))
    craft.llmc_file(os.path.join(fx, "llmc2.bin"), rng.integers(0, 128256, 3000), version=2)
    craft.idx_file(os.path.join(fx, "img.idx"), (10, 4, 4))
    craft.idx_file(os.path.join(fx, "lab.idx"), (10,), bytes([i % 3 for i in range(10)]))
    craft.idx_file(os.path.join(fx, "img.idx.gz"), (10, 4, 4), compress=True)
    craft.idx_file(os.path.join(fx, "lab.idx.gz"), (10,), bytes([i % 3 for i in range(10)]),
                   compress=True)
    craft.image_folder(os.path.join(fx, "images"))
    open(stamp, "w").write(identity)


def fixture(fx, name):
    return open(os.path.join(fx, name), "rb").read()


# ---- grammar ---------------------------------------------------------------------------------

def data_for(spec):
    s = spec.strip()
    if "gpt(" in s or s.startswith("tokens(") or s.startswith("gpt-"):
        return "tok.h5"
    if re.match(r"\d+x\d+x\d+", s):
        return "img.h5"
    return "d.h5"


def grammar_cases(fx):
    out = []

    def g(name, spec, expect="usage", names=("--model",), why="", ranks=1, timeout=20,
          data=None, extra=(), steps=()):
        data = data or data_for(spec)
        out.append(Case("grammar", name,
                        ["train", "--data", data, "--model", spec, "--global-batch", "8",
                         "--dry-run", *extra],
                        expect, names, ranks=ranks, timeout=timeout,
                        setup=setup(cp(data), *steps), why=why or f"--model {spec[:80]!r}"))

    valid = [MLP, "16-32-gelu-16-tanh-4", "16-dropout0.1-4", "16-ln-4", "16-bn-sigmoid-4",
             "16-2*(16-relu)-4", CNN, "1x8x8-conv(4,k3,s2,p1,nobias)-bn-relu-gap-4",
             "1x8x8-res(conv(1,k3,p1)-relu)-flatten-4",
             "1x8x8-conv(4,k3,p1)-res(conv(4,k3,p1)|conv(4,k1))-avgpool(2,s2)-flatten-4",
             GPT, "tokens(16,256)-embed(16)-attn(2)-ln-lmhead", "gpt-tiny",
             "gpt(layers=1,heads=2,width=16,context=16,vocab=256,dropout=0.1)"]
    for spec in valid:
        g(f"valid {spec[:50]}", spec, "ok", ())
    bad = [
        # the issue's
        ("stride twice", "1x8x8-conv(8,k3,s1,s2)-flatten-4", ("s2", "stride", "twice", "again")),
        ("conv with 40 arguments", "1x8x8-conv(8,k3," + ",".join(["p1"] * 38) + ")-flatten-4",
         ("p1", "padding", "twice", "again")),
        ("dropout then -1", "16-dropout-1-4", ("dropout",)),
        ("gpt key twice", "gpt(layers=1,layers=2,heads=2,width=16,context=16,vocab=256)",
         ("layers",)),
        ("gpt context 1", "gpt(layers=1,heads=2,width=16,context=1,vocab=256)", ("context",)),
        ("shape overflow", "2097152x2097152x2097152-flatten-10", ()),
        # conv
        ("conv without kernel", "1x8x8-conv(8)-flatten-4", ("conv",)),
        ("conv 0 channels", "1x8x8-conv(0,k3)-flatten-4", ()),
        ("conv -1 channels", "1x8x8-conv(-1,k3)-flatten-4", ()),
        ("conv k0", "1x8x8-conv(8,k0)-flatten-4", ()),
        ("conv k-1", "1x8x8-conv(8,k-1)-flatten-4", ()),
        ("conv s0", "1x8x8-conv(8,k3,s0)-flatten-4", ()),
        ("conv p-1", "1x8x8-conv(8,k3,p-1)-flatten-4", ()),
        ("conv kernel past the image", "1x8x8-conv(8,k9)-flatten-4", ()),
        ("conv unknown argument", "1x8x8-conv(8,k3,x1)-flatten-4", ("x1",)),
        ("conv nobias twice", "1x8x8-conv(8,k3,nobias,nobias)-flatten-4", ("nobias",)),
        ("conv kernel twice", "1x8x8-conv(8,k3,k5)-flatten-4", ("k5", "kernel", "twice")),
        ("conv unbalanced", "1x8x8-conv(8,k3,p1-flatten-4", ()),
        ("conv no opening", "1x8x8-conv8,k3)-flatten-4", ()),
        ("conv empty", "1x8x8-conv()-flatten-4", ()),
        ("conv empty first", "1x8x8-conv(,k3)-flatten-4", ()),
        ("conv empty middle", "1x8x8-conv(8,,k3)-flatten-4", ()),
        ("conv trailing comma", "1x8x8-conv(8,k3,)-flatten-4", ()),
        ("conv exponent", "1x8x8-conv(1e3,k3)-flatten-4", ()),
        ("conv fraction", "1x8x8-conv(8.5,k3)-flatten-4", ()),
        ("conv 2^64 channels", "1x8x8-conv(99999999999999999999,k3)-flatten-4", ()),
        ("conv 2^31 channels", "1x8x8-conv(2147483648,k1)-flatten-4", ()),
        ("conv 2^62 kernel", "1x8x8-conv(8,k4611686018427387904)-flatten-4", ()),
        # pooling
        ("maxpool 0", "1x8x8-maxpool(0)-flatten-4", ()),
        ("maxpool -2", "1x8x8-maxpool(-2)-flatten-4", ()),
        ("maxpool past the image", "1x8x8-maxpool(9)-flatten-4", ()),
        ("maxpool s0", "1x8x8-maxpool(2,s0)-flatten-4", ()),
        ("maxpool padding past half the kernel", "1x8x8-maxpool(2,p5)-flatten-4", ()),
        ("maxpool stride twice", "1x8x8-maxpool(2,s2,s2)-flatten-4", ()),
        ("avgpool with a kernel argument", "1x8x8-avgpool(2,k3)-flatten-4", ()),
        ("gap on flat features", "16-gap-4", ()),
        ("dense on images", "1x8x8-4", ()),
        ("attn on images", "1x8x8-attn(2)-flatten-4", ()),
        # residual and repeat
        ("empty res", "16-res()-4", ()),
        ("res with an empty body", "16-res(|)-4", ()),
        ("res with three branches", "16-res(16|16|16)-4", ()),
        ("res unbalanced", "16-res(relu-4", ()),
        ("res shapes disagree", "16-res(8|4)-4", ()),
        ("repeat 0", "16-0*(16)-4", ()),
        ("repeat -1", "16--1*(16)-4", ()),
        ("repeat 2^36", "16-99999999999*(16)-4", ()),
        ("repeat 2^64", "16-99999999999999999999*(relu)-4", ()),
        ("repeat nothing", "16-2*()-4", ()),
        ("repeat without count", "16-*(16)-4", ()),
        ("repeat without parentheses", "16-3*16-4", ()),
        # widths
        ("input 0", "0-4", ()),
        ("width 0", "16-0-4", ()),
        ("empty layer", "16--4", ()),
        ("trailing dash", "16-", ()),
        ("leading dash", "-16-4", ()),
        ("width 2^64", "16-99999999999999999999-4", ()),
        ("width 2^31", "16-2147483648-4", ()),
        ("width 2^32", "16-4294967296-4", ()),
        ("width exponent", "16-1e3-4", ()),
        ("width hex", "16-0x10-4", ()),
        ("width with a plus", "16-+8-4", ()),
        ("width 8.0", "16-8.0-4", ()),
        ("image with a 0 side", "1x0x8-flatten-4", ()),
        ("image with 0 channels", "0x8x8-flatten-4", ()),
        ("two-part shape", "1x8-flatten-4", ()),
        ("four-part shape", "1x8x8x8-flatten-4", ()),
        ("shape without channels", "x8x8-flatten-4", ()),
        ("width in fullwidth digits", "16-\uff18-4", ()),
        ("a DEL character", "16-8\x7f-4", ()),
        # dropout
        ("dropout1.5", "16-dropout1.5-4", ("dropout",)),
        ("dropout-0.1", "16-dropout-0.1-4", ()),
        ("dropoutnan", "16-dropoutnan-4", ("dropout",)),
        ("dropoutinf", "16-dropoutinf-4", ("dropout",)),
        ("dropout1e400", "16-dropout1e400-4", ("dropout",)),
        ("dropout1", "16-dropout1-4", ("dropout",)),
        ("dropout0.5x", "16-dropout0.5x-4", ()),
        # gpt
        ("gpt unknown key", "gpt(layers=1,heads=2,width=16,context=16,vocab=256,foo=1)", ("foo",)),
        ("gpt without vocab", "gpt(layers=1,heads=2,width=16,context=16)", ("vocab",)),
        ("gpt layers 0", "gpt(layers=0,heads=2,width=16,context=16,vocab=256)", ("layers",)),
        ("gpt heads 0", "gpt(layers=1,heads=0,width=16,context=16,vocab=256)", ("heads",)),
        ("gpt heads not dividing width", "gpt(layers=1,heads=3,width=16,context=16,vocab=256)",
         ("heads",)),
        ("gpt width 0", "gpt(layers=1,heads=2,width=0,context=16,vocab=256)", ("width",)),
        ("gpt vocab 0", "gpt(layers=1,heads=2,width=16,context=16,vocab=0)", ("vocab",)),
        ("gpt vocab 1", "gpt(layers=1,heads=2,width=16,context=16,vocab=1)", ("vocab",)),
        ("gpt vocab 2^24+1", "gpt(layers=1,heads=2,width=16,context=16,vocab=16777217)",
         ("vocab",)),
        ("gpt dropout 2", "gpt(layers=1,heads=2,width=16,context=16,vocab=256,dropout=2)",
         ("dropout",)),
        ("gpt dropout -1", "gpt(layers=1,heads=2,width=16,context=16,vocab=256,dropout=-1)",
         ("dropout",)),
        ("gpt dropout nan", "gpt(layers=1,heads=2,width=16,context=16,vocab=256,dropout=nan)",
         ("dropout",)),
        ("gpt empty", "gpt()", ()),
        ("gpt unbalanced", "gpt(layers=1,heads=2,width=16,context=16,vocab=256", ()),
        ("gpt empty value", "gpt(layers=,heads=2,width=16,context=16,vocab=256)", ("layers",)),
        ("gpt semicolons", "gpt(layers=1;heads=2;width=16;context=16;vocab=256)", ()),
        ("gpt width 2^31-1", "gpt(layers=1,heads=1,width=2147483647,context=16,vocab=256)", ()),
        ("tokens context 0", "tokens(0,256)-embed(16)-lmhead", ()),
        ("tokens vocab 0", "tokens(16,0)-embed(16)-lmhead", ()),
        ("tokens one argument", "tokens(16)-embed(16)-lmhead", ()),
        ("lmhead without embed", "tokens(16,256)-lmhead", ()),
        ("embed 0", "tokens(16,256)-embed(0)-lmhead", ()),
        ("attn 0", "tokens(16,256)-embed(16)-attn(0)-lmhead", ()),
        ("attn heads not dividing", "tokens(16,256)-embed(16)-attn(3)-lmhead", ()),
        ("embed on flat features", "16-embed(16)-4", ()),
        ("lmhead on an MLP", "16-8-lmhead", ()),
        # strings
        ("empty description", "", ()),
        ("a space", " ", ()),
        ("a dash", "-", ()),
        ("two dashes", "--", ()),
        ("a layer without an input", "relu", ()),
        ("100000 letters", "a" * 100000, ()),
        ("unknown preset", "gpt-tinyy", ()),
        ("preset in capitals", "GPT-TINY", ()),
        ("parentheses soup", "16-((((((((-4", ()),
    ]
    for name, spec, culprit in bad:
        names = [("--model", "model")] + ([culprit] if culprit else [])
        # the overflowing shape is refused either as a bad description (2) or against the data (1)
        g(name, spec, "fail" if name == "shape overflow" else "usage", names)
    g("16 alone (no layer)", "16", "either", ("--model",))
    g("comment on the command line", "16-8-relu-4#comment", "either", ("--model",))
    g("20000 layers", "16-" + "-".join(["16"] * 20000) + "-4", "either", ("--model",),
      timeout=60)
    g("a million relus", "16-1000000*(relu)-4", "either", ("--model",), timeout=60)
    g("nesting 2000 deep", "16-" + "res(" * 2000 + "relu" + ")" * 2000 + "-4", "either",
      ("--model",), timeout=60)
    g("nesting 2000 repeats", "16-" + "1*(" * 2000 + "relu" + ")" * 2000 + "-4", "either",
      ("--model",), timeout=60)
    # plans beyond the node's memory: --dry-run says "does not fit" (issue item 7)
    for name, spec in (("dense 10^6 x 10^6", "16-1000000-1000000-4"),
                       ("two conv(100000,k3)",
                        "1x8x8-conv(100000,k3,p1)-conv(100000,k3,p1)-flatten-4"),
                       ("gpt of 10^5 layers",
                        "gpt(layers=100000,heads=16,width=4096,context=4096,vocab=50257)")):
        g(f"memory: {name}", spec, "fail", (("does not fit", "DOES NOT FIT", "memory", "too large"),),
          why="a plan far beyond the node's memory passes --dry-run with no limit set")
    # repeated --model: the last one wins, as argparse does
    g("--model twice", MLP, "either", ("--model",), extra=("--model", "16-4-4"))
    # on 2 ranks: every rank refuses, the message once
    for name, spec in (("stride twice, 2 ranks", "1x8x8-conv(8,k3,s1,s2)-flatten-4"),
                       ("width 0, 2 ranks", "16-0-4"), ("gpt vocab 0, 2 ranks",
                                                      "gpt(layers=1,heads=2,width=16,context=16,vocab=0)")):
        g(name, spec, "usage", ("--model",), ranks=2)
    # @FILE
    def at(name, target, expect, names, *steps, why=""):
        out.append(Case("grammar", f"@FILE: {name}",
                        ["train", "--data", "d.h5", "--model", "@" + target, "--global-batch", "8",
                         "--dry-run"], expect, names, setup=setup(cp("d.h5"), *steps),
                        why=why or f"--model @{target}"))
    at("valid with comments", "spec.txt", "ok", (),
       write("spec.txt", b"# an MLP\n16-8 -relu\n  -4   # out\n"))
    at("missing", "missing.txt", "fail", ("missing.txt",))
    at("empty", "empty.txt", "fail", ("empty.txt",), write("empty.txt", b""))
    at("comments only", "c.txt", "fail", ("c.txt",), write("c.txt", b"# nothing\n"))
    at("a folder", "adir", "fail", ("adir", NOT_REGULAR), mkdir("adir"))
    at("a FIFO", "fifo", "fail", ("fifo", NOT_REGULAR), fifo("fifo"))
    at("a link to a zero device", "zlink", "fail", ("zlink", NOT_REGULAR), node("zero", "zero"),
       link("zero", "zlink"))
    at("a null device", "null", "fail", ("null", NOT_REGULAR), node("null", "null"))
    at("a link to urandom", "ulink", "fail", ("ulink", NOT_REGULAR), node("urandom", "urandom"),
       link("urandom", "ulink"))
    at("dangling link", "gone", "fail", ("gone",), link("nowhere.txt", "gone"))
    at("link loop", "loop1", "fail", ("loop1",), link("loop2", "loop1"), link("loop1", "loop2"))
    at("@ alone", "", "fail", ("--model",))
    at("@@", "@spec.txt", "fail", ("@spec.txt",), write("spec.txt", MLP.encode()))
    at("5 MB file", "big.txt", "either", ("big.txt",),
       write("big.txt", ("16-" * 1700000 + "4").encode(), "big.txt (5 MB description)"))
    at("binary file", "bin.txt", "fail", ("bin.txt",),
       write("bin.txt", bytes(random.Random(1).randrange(256) for _ in range(4096))))
    at("NUL in the middle", "nul.txt", "fail", ("nul.txt",), write("nul.txt", b"16-8\x00-4"))
    at("description refers to itself", "self.txt", "fail", ("self.txt",),
       write("self.txt", b"@self.txt"))
    # fuzzed: seeded mutations of valid descriptions
    rng = random.Random(22)
    alphabet = "()-,x*|=0123456789kspbcdeglmnortuv@# "
    for k in range(25):
        spec = rng.choice(valid)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(spec) + 1)
            op = rng.randrange(4)
            if op == 0 and spec:
                spec = spec[:i] + spec[i + 1:]
            elif op == 1:
                spec = spec[:i] + rng.choice(alphabet) + spec[i:]
            elif op == 2 and spec:
                j = rng.randrange(len(spec))
                a, b = sorted((i % len(spec), j))
                spec = spec[:b] + spec[a:b] + spec[b:]
            else:
                spec = spec[:i] + rng.choice(["99999999999", "0", "-1", "2147483647", ",", "(",
                                              ")"]) + spec[i:]
        data = data_for(spec)
        out.append(Case("grammar", f"fuzz {k}: {spec[:60]}",
                        ["train", "--data", data, "--model", spec, "--global-batch", "8",
                         "--dry-run"], "either", [("--model", data, "model")],
                        setup=setup(cp(data)), why=f"--model {spec!r}"))
    return out


# ---- image folders ---------------------------------------------------------------------------

def images_cases(fx):
    out = []
    png = craft.image_bytes("PNG", 8, 8, seed=7)
    jpg = craft.image_bytes("JPEG", 8, 8, seed=8)

    def c(name, expect, names=(), steps=(), extra=(), rows=None, why="", outputs=("out*",),
          timeout=30, folder="imgs", output="out.h5", base=True, mutable=()):
        args = ["convert", "images", folder, "-o", output, *extra]
        check = h5_rows(output, rows) if (rows is not None and expect != "fail") else None
        out.append(Case("images", name, args, expect, names, timeout=timeout,
                        setup=setup(cp("images", "imgs") if base else None, *steps),
                        outputs=outputs, check=check, why=why or name, mutable=mutable))

    c("good folder", "ok", rows=6)
    c("good folder, --size 4x4", "ok", extra=("--size", "4x4"), rows=6)
    c("good folder, --val-fraction 0.5", "ok", extra=("--val-fraction", "0.5"))
    c("good folder, --shards 2", "ok", extra=("--shards", "2"))
    modes = [("grey", "PNG", "L", {}), ("grey+alpha", "PNG", "LA", {}), ("RGBA", "PNG", "RGBA", {}),
             ("palette", "PNG", "P", {}), ("16-bit grey", "PNG", "I;16", {}),
             ("interlaced", "PNG", "RGB", {"interlace": 1}), ("CMYK JPEG", "JPEG", "CMYK", {}),
             ("progressive JPEG", "JPEG", "RGB", {"progressive": True}),
             ("grey JPEG", "JPEG", "L", {})]
    for name, fmt, mode, kw in modes:
        ext = "png" if fmt == "PNG" else "jpg"
        data = craft.image_bytes(fmt, 8, 8, mode, seed=3, **kw)
        c(f"a {name} image", "ok", steps=(write(f"imgs/cat/m.{ext}", data, f"a {name} image"),),
          rows=7)
    c("capital extensions", "ok", steps=(write("imgs/cat/A.PNG", png), write("imgs/dog/B.JpEg", jpg)),
      rows=8)
    c("1x1 images, --size 1x1", "ok", steps=(write("imgs/cat/one.png", craft.image_bytes("PNG", 1, 1)),),
      extra=("--size", "1x1"), rows=7)
    c("sizes differ", "ok", steps=(write("imgs/cat/wide.png", craft.image_bytes("PNG", 40, 3)),),
      rows=7)
    c("a 5000x5000 image", "ok", steps=(write("imgs/cat/huge.png", craft.image_bytes("PNG", 5000, 5000, "L")),),
      extra=("--size", "8x8"), rows=7, timeout=60)
    c("hidden file ignored", "ok", steps=(write("imgs/cat/.hidden.png", b"junk"),), rows=6)
    c("other extensions ignored", "ok", steps=(write("imgs/cat/notes.txt", b"junk"),), rows=6)
    c("a link to an image outside", "ok", steps=(write("elsewhere.png", png),
                                                link("../../elsewhere.png", "imgs/cat/ext.png")), rows=7)
    # not regular files, named like images (issue item 3)
    special = [
        ("a FIFO", (fifo("imgs/cat/fifo.png"),), "fifo.png"),
        ("a link to a zero device", (node("zero", "zero"), link("../../zero", "imgs/cat/zero.png")),
         "zero.png"),
        ("a link to urandom", (node("urandom", "urandom"), link("../../urandom", "imgs/cat/rand.png")),
         "rand.png"),
        ("a link to a null device", (node("null", "null"), link("../../null", "imgs/cat/null.png")),
         "null.png"),
        ("a dangling link", (link("nowhere.png", "imgs/cat/gone.png"),), "gone.png"),
        ("a link loop", (link("loop2.png", "imgs/cat/loop1.png"), link("loop1.png", "imgs/cat/loop2.png")),
         "loop1.png"),
    ]
    for name, steps, culprit in special:
        kind = (NOT_REGULAR,) if ("FIFO" in name or "device" in name or "urandom" in name) else ()
        c(f"{name} named like an image", "fail", (culprit,) + kind, steps,
          why=f"{name} named {culprit} accepted without a word")
        c(f"{name} named like an image, --skip-bad", "either", (culprit,), steps,
          extra=("--skip-bad",), rows=6)
    c("a folder named like an image", "either", ("dir.png",), (mkdir("imgs/cat/dir.png"),), rows=6)
    c("a link to the class's parent (a loop of folders)", "either", ("imgs",),
      (link("..", "imgs/cat/up"),), timeout=30)
    c("a link to the folder itself", "either", ("imgs",), (link(".", "imgs/cat/self"),), timeout=30)
    # corrupt or lying images
    corrupt = [("empty file", b""), ("text named .png", b"hello, I am not an image\n")]
    corrupt += [(f"PNG cut at {n}", png[:n]) for n in (8, 16, 33, 45, len(png) // 2, len(png) - 12, len(png) - 1)]
    corrupt += [(f"JPEG cut at {n}", jpg[:n]) for n in (2, 20, len(jpg) // 2)]
    corrupt += [("PNG 100000x100000", craft.png_lying(100000, 100000)),
                ("PNG 2^31-1 x 1", craft.png_lying(2 ** 31 - 1, 1)),
                ("PNG 1 x 2^31-1", craft.png_lying(1, 2 ** 31 - 1)),
                ("PNG 65536x65536 16-bit RGBA", craft.png_lying(65536, 65536, 16, 6)),
                ("PNG 0x0", craft.png_lying(0, 0)),
                ("PNG bit depth 3", craft.png_lying(8, 8, 3, 2)),
                ("PNG colour type 7", craft.png_lying(8, 8, 8, 7)),
                ("PNG interlaced 50000x50000", craft.png_lying(50000, 50000, interlace=1)),
                ("PNG with a bad zlib stream", craft.png_lying(8, 8, idat=b"\x78\x9c garbage")),
                ("JPEG 65500x65500", craft.jpeg_lying(65500, 65500)),
                ("JPEG 0x0", craft.jpeg_lying(0, 0)),
                ("JPEG 1x65500", craft.jpeg_lying(1, 65500))]
    for name, data in corrupt:
        ext = "jpg" if name.startswith("JPEG") else "png"
        # without IEND (or its CRC) every pixel is there: PIL decodes such files too
        c(name, "either" if name in (f"PNG cut at {len(png) - 12}", f"PNG cut at {len(png) - 1}") else "fail", (f"bad.{ext}",), (write(f"imgs/cat/bad.{ext}", data, f"imgs/cat/bad.{ext}: {name}"),),
          why=f"a corrupt image ({name}) accepted", timeout=30)
    for name, data in corrupt[2:8:2] + corrupt[-5:-2]:
        ext = "jpg" if name.startswith("JPEG") else "png"
        c(f"{name}, --skip-bad", "ok", (), (write(f"imgs/cat/bad.{ext}", data),),
          extra=("--skip-bad",), rows=6, timeout=30)
    for k, offset in enumerate((1, 12, 17, 29, 40, len(png) - 5)):
        c(f"PNG bit flip at {offset}", "either", ("flip.png",),
          (write("imgs/cat/flip.png", craft.flip(png, offset, k % 8)),), rows=7)
    for k, offset in enumerate((3, 25, len(jpg) // 2, len(jpg) - 3)):
        c(f"JPEG bit flip at {offset}", "either", ("flip.jpg",),
          (write("imgs/cat/flip.jpg", craft.flip(jpg, offset, k % 8)),), rows=7)
    c("a JPEG named .png", "either", ("jpg.png",), (write("imgs/cat/jpg.png", jpg),), rows=7)
    # folders
    c("empty folder", "fail", ("imgs",), (mkdir("imgs"),), base=False)
    c("class folders without images", "fail", ("imgs",), (mkdir("imgs/a"), mkdir("imgs/b")), base=False)
    c("images without class folders", "fail", ("imgs",), (write("imgs/a.png", png),), base=False)
    c("one class", "either", ("imgs",), (write("imgs/only/a.png", png), write("imgs/only/b.png", png)),
      base=False, rows=2)
    c("missing folder", "fail", ("nope",), folder="nope", base=False)
    c("a file as the folder", "fail", ("file.png",), (write("file.png", png),), folder="file.png",
      base=False)
    c("a FIFO as the folder", "fail", ("fifo", NOT_REGULAR), (fifo("fifo"),), folder="fifo", base=False)
    c("a link to the folder", "ok", steps=(link("imgs", "ln"),), folder="ln", rows=6)
    c("odd class names", "ok", steps=(write("imgs/a b %s %n\n/x.png", png),
                                      write("imgs/\u00e9t\u00e9/y.png", png)), rows=8)
    c("a file name with a newline", "ok", steps=(write("imgs/cat/new\nline.png", png),), rows=7)
    c("200 folders deep", "either", ("imgs",),
      (write("imgs/deep/" + "d/" * 200 + "x.png", png),), rows=7)
    c("3000 small images", "ok", steps=(call("3000 8x8 PNGs in imgs/many", lambda ctx: [
        ctx.write(f"imgs/many/{i}.png", png) for i in range(3000)]),), rows=3006, timeout=60)
    # outputs among the inputs (issue item 1)
    c("-o onto one of its images", "fail", ("img1.png",), output="imgs/cat/img1.png",
      why="the output overwrote one of the images it reads")
    # a symlink as the output is replaced by the rename (the image itself must stay intact)
    c("-o onto an image through a symlink", "either", ("out.h5", "img1.png"),
      (link("imgs/cat/img1.png", "out.h5"),), output="out.h5")
    c("-o onto an image through a hard link", "fail", ("hard.h5",),
      (hardlink("imgs/cat/img2.png", "hard.h5"),), output="hard.h5", outputs=(),
      why="the output overwrote an image through a hard link")
    c("-o inside the folder (not an input)", "ok", output="imgs/out.h5", outputs=("imgs/out*",))
    c("-o the folder itself", "fail", ("imgs",), output="imgs")
    # --size
    sizes = [("0x0", "usage"), ("8x0", "usage"), ("0x8", "usage"), ("-1x8", "usage"),
             ("8x-1", "usage"), ("8", "usage"), ("x8", "usage"), ("8x", "usage"), ("8x8x8", "usage"),
             ("axb", "usage"), ("8x8junk", "usage"), ("99999999999999999999x1", "usage"),
             ("2147483648x1", "usage"), ("65536x65536", "fail")]
    for value, expect in sizes:
        c(f"--size {value}", expect, ("--size",) if expect == "usage" else (("--size", "large", "memory"),),
          extra=("--size", value), why=f"--size {value} accepted")
    c("--size 16384x16384 (3 GiB per image)", "either", (("--size", "memory", "large"),),
      extra=("--size", "16384x16384"), rows=6, timeout=60)
    c("--size 2048x2048", "ok", extra=("--size", "2048x2048"), rows=6, timeout=60)
    return out


# ---- text and token files (convert text, tokens, idx) ----------------------------------------

def text_cases(fx):
    out = []

    def c(name, args, expect, names=(), steps=(), rows=None, why="", outputs=("o*",), timeout=20,
          dataset="tokens", ranks=1):
        out.append(Case("text", name, args, expect, names, setup=setup(*steps), outputs=outputs,
                        check=h5_rows("o.h5", rows, dataset) if rows is not None else None,
                        why=why or name, timeout=timeout, ranks=ranks))

    def text(name, files, expect, names=(), steps=(), extra=(), rows=None, **kw):
        c(f"text: {name}", ["convert", "text", *files, "-o", "o.h5", *extra], expect, names,
          steps, rows, **kw)

    def tokens(name, files, expect, names=(), steps=(), extra=(), rows=None, **kw):
        c(f"tokens: {name}", ["convert", "tokens", *files, "-o", "o.h5", *extra], expect, names,
          steps, rows, **kw)

    def idx(name, images, labels, expect, names=(), steps=(), extra=(), rows=None, **kw):
        c(f"idx: {name}", ["convert", "idx", images, labels, "-o", "o.h5", *extra], expect, names,
          steps, rows, dataset="features", **kw)

    t = cp("text.txt")
    text("good", ["text.txt"], "ok", steps=(t,), rows=20000)
    text("two files, --val-fraction 0.1, --shards 3", ["text.txt", "text.txt"], "ok", steps=(t,),
         extra=("--val-fraction", "0.1", "--shards", "3"))
    text("empty file", ["e.txt"], "fail", ("e.txt",), (write("e.txt", b""),))
    text("one byte", ["b.txt"], "either", ("b.txt",), (write("b.txt", b"x"),), rows=1)
    text("one byte, --val-fraction 0.5", ["b.txt"], "either", (), (write("b.txt", b"x"),),
         extra=("--val-fraction", "0.5"))
    text("every byte value", ["all.bin"], "ok", (), (write("all.bin", bytes(range(256)) * 4),), rows=1024)
    text("a FIFO", ["fifo"], "fail", ("fifo", NOT_REGULAR), (fifo("fifo"),), why="a FIFO accepted")
    text("a link to a zero device", ["z.txt"], "fail", ("z.txt", NOT_REGULAR), (node("zero", "zero"), link("zero", "z.txt")))
    text("a link to urandom", ["u.txt"], "fail", ("u.txt", NOT_REGULAR), (node("urandom", "urandom"), link("urandom", "u.txt")))
    text("a null device", ["null"], "fail", ("null", NOT_REGULAR), (node("null", "null"),))
    text("a folder", ["adir"], "fail", ("adir", NOT_REGULAR), (mkdir("adir"),))
    text("missing", ["nope.txt"], "fail", ("nope.txt",))
    text("dangling link", ["gone.txt"], "fail", ("gone.txt",), (link("nowhere", "gone.txt"),))
    text("the same file twice", ["text.txt", "text.txt"], "ok", (), (t,), rows=40000)
    text("-o onto the input", ["text.txt"], "fail", ("text.txt",), (t,), extra=("-o", "text.txt"),
         outputs=())
    text("-o onto the input by a symlink", ["text.txt"], "fail", ("ln.h5",), (t, link("text.txt", "ln.h5")),
         extra=("-o", "ln.h5"), outputs=())
    text("-o onto the input by a hard link", ["text.txt"], "fail", ("hard.h5",),
         (t, hardlink("text.txt", "hard.h5")), extra=("-o", "hard.h5"), outputs=())
    text("--val-fraction output onto the input", ["x-val.h5"], "fail", ("x-val.h5",),
         (write("x-val.h5", b"some text to hold out " * 40),), extra=("-o", "x.h5", "--val-fraction", "0.2"),
         outputs=())
    text("30 MB", ["big.txt"], "ok", (), (write("big.txt", os.urandom(30 << 20), "big.txt (30 MiB)"),),
         rows=30 << 20, timeout=60)
    text("300 files", [f"f{i}.txt" for i in range(300)], "ok", (),
         (call("300 small text files", lambda ctx: [ctx.write(f"f{i}.txt", b"abc") for i in range(300)]),),
         rows=900)
    text("a name with a newline", ["a\nb.txt"], "ok", (), (write("a\nb.txt", b"hello"),), rows=5)
    text("--vocab-size for text", ["text.txt"], "usage", ("--vocab-size",), (t,), extra=("--vocab-size", "300"))
    text("a FIFO, 2 ranks", ["fifo"], "fail", ("fifo", NOT_REGULAR), (fifo("fifo"),), ranks=2)

    rng = np.random.default_rng(9)
    ids = rng.integers(0, 50257, 3000)
    tokens("raw uint16", ["tokens.bin"], "ok", (), (cp("tokens.bin"),), rows=3000)
    tokens("llm.c version 1", ["llmc.bin"], "ok", (), (cp("llmc.bin"),), rows=3000)
    tokens("llm.c version 2", ["llmc2.bin"], "ok", (), (cp("llmc2.bin"),), rows=3000)
    tokens("raw and llm.c mixed", ["tokens.bin", "llmc.bin"], "either", ("tokens.bin", "llmc.bin"),
           (cp("tokens.bin"), cp("llmc.bin")))
    for n in (1, 3, 1023):
        tokens(f"{n} bytes", ["odd.bin"], "fail", ("odd.bin",), (write("odd.bin", bytes(n)),))
    tokens("empty", ["e.bin"], "fail", ("e.bin",), (write("e.bin", b""),))
    tokens("llm.c header only", ["h.bin"], "fail", ("h.bin",),
           (call("h.bin: llm.c header, count 0", lambda ctx: craft.llmc_file(ctx.path("h.bin"), [])),))
    for name, count in (("count past the end", 5000), ("count short of the end", 1000),
                        ("count negative", -1), ("count 2^31-1", 2 ** 31 - 1)):
        tokens(f"llm.c {name}", ["h.bin"], "fail", ("h.bin",),
               (call(f"h.bin: llm.c, {name}", lambda ctx, n=count: craft.llmc_file(ctx.path("h.bin"), ids, count=n)),))
    for version in (0, 3, -1):
        tokens(f"llm.c version {version}", ["h.bin"], "fail", ("h.bin",),
               (call(f"h.bin: llm.c version {version}",
                     lambda ctx, v=version: craft.llmc_file(ctx.path("h.bin"), ids, version=v)),))
    tokens("llm.c version 2, odd payload", ["h.bin"], "fail", ("h.bin",),
           (call("h.bin: llm.c v2 with 2 extra bytes", lambda ctx: ctx.write(
               "h.bin", open(os.path.join(fx, "llmc2.bin"), "rb").read() + b"\0\0")),))
    tokens("magic off by one", ["h.bin"], "either", ("h.bin",),
           (call("h.bin: llm.c with magic 20240521", lambda ctx: craft.llmc_file(ctx.path("h.bin"), ids, magic=20240521)),))
    tokens("id 65535 with the default vocabulary", ["hi.bin"], "fail", ("hi.bin",),
           (call("hi.bin: raw, id 65535 at 17", lambda ctx: craft.raw_tokens(
               ctx.path("hi.bin"), np.r_[ids[:17], 65535, ids[18:]])),))
    tokens("id 65535 with --vocab-size 65536", ["hi.bin"], "ok", (),
           (call("hi.bin: raw, id 65535", lambda ctx: craft.raw_tokens(ctx.path("hi.bin"), np.r_[ids, 65535])),),
           extra=("--vocab-size", "65536"), rows=3001)
    tokens("uint32 id past 128256", ["big.bin"], "fail", ("big.bin",),
           (call("big.bin: llm.c v2, id 200000", lambda ctx: craft.llmc_file(
               ctx.path("big.bin"), np.r_[ids, 200000], version=2)),))
    tokens("--vocab-size 16777216, uint32", ["llmc2.bin"], "ok", (), (cp("llmc2.bin"),),
           extra=("--vocab-size", "16777216"), rows=3000)
    tokens("--vocab-size 16777217", ["llmc2.bin"], "usage", ("--vocab-size",), (cp("llmc2.bin"),),
           extra=("--vocab-size", "16777217"), why="a vocabulary no model can train (> 2^24) accepted")
    tokens("--vocab-size 1073741824", ["llmc2.bin"], "usage", ("--vocab-size",), (cp("llmc2.bin"),),
           extra=("--vocab-size", "1073741824"), why="a vocabulary no model can train (2^30) accepted")
    tokens("--vocab-size 1", ["z.bin"], "fail", ("--vocab-size",),
           (call("z.bin: 100 zero ids", lambda ctx: craft.raw_tokens(ctx.path("z.bin"), np.zeros(100))),),
           extra=("--vocab-size", "1"), why="a vocabulary of 1 accepted")
    tokens("a FIFO", ["fifo"], "fail", ("fifo", NOT_REGULAR), (fifo("fifo"),), why="a FIFO accepted")
    tokens("a link to a zero device", ["z.bin"], "fail", ("z.bin", NOT_REGULAR), (node("zero", "zero"), link("zero", "z.bin")))
    tokens("a link to urandom", ["u.bin"], "fail", ("u.bin", NOT_REGULAR), (node("urandom", "urandom"), link("urandom", "u.bin")))
    tokens("a null device", ["null"], "fail", ("null", NOT_REGULAR), (node("null", "null"),))
    tokens("a folder", ["adir"], "fail", ("adir", NOT_REGULAR), (mkdir("adir"),))
    tokens("dangling link", ["gone.bin"], "fail", ("gone.bin",), (link("nowhere", "gone.bin"),))
    tokens("-o onto the input", ["tokens.bin"], "fail", ("tokens.bin",), (cp("tokens.bin"),),
           extra=("-o", "tokens.bin"), outputs=())
    tokens("--val-fraction 0.9 of 20 ids", ["s.bin"], "either", ("s.bin",),
           (call("s.bin: 20 ids", lambda ctx: craft.raw_tokens(ctx.path("s.bin"), ids[:20])),),
           extra=("--val-fraction", "0.9"))
    tokens("40 MB", ["big.bin"], "ok", (),
           (call("big.bin: 20M raw ids", lambda ctx: craft.raw_tokens(ctx.path("big.bin"), np.arange(20_000_000) % 50257)),),
           rows=20_000_000, timeout=60)

    i_, l_ = cp("img.idx"), cp("lab.idx")
    idx("good", "img.idx", "lab.idx", "ok", (), (i_, l_), rows=10)
    idx("good, gzipped", "img.idx.gz", "lab.idx.gz", "ok", (), (cp("img.idx.gz"), cp("lab.idx.gz")), rows=10)
    idx("--image-shaped", "img.idx", "lab.idx", "ok", (), (i_, l_), extra=("--image-shaped",), rows=10)
    idx("a FIFO as IMAGES", "fifo", "lab.idx", "fail", ("fifo", NOT_REGULAR), (fifo("fifo"), l_), why="a FIFO accepted")
    idx("a FIFO as LABELS", "img.idx", "fifo", "fail", ("fifo", NOT_REGULAR), (fifo("fifo"), i_))
    idx("a link to a zero device as IMAGES", "z.idx", "lab.idx", "fail", ("z.idx", NOT_REGULAR),
        (node("zero", "zero"), link("zero", "z.idx"), l_))
    idx("a null device as LABELS", "img.idx", "null", "fail", ("null", NOT_REGULAR), (node("null", "null"), i_))
    idx("a folder as IMAGES", "adir", "lab.idx", "fail", ("adir", NOT_REGULAR), (mkdir("adir"), l_))
    idx("missing IMAGES", "nope.idx", "lab.idx", "fail", ("nope.idx",), (l_,))
    img = open(os.path.join(fx, "img.idx"), "rb").read()
    idx("IMAGES truncated", "t.idx", "lab.idx", "fail", ("t.idx",), (write("t.idx", img[:100]), l_))
    idx("IMAGES gzip truncated", "t.idx.gz", "lab.idx", "fail", ("t.idx.gz",),
        (write("t.idx.gz", open(os.path.join(fx, "img.idx.gz"), "rb").read()[:30]), l_))
    idx("IMAGES claiming 2^31 x 2^31 x 2^31", "c.idx", "lab.idx", "fail", ("c.idx",),
        (call("c.idx: dims 2^31-1 x 2^31-1 x 2^31-1, 16 bytes of data", lambda ctx: craft.idx_file(
            ctx.path("c.idx"), (1, 4, 4), claim=(2 ** 31 - 1,) * 3)), l_))
    idx("IMAGES claiming 60000x28x28 (gzip, short)", "c.idx.gz", "lab.idx", "fail", ("c.idx.gz",),
        (call("c.idx.gz: header 60000x28x28, 160 bytes", lambda ctx: craft.idx_file(
            ctx.path("c.idx.gz"), (10, 4, 4), claim=(60000, 28, 28), compress=True)), l_))
    idx("IMAGES with a 0 dimension", "z.idx", "lab.idx", "fail", ("z.idx",),
        (call("z.idx: 10 x 0 x 4", lambda ctx: craft.idx_file(ctx.path("z.idx"), (10, 0, 4), data=b"")), l_))
    idx("wrong magic", "m.idx", "lab.idx", "fail", ("m.idx",), (write("m.idx", b"\x01\x02" + img[2:]), l_))
    idx("float labels", "img.idx", "f.idx", "fail", ("f.idx",),
        (i_, call("f.idx: type 0x0D", lambda ctx: craft.idx_file(ctx.path("f.idx"), (10,), bytes(40), type_code=0x0D))))
    idx("9 labels for 10 images", "img.idx", "l9.idx", "fail", ("l9.idx",),
        (i_, call("l9.idx: 9 labels", lambda ctx: craft.idx_file(ctx.path("l9.idx"), (9,), bytes(9)))))
    idx("label 255", "img.idx", "l.idx", "either", ("l.idx",),
        (i_, call("l.idx: a label 255", lambda ctx: craft.idx_file(ctx.path("l.idx"), (10,), bytes(9) + b"\xff"))))
    idx("3-D labels", "img.idx", "l3.idx", "fail", ("l3.idx",),
        (i_, call("l3.idx: 10x4x4", lambda ctx: craft.idx_file(ctx.path("l3.idx"), (10, 4, 4)))))
    idx("1-D images", "i1.idx", "lab.idx", "either", ("i1.idx",),
        (l_, call("i1.idx: 10", lambda ctx: craft.idx_file(ctx.path("i1.idx"), (10,)))))
    idx("IMAGES also as LABELS", "img.idx", "img.idx", "fail", ("img.idx",), (i_,))
    idx("-o onto IMAGES by a symlink", "img.idx", "lab.idx", "fail", ("ln.h5",), (i_, l_, link("img.idx", "ln.h5")),
        extra=("-o", "ln.h5"), outputs=())
    idx("a gzip bomb (1 GB of zeros in 1 MB)", "bomb.idx.gz", "lab.idx", "either", ("bomb.idx.gz",),
        (l_, call("bomb.idx.gz: header 10x4x4 then 1 GiB of zeros, gzipped", lambda ctx: ctx.write(
            "bomb.idx.gz", _gzip_bomb()))), timeout=60)
    return out


def _gzip_bomb():
    import zlib
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(header)]
    block = bytes(1 << 20)
    for _ in range(1024):
        parts.append(z.compress(block))
    parts.append(z.flush())
    return b"".join(parts)


# ---- token datasets (crafted HDF5) -----------------------------------------------------------

def tokens_cases(fx):
    out = []
    kinds = {
        "good": "ok", "int32": "ok", "deflate": "ok", "soft-link": "either", "vocab-root": "ok",
        "huge-maxshape": "ok", "uint32": "either", "int64": "either", "uint8": "either",
        "float32": "fail", "2d": "fail", "empty": "fail", "one-id": "fail", "short": "fail",
        "exactly-window": "fail", "id-at-vocab": "fail", "id-max-u16": "fail",
        "negative-int32": "fail", "no-vocab": "fail", "vocab-0": "fail", "vocab-1": "fail",
        "vocab-neg": "fail", "vocab-2^40": "fail", "vocab-2^31": "fail", "vocab-16777217": "fail",
        "vocab-float": "fail", "vocab-nan": "fail", "vocab-string": "either",
        "vocab-array": "fail", "vocab-mismatch": "fail", "chunked-unwritten": "fail",
        "huge-declared": "fail", "group": "fail", "scalar": "fail", "with-features": "either",
        "dangling-soft-link": "fail", "external-link": "fail", "external-storage": "fail",
    }
    info_expect = dict(kinds)
    info_expect.update({"vocab-1": "either", "one-id": "either", "short": "either", "exactly-window": "either",
                        "vocab-mismatch": "ok", "vocab-16777217": "either", "vocab-2^31": "either",
                        "vocab-2^40": "either"})

    for kind, expect in kinds.items():
        make = call(f"t.h5: a /tokens dataset, {kind}",
                    lambda ctx, k=kind: craft.token_dataset(ctx.path("t.h5"), k))
        out.append(Case("tokens", f"train on tokens: {kind}",
                        ["train", "--data", "t.h5", "--model", GPT, "--global-batch", "4", "--epochs",
                         "1", "--log-every", "0", "--comm-timeout", "10"],
                        expect, ("t.h5",), setup=setup(make), timeout=30,
                        why=f"a token dataset ({kind}) trained on"))
        out.append(Case("tokens", f"info on tokens: {kind}", ["info", "t.h5"], info_expect[kind],
                        ("t.h5",), setup=setup(make), timeout=30,
                        why=f"info passes a token dataset ({kind})"))
    make_ext = call("t.h5: /tokens in external storage raw.bin",
                    lambda ctx: craft.token_dataset(ctx.path("t.h5"), "external-storage"))
    out.append(Case("tokens", "train on external storage with --allow-external-data",
                    ["train", "--data", "t.h5", "--model", GPT, "--global-batch", "4", "--steps", "2",
                     "--log-every", "0", "--allow-external-data"], "ok", setup=setup(make_ext)))

    def shards(name, a_kind, b_kind, vocab_b, expect, ranks=1):
        def make(ctx):
            craft.token_dataset(ctx.path("s-a.h5"), a_kind)
            craft.token_dataset(ctx.path("s-b.h5"), b_kind, vocab=vocab_b)
        out.append(Case("tokens", f"shards: {name}",
                        ["train", "--data", "s-*.h5", "--model", GPT, "--global-batch", "4",
                         "--steps", "2", "--log-every", "0"], expect, [("s-a.h5", "s-b.h5")],
                        setup=setup(call(f"s-a.h5 ({a_kind}), s-b.h5 ({b_kind}, vocab {vocab_b})", make)),
                        ranks=ranks, why=f"shards that disagree ({name}) accepted"))
    shards("vocabularies 256 and 1000", "good", "good", 1000, "fail")
    shards("vocabularies 256 and 1000, 2 ranks", "good", "good", 1000, "fail", ranks=2)
    shards("one empty", "good", "empty", 256, "fail")
    shards("uint16 and int32", "good", "int32", 256, "either")
    out.append(Case("tokens", "a 1000-token model on a 256-token dataset",
                    ["train", "--data", "tok.h5", "--model", GPT1000, "--global-batch", "4", "--steps",
                     "2", "--log-every", "0"], "fail", [("vocab", "1000")], setup=setup(cp("tok.h5")),
                    why="a dataset with another vocabulary than the model's"))
    out.append(Case("tokens", "an MLP on tokens",
                    ["train", "--data", "tok.h5", "--model", MLP, "--global-batch", "4", "--steps",
                     "2", "--log-every", "0"], "fail", [("tok.h5", "--model")], setup=setup(cp("tok.h5"))))
    out.append(Case("tokens", "a GPT on features",
                    ["train", "--data", "d.h5", "--model", GPT, "--global-batch", "4", "--steps",
                     "2", "--log-every", "0"], "fail", [("d.h5", "--model")], setup=setup(cp("d.h5"))))
    out.append(Case("tokens", "eval of a GPT on tokens, 2 ranks",
                    ["eval", "--model-file", "gpt.h5", "--data", "tok.h5"], "ok",
                    setup=setup(cp("gpt.h5"), cp("tok.h5")), ranks=2))
    return out


# ---- generate --------------------------------------------------------------------------------

def comm_timeout(seconds):
    def extra(build):
        return ["--comm-timeout", str(seconds)] if build.generate_has_comm_timeout else []
    return extra


def generate_cases(fx):
    out = []

    def gen(name, prompt, expect, names=(), model="gpt.h5", extra=(), steps=None, check=None,
            ranks=1, why="", timeout=30, tokens="8"):
        args = ["generate", "--model-file", model, "--prompt", prompt, "--tokens", tokens,
                "--temperature", "0", *extra]
        out.append(Case("generate", name, args, expect, names,
                        setup=setup(*(steps if steps is not None else (cp(model),))),
                        check=check, ranks=ranks, why=why or name, timeout=timeout,
                        build_args=comm_timeout(10)))

    for name, prompt in (("a word", "hi"), ("one byte", "x"), ("the context's length", "x" * 16),
                         ("one past the context", "y" * 17), ("100 KB", "z" * 100000),
                         ("bytes that are not UTF-8", os.fsdecode(b"\xff\xfe\x80")),
                         ("newlines and tabs", "a\n\tb\r\n"), ("a leading dash", "-5"),
                         ("a percent sign", "%s%n%x")):
        size = len(os.fsencode(prompt))
        gen(f"bytes: {name}", prompt, "ok", check=printed_bytes(size, 8),
            timeout=60 if size > 1000 else 30)
    gen("an empty prompt", "", "usage", ("--prompt",))
    gen("an empty prompt, 2 ranks", "", "usage", ("--prompt",), ranks=2)
    ids = [("1 2 3", "ok", 3), ("1,2,3", "ok", 3), ("999", "ok", 1), ("1, 2", "either", 2),
           (" 1 ", "either", 1), ("\t1", "either", 1)]
    for prompt, expect, n in ids:
        gen(f"ids: {prompt!r}", prompt, expect, ("--prompt",), model="gpt1000.h5",
            check=printed_ids(n + 8))
    gen("ids: 5000 (past the context)", " ".join(str(i % 1000) for i in range(5000)), "ok",
        model="gpt1000.h5", check=printed_ids(5008))
    bad_ids = ["1,,2", ",1", "1,", "+5", "-1", "1e3", "0x10", "1000", "99999999999999999999",
               "abc", "\uff11", "1;2", "1.0", "4294967297"]
    for prompt in bad_ids:
        gen(f"ids: {prompt!r}", prompt, "usage", ("--prompt",), model="gpt1000.h5",
            why=f"--prompt {prompt!r} accepted for a token model")
    gen("ids: '1,,2', 2 ranks", "1,,2", "usage", ("--prompt",), model="gpt1000.h5", ranks=2,
        why="--prompt '1,,2' accepted")
    # sampling settings at their edges: the text must still come out whole
    for name, extra in (("temperature 1e-30, top-k 0", ("--temperature", "1e-30", "--top-k", "0")),
                        ("temperature 1e-300", ("--temperature", "1e-300")),
                        ("temperature 100, top-k 0", ("--temperature", "100", "--top-k", "0")),
                        ("top-k 1", ("--top-k", "1", "--temperature", "1")),
                        ("top-k 256 (the vocabulary)", ("--top-k", "256", "--temperature", "1")),
                        ("top-k 257 (past the vocabulary)", ("--top-k", "257", "--temperature", "1")),
                        ("top-k 10^9", ("--top-k", "1000000000", "--temperature", "1")),
                        ("seed 0", ("--seed", "0", "--temperature", "1")),
                        ("seed 9e18", ("--seed", "9000000000000000000", "--temperature", "1")),
                        ("2 threads", ("--threads", "2",))):
        gen(f"sampling: {name}", "hi", "either", (("--temperature", "--top-k", "--seed", "--threads"),),
            extra=extra, check=printed_bytes(2, 8))
    gen("sampling: 5000 tokens at temperature 1e-30", "hi", "either", ("--temperature",),
        extra=("--temperature", "1e-30", "--top-k", "0"), tokens="5000",
        check=printed_bytes(2, 5000), timeout=60)
    gen("--device cuda without a GPU", "hi", "fail", (("cuda", "GPU", "--device"),),
        extra=("--device", "cuda"))
    # model files that are not one
    def mf(name, target, expect, names, *steps, ranks=1, why=""):
        gen(f"--model-file {name}", "hi", expect, names, model=target, steps=steps, ranks=ranks,
            why=why or f"--model-file {name} accepted")
    mf("missing", "nope.h5", "fail", ("nope.h5",))
    mf("a folder", "adir", "fail", ("adir", NOT_REGULAR), mkdir("adir"))
    mf("a FIFO", "fifo", "fail", ("fifo", NOT_REGULAR), fifo("fifo"))
    mf("a FIFO, 2 ranks", "fifo", "fail", ("fifo", NOT_REGULAR), fifo("fifo"), ranks=2)
    mf("a link to a zero device", "z.h5", "fail", ("z.h5", NOT_REGULAR), node("zero", "zero"), link("zero", "z.h5"))
    mf("a null device", "null", "fail", ("null", NOT_REGULAR), node("null", "null"))
    mf("empty", "e.h5", "fail", ("e.h5",), write("e.h5", b""))
    mf("a text file", "t.h5", "fail", ("t.h5",), write("t.h5", b"not HDF5\n" * 100))
    mf("a dataset", "tok.h5", "fail", ("tok.h5",), cp("tok.h5"))
    mf("an MLP", "mlp.h5", "fail", ("mlp.h5",), cp("mlp.h5"))
    mf("a CNN", "cnn.h5", "fail", ("cnn.h5",), cp("cnn.h5"))
    mf("a checkpoint of an MLP", "c.h5", "fail", ("c.h5",),
       call("c.h5: the newest checkpoint of the fixture run", lambda ctx: shutil.copy(
           os.path.join(fx, "ckpt", sorted(n for n in os.listdir(os.path.join(fx, "ckpt")) if n.endswith(".h5"))[-1]),
           ctx.path("c.h5"))))
    g = os.path.join(fx, "gpt.h5")
    attrs = [("the model attribute says vocab 1000", GPT1000, "fail"),
             ("the model attribute is empty", "", "fail"),
             ("the model attribute is garbage", "gpt(((", "fail"),
             ("the model attribute overflows", "gpt(layers=1,heads=2,width=2097152,context=2097152,vocab=2097152)", "fail"),
             ("the model attribute says 2^24 layers", "gpt(layers=16777216,heads=2,width=16,context=16,vocab=256)", "fail"),
             ("the model attribute is an MLP", MLP, "fail"),
             ("the model attribute is @FILE", "@spec.txt", "fail")]
    for name, value, expect in attrs:
        mf(name, "m.h5", expect, ("m.h5",), write("spec.txt", GPT.encode()),
           call(f"m.h5: gpt.h5 with model = {value[:60]!r}", lambda ctx, v=value: craft.set_model_attr(g, ctx.path("m.h5"), v)))
    mf("a tensor reshaped", "m.h5", "fail", ("m.h5", "transformer.wte.weight"),
       call("m.h5: gpt.h5 with transformer.wte.weight 255 x 16", lambda ctx: craft.reshape_model_tensor(
           g, ctx.path("m.h5"), "transformer.wte.weight", (255, 16))))
    mf("a tensor missing", "m.h5", "fail", ("m.h5",),
       call("m.h5: gpt.h5 without transformer.ln_f.bias", lambda ctx: _drop_tensor(g, ctx.path("m.h5"), "transformer.ln_f.bias")))
    mf("a tensor of NaN", "m.h5", "either", ("m.h5",),
       call("m.h5: gpt.h5 with transformer.ln_f.weight all NaN", lambda ctx: _nan_tensor(g, ctx.path("m.h5"), "transformer.ln_f.weight")))
    gen("2 ranks", "hi", "ok", ranks=2, check=printed_bytes(2, 8))
    gen("4 ranks", "hi", "ok", ranks=4, check=printed_bytes(2, 8), timeout=40)
    return out


def _drop_tensor(src, dst, name):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        del f[name]


def _nan_tensor(src, dst, name):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f[name][...] = np.nan


# ---- damaged model files ---------------------------------------------------------------------

def damaged_cases(fx):
    out = []
    commands = {
        "eval-cnn": ["eval", "--model-file", "m.h5", "--data", "img.h5", "--comm-timeout", "10"],
        "init-cnn": ["train", "--init", "m.h5", "--data", "img.h5", "--global-batch", "8", "--steps",
                     "1", "--log-every", "0", "--comm-timeout", "10"],
        "generate": ["generate", "--model-file", "m.h5", "--prompt", "hi", "--tokens", "8"],
        "eval-gpt": ["eval", "--model-file", "m.h5", "--data", "tok.h5", "--comm-timeout", "10"],
        "init-gpt": ["train", "--init", "m.h5", "--data", "tok.h5", "--global-batch", "8", "--steps",
                     "1", "--log-every", "0", "--comm-timeout", "10"],
        "eval-mlp": ["eval", "--model-file", "m.h5", "--data", "d.h5", "--comm-timeout", "10"],
    }
    data = {"eval-cnn": "img.h5", "init-cnn": "img.h5", "generate": None, "eval-gpt": "tok.h5",
            "init-gpt": "tok.h5", "eval-mlp": "d.h5"}
    plans = [("cnn.h5", ["eval-cnn", "init-cnn"], 20, 6, 1, 11),
             ("gpt.h5", ["generate", "eval-gpt", "generate", "init-gpt"], 24, 6, 1, 12),
             ("mlp.h5", ["eval-mlp"], 10, 0, 2, 13)]

    def add(model, kind, how, make, ranks):
        args = commands[kind]
        out.append(Case("damaged", f"{model} {how}: {kind}" + (f", {ranks} ranks" if ranks > 1 else ""),
                        args, "either", ("m.h5",),
                        setup=setup(call(f"m.h5: {model} {how}", make),
                                    cp(data[kind]) if data[kind] else None),
                        ranks=ranks, timeout=25,
                        build_args=comm_timeout(10) if kind == "generate" else None,
                        why=f"a damaged {model} ({how}) accepted"))

    for model, kinds, meta, values, ranks, seed in plans:
        src = os.path.join(fx, model)
        blob = fixture(fx, model)
        picks = craft.flip_positions(src, meta, values, seed)
        for i, (where, offset, bit) in enumerate(picks):
            kind = kinds[i % len(kinds)]
            add(model, kind, f"bit {bit} of byte {offset:#x} flipped ({where})",
                lambda ctx, o=offset, b=bit, d=blob: ctx.write("m.h5", craft.flip(d, o, b)), ranks)
        # the global heap that holds the `model` string: its first object's size field (flips
        # there made HDF5 1.10.8 loop for ever reading the attribute, in a scan of the probe)
        heap = blob.find(b"GCOL")
        if heap >= 0 and ranks == 1:
            for j, (offset, bit) in enumerate(((heap + 0x18, 3), (heap + 0x18, 7),
                                               (heap + 0x19, 0), (heap + 0x19, 2))):
                kind = kinds[j % len(kinds)]
                add(model, kind, f"bit {bit} of byte {offset:#x} flipped (global heap)",
                    lambda ctx, o=offset, b=bit, d=blob: ctx.write("m.h5", craft.flip(d, o, b)), 1)
        if ranks == 1:
            for j, length in enumerate((0, 96, 512, len(blob) // 2, len(blob) - 1)):
                kind = kinds[j % len(kinds)]
                add(model, kind, f"cut to {length} bytes",
                    lambda ctx, n=length, d=blob: ctx.write("m.h5", d[:n]), 1)
    # shapes in a model file that overflow when multiplied (issue 22 item 2: reached through
    # eval, train --init and generate): the stored description, and a tensor's stored shape
    overflow = "2097152x2097152x2097152-flatten-10"
    cnn, mlp, gpt = (os.path.join(fx, m) for m in ("cnn.h5", "mlp.h5", "gpt.h5"))
    for kind in ("eval-cnn", "init-cnn", "generate"):
        add("cnn.h5", kind, f"with model = {overflow!r}",
            lambda ctx: craft.set_model_attr(cnn, ctx.path("m.h5"), overflow), 1)
    for kind in ("eval-mlp", "init-cnn"):
        add("mlp.h5", kind, "with 0.weight declared 2^31 x 2^31 (chunked, never written)",
            lambda ctx: craft.reshape_model_tensor(mlp, ctx.path("m.h5"), "0.weight",
                                                   (2 ** 31, 2 ** 31), chunks=(1, 16)), 1)
    add("gpt.h5", "generate", "with transformer.wte.weight declared 2^40 x 16 (never written)",
        lambda ctx: craft.reshape_model_tensor(gpt, ctx.path("m.h5"), "transformer.wte.weight",
                                               (2 ** 40, 16), chunks=(1024, 16)), 1)
    add("gpt.h5", "eval-gpt", "with the model attribute's vocab 2^24 and tensors of 256",
        lambda ctx: craft.set_model_attr(gpt, ctx.path("m.h5"), GPT.replace("vocab=256", "vocab=16777216")), 1)
    # the newest checkpoint damaged, then --resume
    ck = os.path.join(fx, "ckpt")
    newest = sorted(n for n in os.listdir(ck) if n.endswith(".h5"))[-1]
    picks = craft.flip_positions(os.path.join(ck, newest), 5, 1, 14)
    for where, offset, bit in picks:
        def make(ctx, o=offset, b=bit):
            ctx.cp("ckpt")
            p = ctx.path(os.path.join("ckpt", newest))
            ctx.write(os.path.join("ckpt", newest), craft.flip(open(p, "rb").read(), o, b))
        out.append(Case("damaged", f"checkpoint {newest}: bit {bit} of byte {offset:#x} ({where}), --resume",
                        ["train", "--data", "d.h5", "--model", MLP, "--global-batch", "64", "--steps",
                         "6", "--log-every", "0", "--checkpoint-dir", "ckpt", "--checkpoint-every",
                         "2", "--resume", "--comm-timeout", "10"], "either", (newest,),
                        setup=setup(cp("d.h5"), call(f"ckpt/ with {newest} flipped", make)),
                        mutable=("ckpt/*", "ckpt"), timeout=25,
                        why="a damaged checkpoint resumed without a word"))
    # the fuzz target's findings (tests/fuzz/crashers), through the commands that read them
    crashers = os.path.join(HERE, "..", "fuzz", "crashers")
    for name in sorted(os.listdir(crashers)):
        if name.startswith("model-"):
            args = ["eval", "--model-file", name, "--data", "d.h5", "--comm-timeout", "10"]
        else:
            args = ["info", name]
        out.append(Case("damaged", f"fuzz crasher {name}", args, "fail", (name,),
                        setup=setup(call(f"copy of tests/fuzz/crashers/{name}", lambda ctx, n=name: shutil.copy(
                            os.path.join(crashers, n), ctx.path(n))), cp("d.h5")),
                        timeout=25))
    return out


# ---- stalls and kills ------------------------------------------------------------------------

def rank_named(rank):
    """The rank named as the one waited for ("rank(s) 1 never reached it", "rank 0 has not
    summed its slice", "rank 2 (process N) is gone"), not in "rank 0 of 2" or "rank 0 names it"."""
    return Named(rf"\brank(?:s|\(s\))?\s+(?:\d+\s*,\s*|\d+\s+and\s+)*{rank}\b"
                 rf"(?!\s+of\b)(?!\s+names\b)(?!\s+is the one)(?!:)",
                 f"the stalled rank ({rank}) as the one waited for")


def stall_controller(rank, sig, after_pattern=None, delay=0.0, resume_after=None):
    def control(ctx):
        if after_pattern and not ctx.wait_output(after_pattern, 60):
            ctx.events.append(f"'{after_pattern}' never appeared: no {sig.name} sent")
            return
        time.sleep(delay)
        if ctx.signal_rank(rank, sig):
            ctx.t0 = ctx.elapsed()
            if resume_after:
                time.sleep(resume_after)
                pid = ctx.rank_pid(rank, 1)
                if pid:
                    os.kill(pid, signal.SIGCONT)
                    ctx.events.append(f"SIGCONT to rank {rank} at {ctx.elapsed():.1f} s")
    return control


def stalls_cases(fx):
    out = []
    T = 10
    train = ["train", "--data", "big.h5", "--eval-data", "e.h5", "--model", "16-64-relu-4",
             "--global-batch", "64", "--steps", "1000000", "--log-every", "0", "--comm-timeout",
             str(T)]
    evalcmd = ["eval", "--model-file", "mlp.h5", "--data", "big.h5", "--comm-timeout", str(T)]
    gencmd = ["generate", "--model-file", "gpt.h5", "--prompt", "hi", "--tokens", "30000"]
    files = setup(cp("big.h5"), cp("e.h5"), cp("mlp.h5"), cp("gpt.h5"))
    kill_bound = {2: 10, 4: 12}

    def grace(ranks):
        return T + (8 if ranks == 2 else 10)

    def s(name, args, ranks, victim, expect="fail", env=None, prestop=None, controller=None,
          bound=None, named=True, extra_setup=None, mutable=(), build_args=None, kills=False):
        names = [rank_named(victim)] if named else []
        out.append(Case("stalls", name, args, expect, names, ranks=ranks, env=env, once=False,
                        prestop=prestop, controller=controller,
                        timeout=bound or grace(ranks), hard_extra=20, timing=True,
                        setup=extra_setup or files, mutable=mutable, build_args=build_args,
                        kills=kills, why=f"{name}: the job ended with exit 0"))

    gen_bound = comm_timeout(T)
    for ranks, victims in ((2, (0, 1)), (4, (0, 3))):
        for v in victims:
            s(f"train: rank {v} of {ranks} stopped before MPI_Init", train, ranks, v,
              prestop=(v, "STOP"), named=False)
            s(f"train: rank {v} of {ranks} stopped in set-up (DDTRAIN_DEBUG_STALL)", train, ranks, v,
              env={"DDTRAIN_DEBUG_STALL": f"setup:{v}"})
            s(f"train: rank {v} of {ranks} stopped (SIGSTOP) in a step", train, ranks, v,
              controller=stall_controller(v, signal.SIGSTOP, r"=> \d+ steps", 1.0), bound=T + 6)
            s(f"train: rank {v} of {ranks} stalls in evaluation", train + ["--eval-every", "50"],
              ranks, v, env={"DDTRAIN_DEBUG_STALL": f"evaluation:{v}"})
        s(f"train: rank {victims[1]} of {ranks} stopped (SIGSTOP) as it starts", train, ranks,
          victims[1], controller=stall_controller(victims[1], signal.SIGSTOP), named=False)
        s(f"train: rank {victims[1]} of {ranks} stalls in a checkpoint",
          train + ["--checkpoint-dir", "ck", "--checkpoint-every", "50"], ranks, victims[1],
          env={"DDTRAIN_DEBUG_STALL": f"checkpoint:{victims[1]}"}, mutable=("ck", "ck/*"))
        s(f"train: rank {victims[0]} of {ranks} stalls in the all-reduce", train, ranks, victims[0],
          env={"DDTRAIN_DEBUG_STALL": f"allreduce:{victims[0]}"})
        s(f"eval: rank {victims[1]} of {ranks} stalls in evaluation", evalcmd, ranks, victims[1],
          env={"DDTRAIN_DEBUG_STALL": f"evaluation:{victims[1]}"})
        s(f"eval: rank {victims[0]} of {ranks} stopped before MPI_Init", evalcmd, ranks, victims[0],
          prestop=(victims[0], "STOP"), named=False)
        for v in victims:
            s(f"generate: rank {v} of {ranks} stopped while rank 0 samples", gencmd, ranks, v,
              controller=stall_controller(v, signal.SIGSTOP, None, 1.0), bound=T + 6,
              build_args=gen_bound)
        s(f"generate: rank {victims[1]} of {ranks} stopped before MPI_Init", gencmd, ranks,
          victims[1], prestop=(victims[1], "STOP"), named=False, build_args=gen_bound)
    s("train: rank 0 of 2 (the one that writes) stalls in a checkpoint",
      train + ["--checkpoint-dir", "ck", "--checkpoint-every", "50"], 2, 0,
      env={"DDTRAIN_DEBUG_STALL": "checkpoint:0"}, mutable=("ck", "ck/*"), named=False)
    # kills in every phase: the job ends promptly, no process left. A rank is held at a
    # phase by DDTRAIN_DEBUG_STALL and killed there (DDTRAIN_DEBUG_KILL exists at the
    # all-reduce only), killed as it starts, or killed mid-step.
    def kill_held(rank):
        def control(ctx):
            if ctx.rank_pid(rank) is None:
                return
            time.sleep(4.0)  # start-up, then the phase, where the rank stays
            if ctx.signal_rank(rank, signal.SIGKILL, " (held at its phase)"):
                ctx.t0 = ctx.elapsed()
        return control
    for ranks, v in ((2, 1), (4, 0)):
        held = train + ["--eval-every", "50", "--checkpoint-dir", "ck", "--checkpoint-every", "50"]
        for point in ("setup", "step", "evaluation", "checkpoint"):
            s(f"train: rank {v} of {ranks} killed in {point}", held, ranks, v, expect="ends",
              env={"DDTRAIN_DEBUG_STALL": f"{point}:{v}"}, controller=kill_held(v), bound=8,
              named=False, mutable=("ck", "ck/*"), kills=True)
        s(f"train: rank {v} of {ranks} killed in the all-reduce (DDTRAIN_DEBUG_KILL)", held,
          ranks, v, expect="ends", env={"DDTRAIN_DEBUG_KILL": f"allreduce:{v}"},
          bound=kill_bound[ranks] + 4, named=False, mutable=("ck", "ck/*"))
        s(f"train: rank {v} of {ranks} killed before MPI_Init", train, ranks, v, expect="ends",
          prestop=(v, "KILL"), bound=kill_bound[ranks], named=False)
        s(f"train: rank {v} of {ranks} killed (SIGKILL) as it starts", train, ranks, v,
          expect="ends", controller=stall_controller(v, signal.SIGKILL), bound=8, named=False,
          kills=True)
        s(f"train: rank {v} of {ranks} killed (SIGKILL) in a step", train, ranks, v, expect="ends",
          controller=stall_controller(v, signal.SIGKILL, r"=> \d+ steps", 1.0), bound=8,
          named=False, kills=True)
        s(f"generate: rank {ranks - 1} of {ranks} killed while rank 0 samples", gencmd, ranks,
          ranks - 1, expect="ends", controller=stall_controller(ranks - 1, signal.SIGKILL, None, 1.0),
          bound=8, named=False, build_args=gen_bound, kills=True)
    # a short stop (shorter than --comm-timeout) is survived; SIGTERM to one rank
    out.append(Case("stalls", "train: rank 1 of 2 stopped for 3 s, then continued",
                    ["train", "--data", "big.h5", "--model", "16-64-relu-4", "--global-batch", "64",
                     "--steps", "20000", "--log-every", "0", "--comm-timeout", str(T)], "ok",
                    ranks=2, controller=stall_controller(1, signal.SIGSTOP, r"=> \d+ steps", 0.5,
                                                         resume_after=3),
                    timeout=90, timing=True, setup=files))
    for ranks, v in ((2, 1), (4, 2)):
        out.append(Case("stalls", f"train: SIGTERM to rank {v} of {ranks} only, in a step",
                        train + ["--checkpoint-dir", "ck", "--checkpoint-every", "100000"], "either",
                        [], ranks=ranks,
                        controller=stall_controller(v, signal.SIGTERM, r"=> \d+ steps", 1.0),
                        timeout=T + 10, hard_extra=20, timing=True, setup=files,
                        mutable=("ck", "ck/*")))
    return out


# ---- outputs ---------------------------------------------------------------------------------

def outputs_cases(fx):
    out = []
    writers = {
        "train --save": (TRAIN + ["--save", "X"], ("d.h5",), "file"),
        "train --metrics": (TRAIN + ["--metrics", "X"], ("d.h5",), "appending"),
        "train --trace": (TRAIN + ["--trace", "X", "--trace-steps", "1:2"], ("d.h5",), "file"),
        "train --tensorboard": (TRAIN + ["--tensorboard", "X"], ("d.h5",), "dir"),
        "train --checkpoint-dir": (TRAIN + ["--checkpoint-dir", "X", "--checkpoint-every", "1"],
                                   ("d.h5",), "dir"),
        "convert text": (["convert", "text", "text.txt", "-o", "X"], ("text.txt",), "file"),
        "convert tokens": (["convert", "tokens", "tokens.bin", "-o", "X"], ("tokens.bin",), "file"),
        "convert idx": (["convert", "idx", "img.idx", "lab.idx", "-o", "X"], ("img.idx", "lab.idx"),
                        "file"),
        "convert images": (["convert", "images", "images", "-o", "X"], ("images",), "file"),
        "synth": (["synth", "-o", "X", "--rows", "64", "--features", "4", "--classes", "2"], (),
                  "file"),
    }
    for wname, (args, inputs, kind) in writers.items():
        copies = [cp(i) for i in inputs]
        warns = kind == "appending"

        def o(target, expect, names, *steps, why="", outputs=(), timeout=20, name=None):
            out.append(Case("outputs", f"{wname} {name or target}",
                            [target if a == "X" else a for a in args], expect, names,
                            setup=setup(*copies, *steps), outputs=outputs, timeout=timeout,
                            why=why or f"{wname} onto {name or target}"))
        if kind in ("file", "appending"):
            o("null", "either", ("null",), node("null", "null"), name="a null device node")
            o("full", "either" if warns else "fail", (("full", "No space"),), node("full", "full"),
              name="a full device node",
              why=f"{wname} onto a full device reported success")
            o("fifo", "either", ("fifo",), fifo("fifo"), name="a FIFO without a reader")
            o("adir", "fail", ("adir",), mkdir("adir"), name="a folder")
            o("nl", "either", ("nl",), node("null", "null"), link("null", "nl"),
              name="a symlink to a null device node")
            o("dl", "either", ("dl",), link("nowhere/x", "dl"), name="a dangling symlink",
              outputs=("dl",))
            o("no/such/dir/out", "fail", ("no/such/dir",), name="a path in a missing folder")
            o("old", "ok", (), write("old", b"an earlier output\n"), outputs=("old",),
              name="an existing regular file")
        else:
            o("null", "fail", ("null",), node("null", "null"), name="a null device node")
            o("fifo", "fail", ("fifo",), fifo("fifo"), name="a FIFO")
            o("afile", "fail", ("afile",), write("afile", b"x"), name="a regular file")
            o("dl", "either", ("dl",), link("nowhere", "dl"), name="a dangling symlink",
              outputs=("dl", "dl/*"))
            o("new/sub", "either", ("new/sub",), name="a path in a missing folder",
              outputs=("new", "new/*"))
            o("adir", "ok", (), mkdir("adir"), outputs=("adir", "adir/*"), name="an existing folder")
    # outputs that are inputs under another name
    for name, args, steps, culprit in (
            ("train --save onto --data by a symlink", TRAIN + ["--save", "ln.h5"],
             (cp("d.h5"), link("d.h5", "ln.h5")), "ln.h5"),
            ("train --save onto --data by a hard link", TRAIN + ["--save", "hard.h5"],
             (cp("d.h5"), hardlink("d.h5", "hard.h5")), "hard.h5"),
            ("train --metrics onto --eval-data by a hard link",
             TRAIN + ["--eval-data", "e.h5", "--metrics", "m.jsonl"],
             (cp("d.h5"), cp("e.h5"), hardlink("e.h5", "m.jsonl")), "m.jsonl"),
            ("convert tokens -o onto its input by a hard link",
             ["convert", "tokens", "tokens.bin", "-o", "hard.h5"],
             (cp("tokens.bin"), hardlink("tokens.bin", "hard.h5")), "hard.h5")):
        out.append(Case("outputs", name, args, "usage", (culprit,), setup=setup(*steps),
                        why=f"{name}: accepted"))
    # a failing run leaves what it would replace intact
    for name, args in (("train --save (bad --data)", ["train", "--data", "nope.h5", "--save", "old.h5"]),
                       ("train --save (bad --model)", TRAIN + ["--model", "16-0-4", "--save", "old.h5"]),
                       ("train --save (diverges)", TRAIN + ["--lr", "1e6", "--momentum", "0", "--steps", "50",
                                                            "--save", "old.h5"]),
                       ("convert text -o (empty input)", ["convert", "text", "e.txt", "-o", "old.h5"])):
        out.append(Case("outputs", f"{name}: the earlier output intact", args, "fail", (),
                        setup=setup(cp("d.h5"), cp("mlp.h5", "old.h5"), write("e.txt", b"")),
                        outputs=("old.h5",)))

    # ended by SIGTERM or SIGINT while writing: no temporary file left (issue item 10)
    def ended(name, args, steps, sig, outputs=("o*",)):
        def control(ctx):
            found = ctx.wait_file("*.tmp-*", 30)
            time.sleep(0.3)
            ctx.signal_rank(0, sig, "" if found else " (no temporary file seen first)")
        out.append(Case("outputs", f"{name}, ended by {sig.name}", args, "any", (),
                        setup=setup(*steps), controller=control, outputs=outputs, timeout=60))
    big_images = call("imgs: 2 classes x 20 PNGs", lambda ctx: craft.image_folder(ctx.path("imgs"), 20))
    ended("convert images --size 1024x1024", ["convert", "images", "imgs", "-o", "o.h5", "--size",
                                              "1024x1024"], (big_images,), signal.SIGTERM)
    ended("convert images --size 1024x1024", ["convert", "images", "imgs", "-o", "o.h5", "--size",
                                              "1024x1024"], (big_images,), signal.SIGINT)
    big_text = write("big.txt", bytes(range(256)) * (160 << 10), "big.txt (40 MiB)")
    ended("convert text 40 MB", ["convert", "text", "big.txt", "-o", "o.h5", "--shards", "4"],
          (big_text,), signal.SIGTERM)
    ended("convert text 40 MB", ["convert", "text", "big.txt", "-o", "o.h5"], (big_text,),
          signal.SIGINT)
    ended("convert tokens 40 MB", ["convert", "tokens", "big.bin", "-o", "o.h5"],
          (call("big.bin: 20M raw ids", lambda ctx: craft.raw_tokens(ctx.path("big.bin"), np.arange(20_000_000) % 50257)),),
          signal.SIGTERM)
    ended("convert idx 60000x28x28", ["convert", "idx", "i.idx", "l.idx", "-o", "o.h5"],
          (call("i.idx 60000x28x28, l.idx 60000", lambda ctx: (craft.idx_file(ctx.path("i.idx"), (60000, 28, 28)),
                                                              craft.idx_file(ctx.path("l.idx"), (60000,), bytes(60000)))),),
          signal.SIGTERM)
    ended("synth 20M rows", ["synth", "-o", "o.h5", "--rows", "20000000", "--features", "16",
                             "--classes", "4"], (), signal.SIGTERM)
    ended("train --save, SIGTERM", TRAIN[:-4] + ["--steps", "100000", "--log-every", "0", "--save", "o.h5",
                                                 "--trace", "o.json", "--trace-steps", "1:99999"],
          (cp("d.h5"),), signal.SIGTERM)
    return out


# ---- every numeric option --------------------------------------------------------------------

NUMERIC_VALUE_NAMES = {"N", "RATE", "M", "W", "MAX", "B", "E", "G", "S", "SIZE", "SECONDS", "T",
                       "K", "BLOCKS", "STEPS", "LEVEL", "SIGMA", "F", "V", "D", "C", "b|auto",
                       "STEPS|DURATION", "A:B", "SIZE|FRACTION|LIST", "HxW"}
REAL = {"lr", "momentum", "weight-decay", "clip-grad-norm", "beta1", "beta2", "eps", "lr-gamma",
        "min-lr", "loss-scale", "comm-timeout", "temperature", "val-fraction", "noise"}
ZERO_MEANINGLESS = {"global-batch", "threads", "epochs", "tokens", "rows", "features", "classes",
                    "shards", "checkpoint-keep", "lr", "eps", "loss-scale", "bucket-size",
                    "checkpoint-every", "trace-steps", "size", "device-memory-limit"}


def options_of(binary, command):
    text = subprocess.run([binary, command, "--help"], capture_output=True, text=True).stdout
    found = []
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([\w-]+)(?: (\S+))?\s", line)
        if m and m.group(2) and m.group(2) in NUMERIC_VALUE_NAMES:
            found.append((m.group(1), m.group(2)))
    return found


def numeric_cases(fx, binary):
    out = []
    base = {
        "train": (TRAIN, (cp("d.h5"), cp("e.h5"))),
        "eval": (["eval", "--model-file", "mlp.h5", "--data", "d.h5"], (cp("mlp.h5"), cp("d.h5"))),
        "generate": (["generate", "--model-file", "gpt.h5", "--prompt", "hi", "--tokens", "4"],
                     (cp("gpt.h5"),)),
        "synth": (["synth", "-o", "s.h5", "--rows", "64", "--features", "4", "--classes", "2"], ()),
    }
    convert_form = {
        "vocab-size": (["convert", "tokens", "tokens.bin", "-o", "o.h5"], (cp("tokens.bin"),)),
        "seed": (["convert", "images", "images", "-o", "o.h5"], (cp("images"),)),
        "size": (["convert", "images", "images", "-o", "o.h5"], (cp("images"),)),
    }
    text_form = (["convert", "text", "text.txt", "-o", "o.h5"], (cp("text.txt"),))
    context = {
        "eval-every": ["--eval-data", "e.h5"], "eval-rows": ["--eval-data", "e.h5"],
        "beta1": ["--optimizer", "adamw"], "beta2": ["--optimizer", "adamw"],
        "eps": ["--optimizer", "adamw"], "lr-step-size": ["--lr-schedule", "step"],
        "lr-gamma": ["--lr-schedule", "step"], "min-lr": ["--lr-schedule", "cosine"],
        "trace-steps": ["--trace", "t.json"], "checkpoint-every": ["--checkpoint-dir", "ck"],
        "checkpoint-keep": ["--checkpoint-dir", "ck", "--checkpoint-every", "1"],
        "stop-after": ["--checkpoint-dir", "ck"], "metrics-every": ["--metrics", "m.jsonl"],
        "warmup-steps": ["--lr-schedule", "cosine"],
    }
    special = {
        "A:B": [("0:5", "usage"), ("5:1", "usage"), ("1:", "usage"), ("-1:3", "usage"),
                ("1:99999999999999999999", "usage"), ("1:2:3", "usage"), ("3:3", "either")],
        "STEPS|DURATION": [("0", "usage"), ("-1", "usage"), ("0s", "usage"), ("1e400s", "usage"),
                           ("10xyz", "usage"), ("nan", "usage"), ("99999999999999999999", "usage"),
                           ("1.5min", "either")],
        "SIZE|FRACTION|LIST": [("0", "usage"), ("-1", "usage"), ("1.5", "usage"), ("nan", "usage"),
                               ("1e400", "usage"), ("1GiB,", "usage"), ("1GiB,1GiB,1GiB", "either"),
                               ("0.0000001", "either"), ("99999999999999999999", "usage")],
        "HxW": [("0x0", "usage"), ("-1x-1", "usage"), ("99999999999999999999x2", "usage"),
                ("8x8junk", "usage")],
    }
    # Every option gets a negative number, NaN, a number past int64 and trailing junk; zero
    # where zero means nothing; reals also infinity and 1e400, sizes a negative size; integers a
    # fraction.
    generic = ["-1", "nan", "99999999999999999999", "12abc"]
    commands = ["train", "eval", "generate", "synth", "convert"]
    for command in commands:
        for option, value_name in options_of(binary, command):
            if command == "convert":
                args0, steps0 = convert_form.get(option, text_form)
            else:
                args0, steps0 = base[command]
            args0 = list(args0)
            if f"--{option}" in args0:  # the option under test replaces the base's own value
                i = args0.index(f"--{option}")
                del args0[i:i + 2]
            args0 += context.get(option, [])
            if value_name in special:
                values = special[value_name]
            else:
                values = [(v, "either" if (v == "99999999999999999999" and option in REAL) else "usage")
                          for v in generic]
                if option in ZERO_MEANINGLESS:
                    values.append(("0", "usage"))
                if value_name == "SIZE":
                    values += [("-1MiB", "usage"), ("16EiB", "either")]
                elif option in REAL:
                    values += [("inf", "usage"), ("1e400", "usage")]
                else:
                    values += [("1.5", "usage")]
                if value_name == "b|auto":
                    values += [("auto", "either")] + ([("3", "usage")] if command == "train" else [])
            for value, expect in values:
                out.append(Case("numeric", f"{command} --{option} {value!r}",
                                args0 + [f"--{option}", value], expect, (f"--{option}",),
                                setup=setup(*steps0), outputs=("*.h5", "o*", "s*", "ck", "ck/*",
                                                               "t.json", "m.jsonl"),
                                mutable=(), timeout=30,
                                why=f"--{option} {value!r} accepted"))
    # the command line itself
    for name, args, expect, names in (
            ("--lr twice (the last wins)", TRAIN + ["--lr", "0.1", "--lr", "0.2"], "either", ("--lr",)),
            ("--lr=0.1", TRAIN + ["--lr=0.1"], "ok", ()),
            ("--lr= (empty)", TRAIN + ["--lr="], "usage", ("--lr",)),
            ("--lr without a value", TRAIN + ["--lr"], "usage", ("--lr",)),
            ("an unknown option", TRAIN + ["--bogus", "1"], "usage", ("--bogus",)),
            ("--steps=2=3", TRAIN + ["--steps=2=3"], "usage", ("--steps",)),
            ("a flag with a value", TRAIN + ["--nesterov=yes"], "usage", ("--nesterov",)),
            ("an option of another command", TRAIN + ["--prompt", "x"], "usage", ("--prompt",)),
            ("--epochs and --steps", TRAIN + ["--epochs", "2"], "usage", (("--epochs", "--steps"),)),
            ("a stray argument", TRAIN + ["stray"], "usage", ("stray",)),
            ("--global-batch not divisible, 2 ranks", TRAIN[:-6] + ["--global-batch", "63", "--steps", "2"],
             "usage", ("--global-batch",)),
            ("--micro-batch 7 of 64", TRAIN + ["--micro-batch", "7"], "usage", ("--micro-batch",)),
    ):
        ranks = 2 if "2 ranks" in name else 1
        out.append(Case("numeric", f"command line: {name}", args, expect, names,
                        setup=setup(cp("d.h5")), ranks=ranks, outputs=("*",)))
    # ranks started with different settings (issue 22 item 11): refused at set-up, naming the
    # option that differs
    for option, value, ranks in (("--lr", "0.1", 2), ("--data", "e.h5", 2), ("--seed", "7", 2),
                                 ("--global-batch", "32", 2), ("--model", "16-4-4", 2),
                                 ("--steps", "3", 2), ("--momentum", "0.5", 2), ("--lr", "0.1", 4)):
        out.append(Case("numeric", f"ranks disagree: {option} {value} on rank {ranks - 1} of {ranks}",
                        TRAIN + ["--comm-timeout", "10"], "usage", (option,), setup=setup(cp("d.h5"), cp("e.h5")), ranks=ranks,
                        env={f"DDPROBE_ARGS_RANK_{ranks - 1}": f"{option} {value}"},
                        why=f"ranks with different {option} trained to the end", timeout=30))
    # the environment's knobs, on 2 ranks
    knobs = [("DDTRAIN_ALLREDUCE_CHUNK", ["0", "-1", "99999999999999999999", "4095", "65MiB"],
              ["64MiB"]),
             ("DDTRAIN_ALLREDUCE_SLOTS", ["1", "65", "abc"], ["2"]),
             ("DDTRAIN_NODE_RANKS", ["0", "99999999999999999999"], ["1", "3"]),
             ("DDTRAIN_ALLREDUCE_STORES", ["bogus"], ["plain"]),
             ("DDTRAIN_DEVICE_MEMORY_LIMIT", ["nan", "-1", "1e400"], ["0.5"]),
             ("DDTRAIN_DEVICE_MEMORY", ["bogus"], ["preallocate"])]
    for variable, bad, good in knobs:
        for value in bad + good:
            expect = "either" if value in good else "usage"
            out.append(Case("numeric", f"{variable}={value!r}, 2 ranks", TRAIN, expect, (variable,),
                            setup=setup(cp("d.h5")), ranks=2, env={variable: value},
                            why=f"{variable}={value!r} accepted", timeout=30))
    return out


def all_cases(classes, fixtures, binary=None):
    binary = binary or os.environ.get("DDPROBE_REFERENCE")
    makers = {"grammar": grammar_cases, "images": images_cases, "text": text_cases,
              "tokens": tokens_cases, "generate": generate_cases, "damaged": damaged_cases,
              "stalls": stalls_cases, "outputs": outputs_cases,
              "numeric": lambda fx: numeric_cases(fx, binary)}
    cases = []
    for cls in classes:
        made = makers[cls](fixtures)
        for k, case in enumerate(made):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", case.name).strip("-")[:48]
            case.id = f"{cls}-{k:03d}-{slug}"
            cases.append(case)
    return cases
