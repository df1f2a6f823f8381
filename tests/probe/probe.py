#!/usr/bin/python3
"""probe.py - the runner of ddtrain's adversarial probe (started by tests/probe/adversarial.sh,
whose header documents the command line).

Each case (tests/probe/cases.py) gets a folder of its own, holding copies of the inputs it
needs and the device nodes, FIFOs and links it is about; runs one ddtrain command (directly for
one rank, under mpirun for several) with a time bound; and is classified:

  clean           exit 0 with the expected effect, or a non-zero exit with a "ddtrain: error"
                  line naming what the case expects it to name (the file, the option, the rank)
  wrong but safe  accepted what it should refuse, refused what is valid, or an error that does
                  not name the culprit, is printed more than once, or has the wrong exit code
  crash           death by SIGSEGV, SIGABRT, SIGBUS, SIGFPE or SIGILL, or a sanitizer report
  hang            the command ran past its bound (or past the probe's memory cap), or left a
                  process behind
  damaged         a file, link, FIFO or device node of the case's folder changed, a device node
                  was replaced, a temporary file (*.tmp-*) was left, or an output that existed
                  was damaged by a run that failed

The worst outcome wins, per build and then over the builds a case ran on. Processes are found
by a tag in their environment (DDPROBE_TAG) and ended by their ids: the probe never signals a
process it did not start.
"""
import argparse
import concurrent.futures
import fnmatch
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases as case_library  # noqa: E402

VERDICTS = ["clean", "wrong but safe", "crash", "hang", "damaged"]
SEVERITY = {v: i for i, v in enumerate(VERDICTS)}
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
CRASH_PATTERNS = [
    (re.compile(r"ERROR: AddressSanitizer[^\n]*"), "AddressSanitizer"),
    (re.compile(r"AddressSanitizer:DEADLYSIGNAL"), "AddressSanitizer"),
    (re.compile(r"[^\n]*runtime error:[^\n]*"), "UBSan"),
    (re.compile(r"ERROR: LeakSanitizer[^\n]*"), "LeakSanitizer"),
    (re.compile(r"[^\n]*exited on signal (4|6|7|8|11)\b[^\n]*"), "mpirun"),
    (re.compile(r"[^\n]*\(core dumped\)[^\n]*"), "shell"),
    (re.compile(r"[^\n]*Segmentation fault[^\n]*"), "shell"),
    (re.compile(r"[^\n]*stack-overflow[^\n]*"), "AddressSanitizer"),
]
MEMORY_CAP = 3 << 30           # resident bytes of one case's processes together
FILE_SIZE_LIMIT = 2 << 30      # RLIMIT_FSIZE of every process a case starts
ERROR_LINE = re.compile(r"^ddtrain: error\b.*$", re.M)


class Build:
    def __init__(self, directory):
        self.dir = os.path.abspath(directory)
        self.binary = os.path.join(self.dir, "ddtrain")
        if not os.access(self.binary, os.X_OK):
            sys.exit(f"adversarial: {self.binary} is not an executable (build ddtrain first)")
        libraries = subprocess.run(["ldd", self.binary], capture_output=True, text=True).stdout
        self.sanitized = "libasan" in libraries or "libubsan" in libraries
        self.name = ("asan-" if self.sanitized else "") + os.path.basename(self.dir.rstrip("/"))
        help_text = subprocess.run([self.binary, "generate", "--help"], capture_output=True,
                                   text=True).stdout
        self.generate_has_comm_timeout = "--comm-timeout" in help_text


def base_environment():
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1", "OPENBLAS_NUM_THREADS": "1",
        # Huge requests get NULL as in a release build, not an ASan report; leaks are not this
        # probe's subject.
        "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:handle_abort=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    })
    for key in ("DDTRAIN_DEBUG_STALL", "DDTRAIN_DEBUG_KILL", "DDTRAIN_DEBUG", "DDTRAIN_NODE_RANKS",
                "DDTRAIN_DEVICE_MEMORY", "DDTRAIN_DEVICE_MEMORY_LIMIT", "TMPDIR"):
        env.pop(key, None)
    return env


# ---- processes -------------------------------------------------------------------------------

def tagged_processes(tag):
    needle = b"DDPROBE_TAG=" + tag.encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    found.append(int(entry))
        except OSError:
            pass
    return found


def process_environment(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return {}


def resident_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def describe_processes(tag):
    """What is still running for a case: 'mpirun (sleeping), ddtrain rank 1 (stopped)'."""
    states = {"R": "running", "S": "sleeping", "D": "in I/O", "T": "stopped", "t": "stopped",
              "Z": "a zombie"}
    parts = []
    for pid in tagged_processes(tag):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        rank = process_environment(pid).get(b"OMPI_COMM_WORLD_RANK")
        who = f"{comm} rank {rank.decode()}" if rank and comm != "bash" else comm
        parts.append(f"{who} ({states.get(state, state)})")
    return ", ".join(sorted(parts))


def kill_tagged(tag):
    pids = tagged_processes(tag)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


class Context:
    """What a case's setup, controller and check see."""

    def __init__(self, case, build, work, fixtures):
        self.case, self.build, self.fixtures = case, build, fixtures
        self.dir = work
        self.tag = None
        self.proc = None
        self.stdout_path = self.stderr_path = None
        self.events = []
        self.t0 = 0.0  # when the probe's own signal was sent: bounds of timing cases count from it

    def path(self, name):
        return os.path.join(self.dir, name)

    # setup helpers -----------------------------------------------------------------------
    def cp(self, name, dest=None):
        src = os.path.join(self.fixtures, name)
        dst = self.path(dest or name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
        return dst

    def write(self, name, data):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        return p

    def mkdir(self, name):
        os.makedirs(self.path(name), exist_ok=True)
        return self.path(name)

    def fifo(self, name):
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        os.mkfifo(self.path(name))
        return self.path(name)

    NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "urandom": (1, 9)}

    def node(self, name, kind):
        """A character device node in the case's folder (never the system's own /dev)."""
        major, minor = self.NODES[kind]
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        os.mknod(self.path(name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        return self.path(name)

    def link(self, target, name):
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        os.symlink(target, self.path(name))
        return self.path(name)

    def hardlink(self, existing, name):
        os.link(self.path(existing), self.path(name))

    # controller helpers ------------------------------------------------------------------
    def elapsed(self):
        return time.monotonic() - self.started

    def rank_pid(self, rank, timeout=30.0):
        """The ddtrain process of a rank (its environment names the rank and the tag)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for pid in tagged_processes(self.tag):
                env = process_environment(pid)
                if env.get(b"OMPI_COMM_WORLD_RANK", b"0") != str(rank).encode():
                    continue
                try:
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if os.path.realpath(exe) == os.path.realpath(self.build.binary):
                    return pid
            time.sleep(0.05)
        return None

    def wait_output(self, pattern, timeout=60.0):
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline and self.proc.poll() is None:
            for p in (self.stdout_path, self.stderr_path):
                try:
                    with open(p, errors="replace") as f:
                        if regex.search(f.read()):
                            return True
                except OSError:
                    pass
            time.sleep(0.1)
        return False

    def wait_file(self, pattern, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for root, _, files in os.walk(self.dir):
                for name in files:
                    if fnmatch.fnmatch(name, pattern):
                        return True
            time.sleep(0.05)
        return False

    def signal_rank(self, rank, sig, note=""):
        pid = self.rank_pid(rank)
        if pid is None:
            self.events.append(f"rank {rank}'s process not found for {sig.name}")
            return False
        os.kill(pid, sig)
        self.events.append(f"{sig.name} to rank {rank} (pid {pid}) at {self.elapsed():.1f} s{note}")
        return True


# ---- snapshots (the damage check) ------------------------------------------------------------

def snapshot(root):
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = os.stat(p).st_mode
                    pointee = ("character device" if stat.S_ISCHR(target) else
                               "FIFO" if stat.S_ISFIFO(target) else "")
                except OSError:
                    pointee = ""
                entries[rel] = ("symlink", (os.readlink(p), pointee))
            elif stat.S_ISREG(mode):
                h = hashlib.sha1()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                entries[rel] = ("file", h.hexdigest())
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                entries[rel] = ("character device" if stat.S_ISCHR(mode) else "block device",
                                st.st_rdev)
            elif stat.S_ISFIFO(mode):
                entries[rel] = ("FIFO", None)
            elif stat.S_ISDIR(mode):
                entries[rel] = ("directory", None)
            else:
                entries[rel] = ("other", None)
    return entries


def damage(case, before, after, succeeded, killed):
    """What changed that must not have, and notes: temporary files left by a process the probe
    (or the case, on purpose) ended with SIGKILL, which no program can clean up after."""
    found, notes = [], []
    for rel, (kind, detail) in sorted(before.items()):
        may_change = any(fnmatch.fnmatch(rel, g) for g in case.mutable) or (
            succeeded and any(fnmatch.fnmatch(rel, g) for g in case.outputs))
        now = after.get(rel)
        if kind in ("character device", "block device", "FIFO") and now and now[0] != kind:
            found.append(f"{rel}: a {kind} was replaced by a {now[0]}")
            continue
        # a link to a device or FIFO given as an output (ln -s /dev/null out.h5): written
        # through or refused, never replaced (a link to a regular file may be replaced)
        if kind == "symlink" and detail[1] and now != (kind, detail):
            found.append(f"{rel}: a symlink to a {detail[1]} was replaced by a {now[0] if now else 'nothing'}")
            continue
        if may_change:
            continue
        if now is None:
            found.append(f"{rel}: the {kind} is gone")
        elif now[0] != kind:
            found.append(f"{rel}: a {kind} became a {now[0]}")
        elif now[1] != detail:
            found.append(f"{rel}: the {kind} changed" +
                         (" (an input)" if not any(fnmatch.fnmatch(rel, g) for g in case.outputs)
                          else " (an output that existed, by a run that failed)"))
    for rel in sorted(set(after) - set(before)):
        if re.search(r"\.tmp-\d+", os.path.basename(rel)):
            (notes if killed else found).append(f"{rel}: a temporary file was left behind")
    return found, notes


# ---- one case on one build -------------------------------------------------------------------

def command_line(case, build, ctx, rcdir):
    binary = build.binary
    args = [a.replace("{dir}", ctx.dir) for a in case.args]
    extra = list(case.build_args(build)) if case.build_args else []
    if case.ranks == 1 and not case.prestop:
        return [binary] + args + extra
    wrapper = os.path.join(HERE, "rankwrap.sh")
    stop_rank, stop_signal = case.prestop or (-1, "NONE")
    return (["mpirun", "-np", str(case.ranks), "--bind-to", "none", "--oversubscribe", "bash",
             wrapper, rcdir, str(stop_rank), stop_signal, binary] + args + extra)


def limit_child():
    # Writes past 2 GiB fail with EFBIG instead of filling the disk (SIGXFSZ ignored), and
    # nothing the probe starts may dump core.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # A probe started in the background of a shell inherits SIGINT and SIGQUIT ignored, and
    # would pass that on: the cases get the default actions, as from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def run_case(case, build, out, fixtures, keep):
    work = os.path.join(out, "work", build.name, case.id)
    shutil.rmtree(work, ignore_errors=True)
    rcdir = work + ".rc"
    shutil.rmtree(rcdir, ignore_errors=True)
    os.makedirs(work)
    os.makedirs(rcdir)
    logdir = os.path.join(out, "logs", build.name)
    os.makedirs(logdir, exist_ok=True)
    ctx = Context(case, build, work, fixtures)
    ctx.stdout_path = os.path.join(logdir, case.id + ".out")
    ctx.stderr_path = os.path.join(logdir, case.id + ".err")
    result = {"id": case.id, "class": case.cls, "build": build.name, "name": case.name}
    try:
        if case.setup:
            case.setup(ctx)
    except Exception as e:  # a probe bug, not ddtrain's: reported as such
        result.update(verdict="probe error", reason=f"setup failed: {e!r}", seconds=0,
                      command="")
        return result
    before = snapshot(work)
    ctx.tag = f"ddprobe-{os.getpid()}-{build.name}-{case.id}"
    env = base_environment()
    env["DDPROBE_TAG"] = ctx.tag
    env.update(case.env)
    argv = command_line(case, build, ctx, rcdir)
    bound = case.bound(build)
    hard = bound + case.hard_extra
    result["command"] = (f"cd {shlex.quote(work)} && " +
                         " ".join(f"{k}={shlex.quote(v)}" for k, v in case.env.items()) +
                         (" " if case.env else "") + " ".join(shlex.quote(a) for a in argv))
    result["setup"] = case.describe
    with open(ctx.stdout_path, "wb") as fo, open(ctx.stderr_path, "wb") as fe:
        ctx.started = time.monotonic()
        ctx.proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=fo, stderr=fe, start_new_session=True,
                                    preexec_fn=limit_child)
        controller = None
        if case.controller:
            controller = threading.Thread(target=case.controller, args=(ctx,), daemon=True)
            controller.start()
        timed_out = runaway = False
        peak = 0
        last_rss_check = 0.0
        while ctx.proc.poll() is None:
            now = ctx.elapsed()
            if now > ctx.t0 + hard:
                timed_out = True
                break
            if now - last_rss_check > 0.5:
                last_rss_check = now
                peak = max(peak, resident_bytes(tagged_processes(ctx.tag)))
                if peak > MEMORY_CAP:
                    runaway = True
                    break
            time.sleep(0.05)
        elapsed = ctx.elapsed()
        if timed_out or runaway:
            ctx.events.append("running at the end: " + (describe_processes(ctx.tag) or "nothing"))
            try:
                os.killpg(ctx.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            kill_tagged(ctx.tag)
        rc = ctx.proc.wait()
        if controller:
            controller.join(timeout=5)
    # What the job started must be gone within 3 s of its end (an Open MPI singleton's helper
    # daemon takes a moment); what remains is killed and reported.
    left = []
    for _ in range(30):
        time.sleep(0.1)
        left = tagged_processes(ctx.tag)
        if not left:
            break
    for _ in range(3):
        if not tagged_processes(ctx.tag):
            break
        kill_tagged(ctx.tag)
        time.sleep(0.3)
    rank_codes = {}
    for name in os.listdir(rcdir):
        try:
            rank_codes[int(name.split(".")[1])] = int(open(os.path.join(rcdir, name)).read())
        except (ValueError, IndexError, OSError):
            pass
    stdout = open(ctx.stdout_path, "rb").read().decode(errors="replace")
    stderr = open(ctx.stderr_path, "rb").read().decode(errors="replace")
    after = snapshot(work)
    succeeded = rc == 0 and all(c == 0 for c in rank_codes.values())
    damaged, notes = damage(case, before, after, succeeded, timed_out or runaway or case.kills)
    ctx.events += [f"after SIGKILL: {n}" for n in notes]
    run = dict(rc=rc, rank_codes=rank_codes, stdout=stdout, stderr=stderr, elapsed=elapsed,
               bound=bound, t0=ctx.t0, timed_out=timed_out, runaway=runaway, peak=peak, left=left,
               damage=damaged, succeeded=succeeded, ctx=ctx)
    verdict, reason = classify(case, build, run)
    result.update(verdict=verdict, reason=reason, rc=rc, seconds=round(elapsed, 1),
                  rank_codes=rank_codes, events=ctx.events,
                  stderr_tail=tail(stderr, 12), stdout_tail=tail(stdout, 4))
    if verdict == "clean" and not keep:
        shutil.rmtree(work, ignore_errors=True)
        os.remove(ctx.stdout_path)
        os.remove(ctx.stderr_path)
    shutil.rmtree(rcdir, ignore_errors=True)
    return result


def tail(text, lines):
    kept = [l for l in text.splitlines() if l.strip()]
    return "\n".join(l[:400] for l in kept[-lines:])


def crash_evidence(case, run):
    text = run["stderr"] + run["stdout"]
    for regex, source in CRASH_PATTERNS:
        m = regex.search(text)
        if m:
            frame = ""
            if source in ("AddressSanitizer", "UBSan"):
                # the top frame (which library) and the first frame in ddtrain's own sources
                frames = re.findall(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S+)", text)
                own = [f"{fn} {os.path.basename(loc)}" for fn, loc in frames if "/src/" in loc]
                top = f"{frames[0][0]} {os.path.basename(frames[0][1])}" if frames else "?"
                frame = f" (top frame {top}" + (f"; first ddtrain frame {own[0]}" if own and
                                                 not top.startswith(own[0].split()[0]) else "") + ")"
            return f"{source}: {m.group(0).strip()[:300]}{frame}"
    codes = [run["rc"]] + list(run["rank_codes"].values())
    if not run["timed_out"] and not run["runaway"]:
        for code in codes:
            sig = -code if code < 0 else (code - 128 if 128 < code < 160 else 0)
            if sig in {int(s) for s in CRASH_SIGNALS}:
                if case.expected_signal == sig:
                    continue
                return f"died of signal {signal.Signals(sig).name} (exit status {code})"
    return None


def has_name(text, name):
    if isinstance(name, case_library.Named):
        return bool(name.regex.search(text))
    if isinstance(name, tuple):
        return any(has_name(text, n) for n in name)
    return name.lower() in text.lower()


def name_text(name):
    if isinstance(name, case_library.Named):
        return name.label
    if isinstance(name, tuple):
        return " or ".join(name_text(n) for n in name)
    return f"'{name}'"


def classify(case, build, run):
    if run["damage"]:
        return "damaged", "; ".join(run["damage"])
    evidence = crash_evidence(case, run)
    if evidence:
        return "crash", evidence
    events = ("; " + "; ".join(run["ctx"].events)) if run["ctx"].events else ""
    if run["runaway"]:
        return "hang", (f"killed by the probe at {run['peak'] / 2**30:.1f} GiB resident after "
                        f"{run['elapsed']:.0f} s (cap {MEMORY_CAP >> 30} GiB){events}")
    if run["timed_out"]:
        return "hang", f"still running after {run['elapsed']:.0f} s (bound {run['bound']:.0f} s){events}"
    if run["elapsed"] - run["t0"] > run["bound"]:
        since = f" after the probe's signal" if run["t0"] else ""
        return "hang", (f"ended {run['elapsed'] - run['t0']:.0f} s{since}, past its bound of "
                        f"{run['bound']:.0f} s (exit {run['rc']}){events}")
    if run["left"]:
        return "hang", f"processes left behind after the job ended: {run['left']}{events}"
    if case.expect == "any":
        return "clean", f"exit {run['rc']}{events}"
    if case.expect == "ends" and not run["succeeded"]:
        return "clean", f"exit {run['rc']} after {run['elapsed'] - run['t0']:.1f} s{events}"
    stderr = run["stderr"]
    errors = ERROR_LINE.findall(stderr)
    first = errors[0][:300] if errors else ""
    ctx = run["ctx"]
    if run["succeeded"]:
        if case.expect in ("fail", "usage", "ends"):
            return "wrong but safe", f"accepted (exit 0): {case.why}{events}"
        if case.check:
            problem = case.check(ctx, run)
            if problem:
                return "wrong but safe", f"exit 0 but {problem}"
        return "clean", "exit 0" + (f" ({case.clean_note})" if case.clean_note else "")
    codes = run["rank_codes"]
    rc = run["rc"]
    if case.expect == "ok":
        return "wrong but safe", f"refused a valid case (exit {rc}): {first or tail(stderr, 2)}"
    if case.ranks > 1 and codes and any(c == 0 for c in codes.values()):
        zero = sorted(r for r, c in codes.items() if c == 0)
        return "wrong but safe", f"rank(s) {zero} exited 0 while the job failed: {first}"
    if not errors:
        return "wrong but safe", (f"exit {rc} without a 'ddtrain: error' line: "
                                  f"{tail(stderr, 3) or '(no output)'}")
    missing = [n for n in case.names if not has_name(stderr, n)]
    if missing:
        return "wrong but safe", (f"the error does not name {', '.join(name_text(n) for n in missing)}: "
                                  f"{first}")
    if len(errors) > 1 and case.once:
        return "wrong but safe", f"the error is printed {len(errors)} times: {first}"
    if case.expect == "usage":
        bad = sorted({c for c in [rc] + list(codes.values()) if c != 2})
        if bad:
            return "wrong but safe", f"exit {bad[0]} for a usage error (README: 2): {first}"
    return "clean", f"exit {rc}: {first}"


# ---- the whole run ---------------------------------------------------------------------------

def write_reports(out, results, builds, started, classes):
    by_case = {}
    for r in results:
        by_case.setdefault(r["id"], []).append(r)
    rows = {}
    for cid, runs in by_case.items():
        worst = max(runs, key=lambda r: SEVERITY.get(r["verdict"], -1))
        cls = runs[0]["class"]
        rows.setdefault(cls, {v: 0 for v in VERDICTS + ["probe error"]})
        rows[cls][worst["verdict"]] = rows[cls].get(worst["verdict"], 0) + 1
    minutes = (time.time() - started) / 60
    lines = [f"# ddtrain adversarial probe: {len(by_case)} cases, {len(results)} runs, "
             f"{minutes:.1f} min", "",
             "builds: " + ", ".join(f"{b.name} ({b.dir}{', ASan+UBSan' if b.sanitized else ''})"
                                    for b in builds),
             "a case's verdict is the worst over the builds it ran on", "",
             "| class | tried | clean | wrong but safe | crash | hang | damaged |",
             "|---|---|---|---|---|---|---|"]
    total = {v: 0 for v in VERDICTS}
    total_tried = 0
    for cls in classes:
        if cls not in rows:
            continue
        row = rows[cls]
        tried = sum(row.values())
        total_tried += tried
        for v in VERDICTS:
            total[v] += row[v]
        extra = f" (+{row['probe error']} probe errors)" if row.get("probe error") else ""
        lines.append(f"| {cls} | {tried}{extra} | " + " | ".join(str(row[v]) for v in VERDICTS) + " |")
    lines.append(f"| **all** | {total_tried} | " + " | ".join(str(total[v]) for v in VERDICTS) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "cases.tsv"), "w") as f:
        f.write("id\tclass\tbuild\tverdict\texit\tseconds\treason\n")
        for r in results:
            f.write("\t".join(str(r.get(k, "")).replace("\t", " ").replace("\n", " ")
                              for k in ("id", "class", "build", "verdict", "rc", "seconds", "reason")) + "\n")
    with open(os.path.join(out, "non-clean.md"), "w") as f:
        f.write(table + "\n")
        for verdict in reversed(VERDICTS[1:] + ["probe error"]):
            listed = [r for r in results if r["verdict"] == verdict]
            if not listed:
                continue
            f.write(f"\n## {verdict} ({len(listed)} runs)\n")
            for r in sorted(listed, key=lambda r: (r["class"], r["id"], r["build"])):
                f.write(f"\n### {r['id']} [{r['build']}] {r['name']}\n")
                f.write(f"- evidence: {r['reason']}\n")
                if r.get("setup"):
                    f.write(f"- setup: {r['setup']}\n")
                f.write(f"- command: `{r.get('command', '')}`\n")
                if r.get("stderr_tail"):
                    f.write("- stderr (last lines):\n\n```\n" + r["stderr_tail"] + "\n```\n")
    return table


def main():
    parser = argparse.ArgumentParser(prog="adversarial.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", metavar="BUILD_DIR")
    parser.add_argument("--class", dest="classes", default="",
                        help="comma-separated classes (default: all): " + ", ".join(case_library.CLASSES))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="")
    parser.add_argument("--case", default="", help="only cases whose id matches this regex")
    parser.add_argument("--keep", action="store_true", help="keep the folders of clean cases too")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    builds = [Build(d) for d in args.builds]
    if len({b.name for b in builds}) != len(builds):
        sys.exit("adversarial: two builds with the same name")
    classes = [c for c in args.classes.split(",") if c] or list(case_library.CLASSES)
    for c in classes:
        if c not in case_library.CLASSES:
            sys.exit(f"adversarial: unknown class {c} (classes: {', '.join(case_library.CLASSES)})")
    out = os.path.abspath(args.out or os.path.join(builds[0].dir, "probe-results"))
    os.makedirs(out, exist_ok=True)
    started = time.time()
    fixtures = os.path.join(out, "fixtures")
    reference = next((b for b in builds if not b.sanitized), builds[0])
    print(f"adversarial: fixtures made with {reference.binary}", flush=True)
    case_library.make_fixtures(reference.binary, fixtures, base_environment())
    fixture_state = snapshot(fixtures)
    all_cases = case_library.all_cases(classes, fixtures, reference.binary)
    if args.case:
        all_cases = [c for c in all_cases if re.search(args.case, c.id)]
    if args.list:
        for c in all_cases:
            print(f"{c.id}\t{c.name}\t{' '.join(c.args)[:150]}")
        return 0
    plan = []
    for case in all_cases:
        for build in builds:
            if case.timing and len(builds) > 1 and build.sanitized:
                continue  # timing bounds are checked on the plain build when there is one
            plan.append((case, build))
    print(f"adversarial: {len(all_cases)} cases, {len(plan)} runs, builds "
          + ", ".join(b.name for b in builds) + f", results in {out}", flush=True)
    results = []
    lock = threading.Lock()
    done = [0]

    def one(item):
        case, build = item
        r = run_case(case, build, out, fixtures, args.keep)
        with lock:
            results.append(r)
            done[0] += 1
            mark = "" if r["verdict"] == "clean" else f"  <- {r['verdict']}: {r['reason'][:160]}"
            print(f"[{done[0]}/{len(plan)}] {r['id']} [{build.name}] {r['seconds']} s{mark}",
                  flush=True)
        return r

    shared = [p for p in plan if not p[0].exclusive]
    exclusive = [p for p in plan if p[0].exclusive]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, shared))
    for item in exclusive:  # timing cases run alone, so other cases do not slow them
        one(item)
    if snapshot(fixtures) != fixture_state:
        print("adversarial: warning: the shared fixtures changed during the run", flush=True)
    order = {c.id: k for k, c in enumerate(all_cases)}
    results.sort(key=lambda r: (order[r["id"]], r["build"]))
    table = write_reports(out, results, builds, started, classes)
    print(table)
    print(f"adversarial: details in {out}/non-clean.md, every run in {out}/cases.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
