"""The item being processed (:class:`Input`) and the named outputs (:class:`Outputs`)."""

from __future__ import annotations

import codecs
import errno
import io
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, TypeVar, Union

from . import _host
from ._errors import HostIOError, StorageError
from ._partition import Key, _check_partitions, part_name, partition, partitions

if TYPE_CHECKING:
    from ._runtime import Session

__all__ = ["Input", "Output", "Outputs", "PartitionedOutput"]

#: How much the input asks the host for at a time, as the Rust sdk does: the
#: cost of a host call is negligible per byte, memory stays flat.
CHUNK = 256 * 1024
#: Bytes an output buffers before it hands them to the host in one call.
OUTPUT_BUFFER = 64 * 1024
#: What ``read()`` of a whole input asks for per host call (the host caps a
#: read at 4 MiB; fewer, larger calls are faster in wasm).
_READALL = 16 << 20
_MAX_U32 = 0xFFFF_FFFF

# A component cannot import at run time (modules are resolved while it is
# built), and text I/O looks its codec up lazily: look the common ones up now.
for _name in ("utf-8", "ascii", "latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"):
    codecs.lookup(_name)
    codecs.getincrementaldecoder(_name)
    codecs.getincrementalencoder(_name)

R = TypeVar("R")


def _io_error(err: Any) -> HostIOError:
    """The Python exception for a WIT ``io-error``."""
    if isinstance(err, _host.T.IoError_Storage):
        return StorageError(f"host storage error: {err.value}")
    if isinstance(err, _host.T.IoError_Invalid):
        return HostIOError(errno.EINVAL, err.value)
    if isinstance(err, _host.T.IoError_Closed):
        return HostIOError(errno.EPIPE, "resource already finished")
    return HostIOError(errno.EIO, f"unexpected host error: {err!r}")


def _call(fn: Callable[..., R], *args: Any) -> R:
    """Calls a host function whose WIT result is ``result<_, io-error>``."""
    try:
        return fn(*args)
    except _host.Err as e:
        raise _io_error(e.value) from None


class _RawInput(io.RawIOBase):
    """Unbuffered, seekable reads of the borrowed host input, by offset."""

    def __init__(self, res: Any) -> None:
        super().__init__()
        self._res = res
        self._pos = 0
        self._size: int = res.size()
        self.name: str = res.name()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _resource(self) -> Any:
        if self._res is None:
            raise ValueError("I/O operation on a closed input (an input lives only during the item() call)")
        return self._res

    def readinto(self, b: Any) -> int:
        res = self._resource()
        view = memoryview(b).cast("B")
        want = len(view)
        if want == 0 or self._pos >= self._size:
            return 0
        data = _call(res.read_at, self._pos, min(want, _MAX_U32))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        res = self._resource()
        parts = []
        while self._pos < self._size:
            data = _call(res.read_at, self._pos, _READALL)
            if not data:
                break
            parts.append(data)
            self._pos += len(data)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._resource()
        if whence == io.SEEK_SET:
            new = offset
        elif whence == io.SEEK_CUR:
            new = self._pos + offset
        elif whence == io.SEEK_END:
            new = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if new < 0:
            raise OSError(errno.EINVAL, "seek before the start of the input")
        self._pos = new
        return new

    def tell(self) -> int:
        self._resource()
        return self._pos

    def close(self) -> None:
        # Never __exit__ the resource: it is a borrow, released by the
        # runtime when item() returns.
        self._res = None
        super().close()


class Input(io.BufferedReader):
    """The item being processed: a whole object, or a byte range of one.

    A binary, read-only, seekable file object (an :class:`io.BufferedReader`,
    what ``open(path, "rb")`` returns), pulled from the host in 256 KiB
    chunks: ``read``, ``readinto``, ``readline``, iteration over lines,
    ``seek``/``tell``, and any library that takes a binary file
    (:func:`json.load`, :mod:`gzip`, :mod:`zipfile`, ...). Offsets are
    relative to the start of the item. Use :meth:`text` for text.

    It lives only during the ``item`` call: it is closed when the call
    returns, so do not keep it (nor a wrapper of it) for later.
    """

    #: The item's length in bytes (of the range, when the item is a range).
    size: int
    #: Offset of this item's first byte inside its object (0 for a whole object).
    offset_in_object: int

    def __init__(self, res: Any) -> None:
        raw = _RawInput(res)
        super().__init__(raw, CHUNK)
        self.size = raw._size
        self.offset_in_object = res.offset_in_object()

    # ``name`` (the object's name, relative to the job's input location) is
    # BufferedReader's, read from the raw input.

    def text(self, encoding: str = "utf-8", errors: str = "strict", newline: Optional[str] = None) -> io.TextIOWrapper:
        """The input as text: an :class:`io.TextIOWrapper` over it.

        ``newline=None`` (the default) reads ``\\r\\n`` and ``\\r`` as ``\\n``;
        give ``newline=""`` to :mod:`csv` (it handles line ends itself).
        Invalid text raises :class:`UnicodeDecodeError` unless ``errors`` says
        otherwise (``"replace"``, ``"surrogateescape"``).
        """
        return io.TextIOWrapper(self, encoding=encoding, errors=errors, newline=newline)

    def __repr__(self) -> str:
        name = getattr(self.raw, "name", "?")
        return f"<mayfly_sdk.Input name={name!r} size={self.size} offset_in_object={self.offset_in_object}>"


class _RawOutput(io.RawIOBase):
    """Unbuffered writes to a host output; closing it drops the resource (the host flushes the file)."""

    def __init__(self, name: str, res: Any) -> None:
        super().__init__()
        self.name = name
        self._res = res
        self._discard = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError(f"write to a closed output ({self.name})")
        data = bytes(b)
        if data and not self._discard:
            _call(self._res.write, data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._res.__exit__(None, None, None)
            finally:
                super().close()


class Output(io.BufferedWriter):
    """One named output, a binary file object open for writing (buffered, 64 KiB).

    Write bytes to it (``write``, ``writelines``, :func:`print` needs
    :meth:`Outputs.create_text`). Close it, or use ``with``, when done; an
    output still open is closed by the sdk at the end of the call that owns
    it: the ``item`` call that opened it, or ``finish`` for the shard's
    outputs (those opened in ``start`` or ``finish``).
    """

    def __init__(self, name: str, res: Any) -> None:
        super().__init__(_RawOutput(name, res), OUTPUT_BUFFER)

    # ``name`` is BufferedWriter's, read from the raw output.

    def _abandon(self) -> None:
        """Closes without sending what is buffered (the call failed; the host discards it all)."""
        raw = self.raw
        if isinstance(raw, _RawOutput):
            raw._discard = True
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<mayfly_sdk.Output name={getattr(self.raw, 'name', '?')!r}>"


class Outputs:
    """Opens the task's named outputs.

    Names are letters, digits, ``.``, ``_`` and ``-``, with ``/`` between
    parts (``counts.tsv``, ``by-day/2024-01-01.csv``); a part may not start
    with ``.`` or ``_``. Opened during ``item``, the output is that item's
    (``map/<item>/<name>`` in the job's output); opened in ``start`` or
    ``finish``, it is the shard's (``map/_shards/<shard>/<name>``). Each name
    can be opened once per item, and once for the shard. Outputs become
    visible only when the shard attempt succeeds.
    """

    def __init__(self, session: Optional["Session"] = None) -> None:
        self._session = session

    def _open(self, name: str) -> Output:
        if not isinstance(name, str):
            raise TypeError(f"an output name is a str, not {type(name).__name__}")
        res = _call(_host.host().open_output, name)
        return Output(name, res)

    def _track(self, name: str, obj: Any) -> None:
        if self._session is not None:
            self._session.track(name, obj)

    def create(self, name: str) -> Output:
        """Opens a new binary output called ``name``.

        Raises :class:`HostIOError` (``EINVAL``) for a bad name or a name
        already open, :class:`StorageError` when the host's storage fails.
        """
        out = self._open(name)
        self._track(name, out)
        return out

    def create_text(
        self, name: str, encoding: str = "utf-8", newline: Optional[str] = "", errors: str = "strict"
    ) -> io.TextIOWrapper:
        """Opens a new output called ``name`` for text (an :class:`io.TextIOWrapper`).

        ``newline=""`` (the default) writes ``\\n`` as it is on every
        platform: the output is the same wherever the task runs, and it is
        what :func:`csv.writer` expects.
        """
        out = self._open(name)
        text = io.TextIOWrapper(out, encoding=encoding, errors=errors, newline=newline)
        self._track(name, text)
        return text

    def partitioned(self, name: str) -> "PartitionedOutput":
        """Opens output ``name`` split into the job's reduce partitions (:func:`partitions`).

        Each record goes to the partition of its key (:func:`partition`):
        partition p is the output named ``part-<p, 5 digits>/<name>``
        (``part-00003/counts.tsv``), opened when first written to, so a
        partition that gets no record has no output. Like :meth:`create`, it
        is the shard's when opened in ``start`` or ``finish``, the item's when
        opened in ``item``; write it in that same call (``start`` and
        ``finish`` count as one), since its parts are opened as they come.
        """
        if not isinstance(name, str):
            raise TypeError(f"an output name is a str, not {type(name).__name__}")
        return PartitionedOutput(self, name, partitions())


class PartitionedOutput:
    """One output split into partitions by key; made by :meth:`Outputs.partitioned`.

    ``write(key, data)`` appends a record to its key's partition;
    ``part(key)`` is the binary :class:`Output` of that partition (to write
    many records at once), ``output(p)`` that of partition ``p``. Parts are
    opened on first use. Close it, or use ``with``; parts still open are
    closed at the end of the call that owns them, as other outputs are.
    """

    def __init__(self, outputs: Outputs, name: str, partitions: int) -> None:
        #: The output's name; partition p is the output ``part-<p, 5 digits>/<name>``.
        self.name = name
        #: How many partitions there are (the job's ``[reduce] partitions``).
        self.partitions = _check_partitions(partitions)
        self._outputs = outputs
        self._parts: Dict[int, Output] = {}
        self._closed = False
        session = outputs._session
        self._scope = session.scope if session is not None else None

    @property
    def parts(self) -> Dict[int, Output]:
        """The parts opened so far, ``{partition: Output}``, by partition."""
        return dict(sorted(self._parts.items()))

    def output(self, p: int) -> Output:
        """The :class:`Output` of partition ``p`` (``0 .. partitions-1``), opened on first use."""
        if self._closed:
            raise ValueError(f"partitioned output {self.name} is closed")
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"a partition is an int, not {type(p).__name__}")
        out = self._parts.get(p)
        if out is not None:
            return out
        if not 0 <= p < self.partitions:
            raise ValueError(f"partition {p} of output {self.name} is out of range (0 to {self.partitions - 1})")
        session = self._outputs._session
        if session is not None and session.scope != self._scope:
            raise ValueError(
                f"partitioned output {self.name} opens its parts as they are written: write it in the call "
                f"that opened it (start and finish for the shard's, item for the item's)"
            )
        name = part_name(self.name, p)
        out = self._outputs.create(name)
        self._parts[p] = out
        return out

    def part(self, key: Key) -> Output:
        """The :class:`Output` of ``key``'s partition (a ``str`` key is hashed as UTF-8), opened on first use."""
        return self.output(partition(key, self.partitions))

    def write(self, key: Key, data: Union[bytes, str]) -> None:
        """Appends ``data`` (``str`` is encoded as UTF-8) to ``key``'s partition."""
        self.part(key).write(data.encode("utf-8") if isinstance(data, str) else data)

    def close(self) -> None:
        """Closes every part opened (each sends what it buffered); a partition never written has no output."""
        self._closed = True
        error: Optional[BaseException] = None
        for out in self._parts.values():
            try:
                out.close()
            except Exception as e:  # close the others, then raise the first error
                if error is None:
                    error = e
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "PartitionedOutput":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        opened = sorted(self._parts)
        return f"<mayfly_sdk.PartitionedOutput name={self.name!r} partitions={self.partitions} opened={opened}>"
