"""mayfly-sdk: write mayfly tasks in Python.

A mayfly task processes input items (files, or byte ranges of them) and
writes named outputs. ``mayfly build`` turns a directory with an ``app.py``
into a WebAssembly component (with componentize-py) that runs in mayfly's
sandbox: no files, no environment, no network; everything goes through this
package.

- A **function** decorated with :func:`task` is called once per item, with
  ``(input, params, outputs)`` (each optional from the end); its outputs are
  the item's.
- A **class** subclassing :class:`Task`, decorated with :func:`task`, serves
  a whole shard: ``start``, ``item`` per item, ``finish``; outputs opened in
  ``start``/``finish`` are the shard's (one table per shard).

:class:`Input` is the item, a binary file object (``input.text()`` for
text); :class:`Outputs` opens named outputs (``outputs.partitioned(name)``
splits one by key into the job's reduce partitions: :func:`partitions`,
:func:`partition`); :mod:`mayfly_sdk.log` and
:func:`print` log; raise :class:`Retryable` for a transient failure and
:class:`Fatal` (or any exception, reported with its traceback) for one that
would happen again. :mod:`mayfly_sdk.testing` runs a task without wasm.

Import everything at the top of your module: a component resolves its
imports when it is built, and cannot import later.
"""

from __future__ import annotations

import sys as _sys

from . import _host, log
from ._errors import Fatal, HostIOError, Retryable, StorageError
from ._io import Input, Output, Outputs, PartitionedOutput
from ._partition import partition, partitions
from ._runtime import Shard, Task, task

__all__ = [
    "WIT_VERSION",
    "Fatal",
    "HostIOError",
    "Input",
    "Output",
    "Outputs",
    "PartitionedOutput",
    "Retryable",
    "Shard",
    "StorageError",
    "Task",
    "log",
    "partition",
    "partitions",
    "progress",
    "task",
]

#: The version of the task interface (``mayfly:task``) this sdk implements.
WIT_VERSION = "0.2.0"

_MAX_U64 = (1 << 64) - 1


def progress(done: int, total: int) -> None:
    """Reports progress to the host: ``done`` of ``total`` units of work.

    The host already counts input bytes read; call this when a task has a
    better measure of its own. Values are clamped to ``0 .. 2**64-1``.
    """
    _host.host().progress(min(max(int(done), 0), _MAX_U64), min(max(int(total), 0), _MAX_U64))


if _sys.platform == "wasi":
    from ._component import WitWorld  # noqa: F401 - the export componentize-py looks up

    __all__ += ["WitWorld"]
