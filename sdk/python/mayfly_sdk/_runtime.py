"""The glue between the host's three calls (start, item, finish) and the task.

Shared by the component (:mod:`mayfly_sdk._component`) and the fake host of
:mod:`mayfly_sdk.testing`, so that what unit tests check (parameters, error
mapping, tracebacks, closing outputs) is what runs in the sandbox.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import linecache
import os
import sys
import tokenize  # linecache and traceback use it; a component cannot import it later
import traceback
import typing
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from . import _host, _params
from ._errors import Fatal, HostIOError, Retryable, StorageError
from ._io import Input, Output, Outputs

__all__ = [
    "Failure",
    "HostTrap",
    "Session",
    "Shard",
    "Task",
    "TaskSpec",
    "call",
    "register",
    "registered",
    "require_task",
    "spec_of",
    "task",
]

_ = tokenize  # imported for its side effect on the module table

#: Failure messages are cut to this many characters (the tail is kept).
MAX_MESSAGE = 8 * 1024
_SDK_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Shard:
    """The shard an instance of a task serves."""

    #: The job's id.
    job: str
    #: The shard's number in the job's plan.
    id: int
    #: Which attempt at the shard this is (1 for the first; a retry starts in
    #: a fresh instance; 0 for a preflight, a trial on a sample of the inputs
    #: before the job is launched, whose outputs are discarded).
    attempt: int
    #: How many items this instance will be given.
    items: int


class Task:
    """A task that keeps state across the items of a shard. Decorate the subclass with ``@task``.

    One instance (made with ``cls()``, no arguments) lives for one shard
    attempt: :meth:`start` begins the shard, :meth:`item` is called once per
    item in the shard's order, and :meth:`finish` writes what was combined.
    Outputs opened in ``start`` or ``finish`` belong to the shard, those
    opened in ``item`` to that item. An item that fails for good is
    quarantined: the shard runs again in a fresh instance without it, so the
    state never holds half an item.

    The parameters are a ``dict`` unless the class sets ``Params`` to a
    dataclass (or annotates ``start``'s ``params`` with one). Each method
    may leave out its trailing arguments: ``def item(self, input)``.
    """

    #: The parameters' type: ``dict`` or a dataclass (``None``: from ``start``'s annotation, else ``dict``).
    Params: Any = None

    def start(self, shard: Shard, params: Any, outputs: Outputs) -> None:
        """Begins a shard. A failure here fails the shard attempt (not an item)."""

    def item(self, input: Input, outputs: Outputs) -> None:
        """Processes one item."""
        raise NotImplementedError(f"{type(self).__qualname__} must define item(self, input, outputs)")

    def finish(self, outputs: Outputs) -> None:
        """Ends the shard: write what was combined. A failure here fails the shard attempt."""


@dataclass
class Failure:
    """How a call failed: the task error returned to the host."""

    message: str
    retryable: bool


class HostTrap(BaseException):
    """The host stopped the instance (a limit was passed): never caught by the sdk.

    Raised only by the fake host of :mod:`mayfly_sdk.testing`; in a component
    the host traps and Python never sees it.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _positional(fn: Callable[..., Any], skip_self: bool) -> Tuple[List[inspect.Parameter], bool]:
    """The positional parameters of ``fn`` (without ``self``), and whether it has ``*args``."""
    sig = inspect.signature(fn)
    params = []
    star = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            params.append(p)
        elif p.kind == p.VAR_POSITIONAL:
            star = True
        elif p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            raise TypeError(f"{fn.__qualname__}: keyword-only parameter {p.name!r} needs a default")
    if skip_self:
        params = params[1:]
    return params, star


def _arity(fn: Callable[..., Any], skip_self: bool, names: Tuple[str, ...]) -> int:
    """How many of ``names`` (in order) ``fn`` takes positionally."""
    params, star = _positional(fn, skip_self)
    if star:
        return len(names)
    required = [p for p in params if p.default is p.empty]
    if len(required) > len(names):
        raise TypeError(
            f"{fn.__qualname__} takes {len(required)} arguments; a task is given at most ({', '.join(names)})"
        )
    return min(len(params), len(names))


def _params_kind(explicit: Any, fn: Optional[Callable[..., Any]], index: int, skip_self: bool, takes: bool) -> Any:
    """``None`` (no parameters), ``dict`` or a dataclass."""
    kind = explicit
    if kind is None and fn is not None and takes:
        params, _ = _positional(fn, skip_self)
        if len(params) > index:
            try:
                hints = typing.get_type_hints(fn)
            except Exception:
                hints = {}
            ann = hints.get(params[index].name)
            if ann is not None and dataclasses.is_dataclass(ann) and isinstance(ann, type):
                kind = ann
    if kind is None:
        return dict if takes else None
    if kind is dict or typing.get_origin(kind) is dict:
        return dict
    if not (dataclasses.is_dataclass(kind) and isinstance(kind, type)):
        raise TypeError(f"task parameters must be dict or a dataclass, not {kind!r}")
    _params.check_type(kind)
    return kind


@dataclass
class TaskSpec:
    """A declared task: what ``@task`` recorded at import (build) time."""

    obj: Any
    is_class: bool
    #: ``None`` (the task takes no parameters), ``dict``, or a dataclass.
    params: Any
    #: Function tasks: how many of (input, params, outputs) the function takes.
    fn_args: int = 3
    #: Class tasks: how many of (shard, params, outputs), (input, outputs), (outputs) each method takes.
    start_args: int = 3
    item_args: int = 2
    finish_args: int = 1

    @property
    def name(self) -> str:
        return f"{getattr(self.obj, '__module__', '?')}.{getattr(self.obj, '__qualname__', repr(self.obj))}"


def make_spec(obj: Any, params: Any = None) -> TaskSpec:
    """Checks a decorated function or class and records how to call it."""
    if inspect.isclass(obj):
        if not issubclass(obj, Task):
            raise TypeError(f"@task on class {obj.__qualname__}: it must subclass mayfly_sdk.Task")
        if obj.item is Task.item:
            raise TypeError(f"@task class {obj.__qualname__} must define item(self, input, outputs)")
        start_args = _arity(obj.start, True, ("shard", "params", "outputs"))
        item_args = _arity(obj.item, True, ("input", "outputs"))
        finish_args = _arity(obj.finish, True, ("outputs",))
        explicit = params if params is not None else getattr(obj, "Params", None)
        takes = start_args >= 2 or explicit is not None
        kind = _params_kind(explicit, obj.start if obj.start is not Task.start else None, 1, True, takes)
        return TaskSpec(obj, True, kind, start_args=start_args, item_args=item_args, finish_args=finish_args)
    if callable(obj):
        fn_args = _arity(obj, False, ("input", "params", "outputs"))
        takes = fn_args >= 2 or params is not None
        kind = _params_kind(params, obj, 1, False, takes)
        return TaskSpec(obj, False, kind, fn_args=fn_args)
    raise TypeError(f"@task applies to a function or a Task subclass, not {obj!r}")


_registered: Optional[TaskSpec] = None


def register(spec: TaskSpec) -> None:
    """Records the component's task. In a component there is one; a second is an error."""
    global _registered
    if sys.platform == "wasi" and _registered is not None and _registered.obj is not spec.obj:
        raise RuntimeError(f"a component has one task: {_registered.name} and {spec.name} are both declared with @task")
    _registered = spec


def registered() -> Optional[TaskSpec]:
    """The task declared last with ``@task`` (the component's task), if any."""
    return _registered


def spec_of(obj: Any) -> TaskSpec:
    """The spec of a decorated function or class."""
    spec = getattr(obj, "__mayfly_task__", None)
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"{obj!r} is not a task: decorate it with @mayfly_sdk.task")
    return spec


def task(obj: Any = None, /, *, params: Any = None) -> Any:
    """Declares the task: a function called per item, or a :class:`Task` subclass.

    A function takes ``(input, params, outputs)``, each optional from the
    end (``def f(input)``); its parameters are parsed once per shard, into a
    ``dict``, or into the dataclass given as ``params=`` or as the
    annotation of its second argument. Its outputs belong to the item.

    A class subclasses :class:`Task`; see there. A component has exactly one
    task; ``mayfly build`` finds it when the module is imported.
    """

    def decorate(target: Any) -> Any:
        spec = make_spec(target, params)
        try:
            target.__mayfly_task__ = spec
        except (AttributeError, TypeError):
            raise TypeError(f"@task cannot mark {target!r}") from None
        register(spec)
        if sys.platform == "wasi":
            # componentize-py looks the export class up on the app module:
            # make a one-file app work without the generated entry module.
            module = sys.modules.get(getattr(target, "__module__", ""))
            if module is not None and not hasattr(module, "WitWorld"):
                from ._component import WitWorld  # build time: imports are allowed

                module.WitWorld = WitWorld  # type: ignore[attr-defined]
        return target

    if obj is None:
        return decorate
    return decorate(obj)


def _remember_sources(task_file: Optional[str]) -> None:
    """Keeps the source lines of the task's modules (and the sdk's) for tracebacks.

    At run time a component has no file system, so :mod:`linecache` could
    not read them; entries whose mtime is ``None`` are never re-checked.
    """
    dirs = [_SDK_DIR]
    if task_file:
        dirs.append(os.path.dirname(os.path.abspath(task_file)))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        full = os.path.abspath(path)
        if not any(full.startswith(d + os.sep) for d in dirs):
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        lines = [line + "\n" if not line.endswith("\n") else line for line in io.StringIO(text)]
        code_file = getattr(getattr(module, "__spec__", None), "origin", None) or path
        for name in {path, code_file}:
            linecache.cache[name] = (len(data), None, lines, name)


def require_task(filename: str) -> None:
    """Called by the generated entry module when the component is built.

    Raises a clear error if ``filename`` (the user's module) declared no task,
    and keeps the task's source lines for its tracebacks.
    """
    spec = _registered
    if spec is None:
        raise RuntimeError(
            f"{filename} declares no task: decorate a function (def f(input, params, outputs)) "
            f"or a mayfly_sdk.Task subclass with @mayfly_sdk.task"
        )
    module = sys.modules.get(getattr(spec.obj, "__module__", ""))
    _remember_sources(getattr(module, "__file__", None))


# ---------------------------------------------------------------------------
# Calls


class Session:
    """The state of one instance for one shard attempt: the task object or the parsed parameters, and open outputs."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.started = False
        self.state: Any = None
        self.params: Any = None
        # Outputs opened in the current call, and those kept for the shard
        # (opened in start), each (name, file object to close).
        self._call_outputs: List[Tuple[str, Any]] = []
        self._shard_outputs: List[Tuple[str, Any]] = []
        # Whose outputs the current call opens: the shard's (start, finish),
        # or one item's (a new number per item call).
        self.scope: Tuple[str, int] = ("shard", 0)
        self._item_calls = 0

    def track(self, name: str, obj: Any) -> None:
        self._call_outputs.append((name, obj))

    def enter(self, kind: str) -> None:
        """A call begins: the outputs it opens are the shard's, or (``item``) a new item's."""
        if kind == "item":
            self._item_calls += 1
            self.scope = ("item", self._item_calls)
        else:
            self.scope = ("shard", 0)

    # The three calls.

    def start(self, info: Any) -> None:
        spec = self.spec
        shard = Shard(job=info.job, id=info.shard, attempt=info.attempt, items=info.items)
        self.state = None
        self.started = False
        params = _params.parse(_host.host().params(), spec.params)
        if spec.is_class:
            state = spec.obj()
            args = (shard, params, Outputs(self))[: spec.start_args]
            state.start(*args)
            self.state = state
        else:
            self.params = params
        self.started = True

    def item(self, res: Any) -> None:
        if not self.started:
            raise Fatal("the task was given an item before its shard started")
        spec = self.spec
        inp = Input(res)
        try:
            if spec.is_class:
                self.state.item(*(inp, Outputs(self))[: spec.item_args])
            else:
                spec.obj(*(inp, self.params, Outputs(self))[: spec.fn_args])
        finally:
            inp.close()

    def finish(self) -> None:
        spec = self.spec
        if not spec.is_class:
            self.started = False
            self.params = None
            return
        if not self.started:
            raise Fatal("the task was finished before its shard started")
        state, self.state, self.started = self.state, None, False
        state.finish(*(Outputs(self),)[: spec.finish_args])

    # Outputs at the end of a call.

    def end_call(self, kind: str) -> Optional[Failure]:
        """Closes the outputs the call owns: the item's after ``item``, all after ``finish``."""
        if kind == "start":
            self._shard_outputs.extend(self._call_outputs)
            self._call_outputs = []
            return None
        closing = self._call_outputs
        self._call_outputs = []
        if kind == "finish":
            closing = self._shard_outputs + closing
            self._shard_outputs = []
        failure = None
        for name, obj in closing:
            try:
                obj.close()
            except HostTrap:
                raise
            except BaseException as e:  # noqa: BLE001 - every error fails the call
                if failure is None:
                    failure = Failure(
                        _cut(f"writing output {name}: {_describe(e)}"), isinstance(e, (StorageError, Retryable))
                    )
                _abandon(obj)
        return failure

    def abandon(self) -> None:
        """The call failed: close every output without sending what is buffered (the host discards them)."""
        for _, obj in self._shard_outputs + self._call_outputs:
            _abandon(obj)
        self._shard_outputs = []
        self._call_outputs = []


def _abandon(obj: Any) -> None:
    out = obj.buffer if isinstance(obj, io.TextIOWrapper) else obj
    if isinstance(out, Output):
        out._abandon()
    try:
        obj.close()
    except Exception:
        pass


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _cut(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    head = message.split("\n", 1)[0][:1024]
    keep = MAX_MESSAGE - len(head) - 40
    return f"{head}\n[... {len(message) - len(head) - keep} characters cut ...]\n{message[-keep:]}"


def _in_sdk(filename: str) -> bool:
    return filename.startswith(_SDK_DIR + os.sep)


def _traceback(e: BaseException) -> str:
    """The traceback of ``e`` without the sdk's own frames at its start (the glue that called the task).

    For the sdk's own host errors (:class:`HostIOError`), the sdk frames at
    its end go too: the task's line that made the call is what matters.
    """
    tb = e.__traceback__
    while tb is not None and _in_sdk(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    te = traceback.TracebackException(type(e), e, tb)
    if isinstance(e, HostIOError):
        while len(te.stack) > 1 and _in_sdk(te.stack[-1].filename):
            te.stack.pop()
    return "".join(te.format())


def failure_of(e: BaseException) -> Failure:
    """The task error for an exception that left ``start``, ``item`` or ``finish``."""
    if isinstance(e, Retryable):
        return Failure(_cut(str(e) or "Retryable"), True)
    if isinstance(e, Fatal):
        return Failure(_cut(str(e) or "Fatal"), False)
    if isinstance(e, StorageError):
        return Failure(_cut(str(e)), True)
    if isinstance(e, SystemExit):
        return Failure(f"the task called sys.exit({e.code!r})", False)
    try:
        summary = "".join(traceback.format_exception_only(type(e), e)).rstrip("\n")
        return Failure(_cut(f"{summary}\n{_traceback(e)}".rstrip("\n")), False)
    except BaseException:  # formatting failed (a broken __str__): say what we can
        return Failure(f"{type(e).__name__} (its message could not be formatted)", False)


def _setup_stdio() -> None:
    """Line-buffers stdout and stderr, so that each printed line reaches the host (as a log line) at once."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and not getattr(stream, "line_buffering", True):
            try:
                reconfigure(line_buffering=True)
            except Exception:
                pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except HostTrap:
            raise
        except Exception:
            pass


def call(session: Session, kind: str, arg: Any = None) -> Optional[Failure]:
    """Runs one call (``"start"``, ``"item"`` or ``"finish"``) and returns its failure, if any.

    Every exception becomes a failure, except :class:`MemoryError` (reported
    with ``panicked`` and re-raised: the instance traps, and the host tells
    an out-of-memory from a bug) and the fake host's :class:`HostTrap`.
    """
    _setup_stdio()
    try:
        try:
            session.enter(kind)
            if kind == "start":
                session.start(arg)
            elif kind == "item":
                session.item(arg)
            elif kind == "finish":
                session.finish()
            else:
                raise ValueError(f"unknown call {kind!r}")
            failure = session.end_call(kind)
        except HostTrap:
            raise
        except MemoryError:
            _panicked("MemoryError (out of memory)")
            raise
        except BaseException as e:  # noqa: BLE001 - every exception fails the call, with its traceback
            failure = failure_of(e)
        if failure is not None:
            session.abandon()
        return failure
    finally:
        _flush_stdio()


def _panicked(message: str) -> None:
    try:
        _host.host().panicked(message)
    except Exception:
        pass

