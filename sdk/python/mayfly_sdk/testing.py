"""Run a task without wasm, against a fake host, for plain unit tests.

>>> from mayfly_sdk.testing import Item, run
>>> import app
>>> r = run(app.WordCount, [Item("a.txt", b"b a b"), Item("b.txt", b"a")], params={"mode": "map"})
>>> r.check()                                    # AssertionError with the failure's message
>>> r.shard_outputs["counts.tsv"]
b'a\\t2\\nb\\t2\\n'
>>> r = run(app.WordCount, [Item("a.txt", b"to be or a b b")], partitions=3).check()
>>> r.parts("counts.tsv")                        # {p: bytes} of the outputs part-<p, 5 digits>/counts.tsv
{0: b'be\\t1\\nor\\t1\\nto\\t1\\n', 2: b'b\\t2\\na\\t1\\n'}

The calls go through the same glue as in the sandbox (parameters, error
mapping, tracebacks, closing outputs); only the WIT lifting differs. The fake
host mirrors the real one: the output-name rule, an output opened twice,
writes after the end, the log and output limits (as traps), stdout and
stderr as log lines, and a failed attempt keeps no outputs.

Limitation: module globals live on between runs (a component instance starts
from a fresh snapshot); keep state on the task instance.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _host, _partition, _runtime
from ._runtime import Shard

__all__ = ["Failure", "FakeHost", "FakeInput", "FakeOutput", "Item", "LogLine", "RunResult", "check_output_name", "run"]

_MAX_READ = 4 << 20  # what the host gives per read at most
_MAX_PANIC = 4096


@dataclass
class Item:
    """One input item: an object's bytes (``str`` is encoded as UTF-8).

    ``offset_in_object`` makes it a byte range of a larger object (its key is
    then ``name#start-end``, as the host's). ``fail_at``: reading the byte at
    that offset fails with a host storage error (the retryable path).
    """

    name: str
    data: Union[bytes, str] = b""
    offset_in_object: int = 0
    fail_at: Optional[int] = None
    key: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = self.data.encode("utf-8")
        if self.key is None:
            if self.offset_in_object:
                end = self.offset_in_object + len(self.data)
                self.key = f"{self.name}#{self.offset_in_object}-{end}"
            else:
                self.key = self.name


@dataclass
class LogLine:
    """One log line: ``level`` is ``"trace"`` .. ``"error"``; ``source`` is ``"task"``, ``"stdout"`` or ``"stderr"``."""

    level: str
    message: str
    fields: Dict[str, str] = field(default_factory=dict)
    source: str = "task"


@dataclass
class Failure:
    """How the run failed.

    ``call`` is ``"start"``, ``"item"`` or ``"finish"``; ``item`` the key of
    the item being processed (``None`` for ``start``/``finish`` of a shard);
    ``kind`` is ``"task_error"`` (the task returned an error), ``"panic"``
    (it trapped, as on ``MemoryError``), ``"log_limit"`` or ``"output_limit"``.
    """

    call: str
    item: Optional[str]
    message: str
    retryable: bool
    kind: str = "task_error"


@dataclass
class RunResult:
    """What a run produced. Outputs are empty when it failed (the host keeps nothing of a failed attempt)."""

    shard_outputs: Dict[str, bytes] = field(default_factory=dict)
    item_outputs: Dict[str, Dict[str, bytes]] = field(default_factory=dict)
    logs: List[LogLine] = field(default_factory=list)
    progress: List[Tuple[int, int]] = field(default_factory=list)
    failure: Optional[Failure] = None

    def check(self) -> "RunResult":
        """Raises :class:`AssertionError` with the failure's message if the run failed; returns self."""
        if self.failure is not None:
            f = self.failure
            where = f" on item {f.item}" if f.item is not None else ""
            raise AssertionError(
                f"the task failed in {f.call}{where} ({f.kind}, retryable={f.retryable}):\n{f.message}"
            )
        return self

    def parts(self, name: str, item: Optional[str] = None) -> Dict[int, bytes]:
        """The parts of a partitioned output: ``{p: bytes}`` of the outputs ``part-<p, 5 digits>/<name>``.

        The shard's, or those of item ``item`` (its key). Only the parts
        written to exist (:meth:`Outputs.partitioned` opens them lazily).
        """
        outputs = self.shard_outputs if item is None else self.item_outputs.get(item, {})
        pattern = re.compile(r"part-([0-9]{5,})/" + re.escape(name))
        found = {}
        for key, data in outputs.items():
            m = pattern.fullmatch(key)
            if m is not None:
                found[int(m.group(1))] = data
        return dict(sorted(found.items()))

    def messages(self, source: Optional[str] = None) -> List[str]:
        """The log messages, optionally only those of one source (``"task"``, ``"stdout"``, ``"stderr"``)."""
        return [line.message for line in self.logs if source is None or line.source == source]


def _quoted(name: str) -> str:
    """``name`` in double quotes, as the host (Rust's ``{:?}``) shows it."""
    return json.dumps(name, ensure_ascii=False)


def check_output_name(name: str) -> Optional[str]:
    """Why ``name`` is not a valid output name, or ``None`` (the host's rule and messages)."""
    q = _quoted(name)
    if not name or len(name.encode("utf-8", "surrogatepass")) > 255:
        return f"output name {q} must be 1 to 255 bytes long"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"output name {q} has an empty, `.` or `..` part"
        if part.startswith((".", "_")):
            return f"output name {q}: parts may not start with `.` or `_` (reserved for mayfly's own files)"
        for c in part:
            if not (c.isascii() and (c.isalnum() or c in "._-")):
                return f"output name {q} contains {c!r}; use letters, digits, `.`, `_`, `-`, and `/` between parts"
    return None


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class FakeInput:
    """The host's ``input`` resource, over bytes. After the ``item`` call it is released (any use raises)."""

    def __init__(self, name: str, data: bytes, offset_in_object: int = 0, fail_at: Optional[int] = None) -> None:
        self._name = name
        self._data = data
        self._offset = offset_in_object
        self._fail_at = fail_at
        self._cursor = 0
        self.released = False
        self.reads = 0

    def _check(self) -> None:
        if self.released:
            raise AttributeError("'Input' object has no attribute 'handle' (the borrowed input was released)")

    def name(self) -> str:
        self._check()
        return self._name

    def size(self) -> int:
        self._check()
        return len(self._data)

    def offset_in_object(self) -> int:
        self._check()
        return self._offset

    def read_at(self, offset: int, max: int) -> bytes:  # noqa: A002 - the WIT name
        self._check()
        if not (0 <= offset < 1 << 64 and 0 <= max < 1 << 32):
            raise OverflowError("read_at arguments out of range for u64/u32")
        self.reads += 1
        n = min(max, _MAX_READ, len(self._data) - offset) if offset < len(self._data) else 0
        if self._fail_at is not None and n > 0 and offset <= self._fail_at < offset + n:
            raise _host.Err(_host.T.IoError_Storage(f"{self._name}: injected read failure at byte {self._fail_at}"))
        return bytes(self._data[offset : offset + n])

    def read(self, max: int) -> bytes:  # noqa: A002 - the WIT name
        data = self.read_at(self._cursor, max)
        self._cursor += len(data)
        return data

    def __enter__(self) -> "FakeInput":
        return self

    def __exit__(self, *exc: Any) -> None:
        raise AssertionError("the sdk must never drop a borrowed input")


class FakeOutput:
    """The host's ``output`` resource: collects bytes; ``__exit__`` (the drop) closes it."""

    def __init__(self, host: "FakeHost", key: str, name: str) -> None:
        self._host = host
        self.key = key
        self.name = name
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"output write takes bytes, not {type(data).__name__}")
        if self.closed or self._host.ended:
            raise _host.Err(_host.T.IoError_Closed())
        self._host._count_output(len(data))
        self.data += data

    def __enter__(self) -> "FakeOutput":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closed = True


class FakeHost:
    """The six host functions of the ``task`` world, in memory."""

    def __init__(
        self,
        params: str = "{}",
        log_limit: Optional[int] = None,
        output_limit: Optional[int] = None,
        partitions: int = 1,
    ):
        self._params = params
        self._partitions = partitions
        self.log_limit = log_limit
        self.output_limit = output_limit
        self.logs: List[LogLine] = []
        self.progress_reports: List[Tuple[int, int]] = []
        self.outputs: List[FakeOutput] = []
        self.panic: Optional[str] = None
        self.key = ""
        self.ended = False
        self._opened: set = set()
        self._log_bytes = 0
        self._output_bytes = 0
        self._partial = {"stdout": "", "stderr": ""}

    # The host functions.

    def open_output(self, name: str) -> FakeOutput:
        if self.ended:
            raise _host.Err(_host.T.IoError_Closed())
        reason = check_output_name(name)
        if reason is not None:
            raise _host.Err(_host.T.IoError_Invalid(reason))
        if (self.key, name) in self._opened:
            raise _host.Err(_host.T.IoError_Invalid(f"output {_quoted(name)} is already open"))
        self._opened.add((self.key, name))
        out = FakeOutput(self, self.key, name)
        self.outputs.append(out)
        return out

    def log(self, level: Any, message: str, fields: List[Any]) -> None:
        self._push(LogLine(level.name.lower(), message, {f.key: f.value for f in fields}, "task"))

    def progress(self, done: int, total: int) -> None:
        if not (0 <= done < 1 << 64 and 0 <= total < 1 << 64):
            raise OverflowError("progress arguments out of range for u64")
        self.progress_reports.append((done, total))

    def params(self) -> str:
        return self._params

    def partitions(self) -> int:
        return self._partitions

    def panicked(self, message: str) -> None:
        self.panic = message[:_MAX_PANIC]

    # Bookkeeping.

    def _push(self, line: LogLine) -> None:
        size = _utf8_len(line.message) + 1
        size += sum(_utf8_len(k) + _utf8_len(v) + 2 for k, v in line.fields.items())
        if self.log_limit is not None and self._log_bytes + size > self.log_limit:
            raise _runtime.HostTrap("log_limit", "log limit exceeded")
        self._log_bytes += size
        self.logs.append(line)

    def _count_output(self, n: int) -> None:
        if self.output_limit is not None and self._output_bytes + n > self.output_limit:
            raise _runtime.HostTrap("output_limit", "output limit exceeded")
        self._output_bytes += n

    def _stdio(self, source: str, text: str) -> None:
        level = "warn" if source == "stderr" else "info"
        buf = self._partial[source] + text
        *lines, rest = buf.split("\n")
        self._partial[source] = rest
        for line in lines:
            self._push(LogLine(level, line, {}, source))

    def _end_call(self) -> None:
        """The call ended: unterminated stdio text becomes a line; the log limit counts afresh."""
        for source in ("stdout", "stderr"):
            rest, self._partial[source] = self._partial[source], ""
            if rest:
                self._push(LogLine("warn" if source == "stderr" else "info", rest, {}, source))
        self._log_bytes = 0


class _Stdio(io.TextIOBase):
    """What ``sys.stdout``/``sys.stderr`` are during a call: lines go to the fake host's log."""

    def __init__(self, host: FakeHost, source: str) -> None:
        super().__init__()
        self._host = host
        self._source = source

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._host._stdio(self._source, s)
        return len(s)


class _NoImports(importlib.abc.MetaPathFinder):
    """Refuses imports during a call, as a component does (it resolves modules when it is built)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname in sys.modules:
            return None
        raise ImportError(
            f"import {fullname} at the top of your module: a task cannot import at run time "
            f"(in the sandbox, modules are resolved when the component is built)"
        )


@contextlib.contextmanager
def _calling(host: FakeHost, strict_imports: bool):
    guard = _NoImports() if strict_imports else None
    with contextlib.redirect_stdout(_Stdio(host, "stdout")), contextlib.redirect_stderr(_Stdio(host, "stderr")):
        if guard is not None:
            sys.meta_path.insert(0, guard)
        try:
            yield
        finally:
            if guard is not None:
                sys.meta_path.remove(guard)


def _bytes(data: Union[bytes, str]) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _params_text(params: Union[None, str, Dict[str, Any]]) -> str:
    if params is None:
        return "{}"
    if isinstance(params, str):
        return params
    return json.dumps(params)


def run(
    task: Any,
    items: Sequence[Item],
    params: Union[None, str, Dict[str, Any]] = None,
    *,
    shard: Optional[Shard] = None,
    isolation: str = "shard",
    log_limit: Optional[int] = None,
    output_limit: Optional[int] = None,
    strict_imports: bool = True,
    partitions: int = 1,
) -> RunResult:
    """Runs ``task`` (the function or class decorated with ``@task``) over ``items`` as one shard attempt.

    ``params``: a dict (sent as JSON), the raw JSON text, or ``None`` (``{}``).
    ``isolation="item"`` gives each item its own instance, as a job with
    ``isolation = "item"``: each instance's outputs are then the item's.
    The run stops at the first failure (``RunResult.failure``). With
    ``strict_imports`` (the default), an import of a module not yet loaded
    during a call fails, as it would in the sandbox. ``partitions`` is what
    the host says the job's reduce has (``[reduce] partitions``): the parts
    of a partitioned output are then the outputs ``part-<p>/<name>``
    (:meth:`RunResult.parts`).
    """
    if isolation not in ("shard", "item"):
        raise ValueError(f'isolation is "shard" or "item", not {isolation!r}')
    _partition._check_partitions(partitions)
    spec = _runtime.spec_of(task)
    items = list(items)
    host = FakeHost(_params_text(params), log_limit=log_limit, output_limit=output_limit, partitions=partitions)
    result = RunResult()
    if shard is None:
        shard = Shard("test", 0, 1, len(items))

    def one(session: _runtime.Session, kind: str, arg: Any, item_key: Optional[str]) -> Optional[Failure]:
        inp = arg if kind == "item" else None
        try:
            with _calling(host, strict_imports):
                try:
                    failure = _runtime.call(session, kind, arg)
                except _runtime.HostTrap as trap:
                    return Failure(kind, item_key, trap.message, True, trap.kind)
                except MemoryError:
                    return Failure(kind, item_key, host.panic or "MemoryError", False, "panic")
                finally:
                    if isinstance(inp, FakeInput):
                        inp.released = True
                    try:
                        host._end_call()
                    except _runtime.HostTrap as trap:  # unterminated output past the limit: noted, not fatal
                        note = f"(unterminated output past the log limit was dropped: {trap.message})"
                        host.logs.append(LogLine("warn", note))
        finally:
            result.logs = host.logs
            result.progress = host.progress_reports
        if failure is not None:
            return Failure(kind, item_key, failure.message, failure.retryable)
        return None

    def info(n: int) -> Any:
        return _host.T.ShardInfo(job=shard.job, shard=shard.id, attempt=shard.attempt, items=n)

    previous = _host.use(host)
    try:
        failure: Optional[Failure] = None
        if isolation == "shard":
            session = _runtime.Session(spec)
            host.key = ""
            failure = one(session, "start", info(len(items)), None)
            for it in items if failure is None else []:
                host.key = it.key or it.name
                fin = FakeInput(it.name, _bytes(it.data), it.offset_in_object, it.fail_at)
                failure = one(session, "item", fin, host.key)
                if failure is not None:
                    break
            if failure is None:
                host.key = ""
                failure = one(session, "finish", None, None)
        else:
            for it in items:
                key = it.key or it.name
                host.key = key
                session = _runtime.Session(spec)
                failure = one(session, "start", info(1), key)
                if failure is None:
                    fin = FakeInput(it.name, _bytes(it.data), it.offset_in_object, it.fail_at)
                    failure = one(session, "item", fin, key)
                if failure is None:
                    failure = one(session, "finish", None, key)
                if failure is not None:
                    break
        host.ended = True
        result.failure = failure
        if failure is None:
            for out in host.outputs:
                if out.key == "":
                    result.shard_outputs[out.name] = bytes(out.data)
                else:
                    result.item_outputs.setdefault(out.key, {})[out.name] = bytes(out.data)
        result.logs = host.logs
        result.progress = host.progress_reports
        return result
    finally:
        _host.use(previous)
