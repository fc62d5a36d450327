"""The exceptions a task raises to say how it failed, and those the host's I/O raises."""

from __future__ import annotations

import errno as _errno

__all__ = ["Fatal", "HostIOError", "Retryable", "StorageError"]


class Retryable(Exception):
    """A failure that running the same item again could fix (a transient condition).

    Raised out of ``start``, ``item`` or ``finish``, it fails the call with
    exactly this message (no traceback) and lets the host retry.
    """


class Fatal(Exception):
    """A failure that will happen again on the same item (bad data, bad parameters).

    Raised out of ``item``, it quarantines the item (the shard goes on without
    it); out of ``start`` or ``finish``, it fails the shard attempt. The
    message is used as it is, with no traceback.
    """


class HostIOError(OSError):
    """A host I/O call (reading the input, opening or writing an output) failed.

    An :class:`OSError`, so it passes through :mod:`io` wrappers (text,
    buffering, :mod:`csv`) unchanged. ``errno`` is ``EINVAL`` for a wrong
    request (a bad output name, an output opened twice) and ``EPIPE`` for a
    resource that was already finished. ``str()`` is the host's message.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):  # keep pickling/copying working with the 2-argument init
        return (type(self), (self.errno, self.strerror))


class StorageError(HostIOError):
    """The storage behind the input or an output failed; a retry may help.

    Left uncaught, it fails the call as *retryable* with its message
    (``host storage error: ...``), as the Rust sdk does.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EIO, message)

    def __reduce__(self):
        return (type(self), (self.strerror,))


# Shown as mayfly_sdk.StorageError (not mayfly_sdk._errors.StorageError) in tracebacks.
for _cls in (Retryable, Fatal, HostIOError, StorageError):
    _cls.__module__ = "mayfly_sdk"
del _cls
