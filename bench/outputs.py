#!/usr/bin/python3
"""outputs.py - how the bench scripts write the files their options name (--csv, --png, ...),
by ddtrain's rules for outputs (README, "Outputs that are not files"):

- nothing there yet, or a regular file: written whole under PATH.tmp beside it and renamed into
  place, so an interrupted run never leaves half a file (a symbolic link is followed: the file
  it points to is replaced, the link stays);
- a character device (/dev/null) or a FIFO: written through in place, never replaced, renamed
  over or removed; the content is kept in a temporary file elsewhere until then (and left
  there, named, if writing it fails); a FIFO whose reader does not come within READER_WAIT
  seconds is refused rather than waited for without end, and /dev/full says "No space left on
  device" (at the check already);
- anything else (a directory, a block device, a socket): refused before the runs.

From Python:
    import outputs
    outputs.check("project", "--csv", path)          # before the work
    temp = outputs.temp_path(path)
    ... write temp ...
    outputs.publish("project", "--csv", temp, path)
From a shell script:
    "$python" bench/outputs.py check NAME OPTION PATH [--names-beside]
    temp=$("$python" bench/outputs.py temp PATH)
    "$python" bench/outputs.py publish NAME OPTION TEMP PATH
    echo "a line" | "$python" bench/outputs.py append NAME OPTION PATH
check --names-beside: the script also writes files named after PATH beside it (X-accuracy.csv),
which a device or FIFO cannot have. Failures print "NAME: OPTION PATH: why" and exit 2 (a path
that can never be written) or 1.
"""
import errno
import os
import stat
import sys
import tempfile
import time

READER_WAIT = 10.0  # seconds a FIFO's reader has to come


def _mode(path):
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


def _kind(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def is_stream(path):
    """A character device or a FIFO: written through in place."""
    mode = _mode(path)
    return mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode))


def check(name, option, path, names_beside=False):
    """Exits 2 (naming it) if `path` can never take this output."""
    mode = _mode(path)
    if mode is None or stat.S_ISREG(mode):
        return
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        if names_beside:
            sys.exit(_fail(name, option, path, f"is {_kind(mode)}: it takes one file, and "
                           f"{name} also writes files named after it, beside it; give a file name",
                           2))
        if stat.S_ISCHR(mode):  # a device that refuses every write (/dev/full) says so now
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
                try:
                    os.write(fd, b"")
                finally:
                    os.close(fd)
            except OSError as error:
                sys.exit(_fail(name, option, path, f"cannot write: {error.strerror}"))
        return
    sys.exit(_fail(name, option, path, f"is {_kind(mode)}: give a file path", 2))


def _fail(name, option, path, why, code=1):
    print(f"{name}: {option} {path}: {why}", file=sys.stderr)
    return code


def temp_path(path):
    """Where to write `path`'s content before publish(): beside the file (a link's target) for
    a regular file, a new temporary file elsewhere for a device or FIFO (never in /dev)."""
    if is_stream(path):
        fd, temp = tempfile.mkstemp(prefix="bench-output-", suffix=".tmp")
        os.close(fd)
        return temp
    return os.path.realpath(path) + ".tmp" if os.path.islink(path) else path + ".tmp"


def _open_stream(name, option, path):
    """A device or FIFO opened for writing without blocking on a FIFO's missing reader."""
    deadline = time.monotonic() + READER_WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
            os.set_blocking(fd, True)
            return fd
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() >= deadline:
                if error.errno == errno.ENXIO:
                    sys.exit(_fail(name, option, path, f"is a FIFO with no reader (waited "
                                   f"{READER_WAIT:g} s): start its reader first"))
                sys.exit(_fail(name, option, path, f"cannot open for writing: {error.strerror}"))
            time.sleep(0.05)


def _write_all(name, option, path, fd, data, kept=None):
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as error:  # /dev/full, a FIFO whose reader left (Python ignores SIGPIPE)
        os.close(fd)
        sys.exit(_fail(name, option, path, f"cannot write: {error.strerror}" +
                       (f" (the results are kept in {kept})" if kept else "")))
    os.close(fd)


def publish(name, option, temp, path):
    """temp renamed over path, or for a device or FIFO copied into it in place (temp is kept,
    and named, if that fails: hours of results are not thrown away for a missing reader)."""
    mode = _mode(path)
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        with open(temp, "rb") as f:
            data = f.read()
        try:
            fd = _open_stream(name, option, path)
        except SystemExit:
            print(f"{name}: the results are kept in {temp}", file=sys.stderr)
            raise
        _write_all(name, option, path, fd, data, kept=temp)
        os.unlink(temp)
        return
    if mode is not None and not stat.S_ISREG(mode):
        os.unlink(temp)
        sys.exit(_fail(name, option, path, f"is {_kind(mode)}: not replaced", 2))
    target = os.path.realpath(path) if os.path.islink(path) else path
    os.replace(temp, target)


def append(name, option, path, data):
    """Adds `data` (bytes) to the end of a regular file (created if missing), or writes it
    through into a device or FIFO."""
    if is_stream(path):
        _write_all(name, option, path, _open_stream(name, option, path), data)
        return
    check(name, option, path)
    with open(path, "ab") as f:
        f.write(data)


def main(argv):
    usage = ("usage: outputs.py check NAME OPTION PATH [--names-beside] | temp PATH | "
             "publish NAME OPTION TEMP PATH | append NAME OPTION PATH < DATA")
    if len(argv) >= 4 and argv[0] == "check" and argv[4:] in ([], ["--names-beside"]):
        check(argv[1], argv[2], argv[3], names_beside=argv[4:] == ["--names-beside"])
    elif len(argv) == 2 and argv[0] == "temp":
        print(temp_path(argv[1]))
    elif len(argv) == 5 and argv[0] == "publish":
        publish(argv[1], argv[2], argv[3], argv[4])
    elif len(argv) == 4 and argv[0] == "append":
        append(argv[1], argv[2], argv[3], sys.stdin.buffer.read())
    else:
        sys.exit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
