"""A Python task that misbehaves on purpose, one way per `mode` parameter: the
sandbox must bound, deny or report each (tests/tests/all/python.rs)."""

import os
import sys

from mayfly_sdk import Input, Outputs, Retryable, Shard, Task, log, task

try:  # CPython for WASI may have no socket module at all: that is a denial too.
    import socket
except ImportError as e:
    socket = None
    SOCKET_IMPORT = str(e)
try:
    import subprocess
except ImportError as e:
    subprocess = None
    SUBPROCESS_IMPORT = str(e)


def attempt(what, f):
    """`what<TAB>denied: ...` when `f` fails, `what<TAB>ALLOWED: ...` when it works."""
    try:
        result = f()
    except BaseException as e:  # noqa: BLE001 - any failure is a denial
        return f"{what}\tdenied: {type(e).__name__}: {e}"
    if result in (None, "", [], {}, b""):
        return f"{what}\tdenied: nothing there ({result!r})"
    return f"{what}\tALLOWED: {str(result)[:200]!r}"


def connect(port):
    if socket is None:
        raise ImportError(SOCKET_IMPORT)
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        return s.getpeername()


def spawn():
    if subprocess is None:
        raise ImportError(SUBPROCESS_IMPORT)
    return subprocess.run(["/bin/echo", "hi"], capture_output=True, check=True).stdout


def create():
    with open("/tmp/mayfly-escape-py", "w") as f:
        f.write("escaped")
    return "written"


def read(path):
    with open(path) as f:
        return f.read()


@task
class Misbehave(Task):
    def start(self, shard: Shard, params: dict, outputs: Outputs) -> None:
        self.mode = params.get("mode", "ok")
        self.params = params
        if self.mode == "raise-in-start":
            raise RuntimeError("cannot start: the lookup table is missing")

    def item(self, input: Input, outputs: Outputs) -> None:
        mode = self.mode
        if mode == "loop":
            while True:
                pass
        elif mode == "alloc":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        elif mode == "output":
            out = outputs.create("big.bin")
            while True:
                out.write(b"x" * 65536)
        elif mode == "log":
            while True:
                log.info("again and again", item=input.name)
        elif mode == "stdout":
            while True:
                print("printing forever")
        elif mode == "raise":
            first = input.readline()
            raise ValueError(f"boom while reading {input.name}: {first!r}")
        elif mode == "retryable":
            raise Retryable("try me again later")
        elif mode == "print":
            print("hello from print")
            print("to stderr", file=sys.stderr)
            log.warn("a warning", item=input.name, size=input.size)
        elif mode == "escape":
            port, path = self.params["port"], self.params["path"]
            lines = [
                attempt("file", lambda: read(path)),
                attempt("passwd", lambda: read("/etc/passwd")),
                attempt("dir", lambda: os.listdir("/")),
                attempt("cwd", lambda: os.listdir(".")),
                attempt("env", lambda: dict(os.environ)),
                attempt("home", lambda: os.environ.get("HOME")),
                attempt("tcp", lambda: connect(port)),
                attempt("subprocess", spawn),
                attempt("create", create),
            ]
            with outputs.create("report.tsv") as out:
                out.write(("\n".join(lines) + "\n").encode())
        else:
            with outputs.create("copy.bin") as out:
                out.write(input.read())
