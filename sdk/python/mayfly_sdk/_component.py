"""The component's export: the class componentize-py instantiates and calls.

Imported only inside a component (``sys.platform == "wasi"``), where the
generated bindings ``wit_world`` and ``componentize_py_types`` exist.
componentize-py makes an instance of :class:`WitWorld` *per call* (not once
per component instance), so the shard's state is kept in this module.
"""

from __future__ import annotations

from typing import Any, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import types as T

from . import _runtime

__all__ = ["WitWorld"]


# The instance's one session. Module state, not the export object's: the
# state must outlive the object componentize-py calls (it may make a new one
# per call).
_session: Optional[_runtime.Session] = None


def _current() -> _runtime.Session:
    global _session
    if _session is None:
        spec = _runtime.registered()
        if spec is None:  # require_task stops the build before this can happen
            raise Err(T.TaskError(message="the component declares no task (@mayfly_sdk.task)", retryable=False))
        _session = _runtime.Session(spec)
    return _session


class WitWorld(wit_world.WitWorld):
    """Implements the ``task`` world's exports with the task declared by ``@task``."""

    def start(self, shard: T.ShardInfo) -> None:
        _raise(_runtime.call(_current(), "start", shard))

    def item(self, input: T.Input) -> None:
        _raise(_runtime.call(_current(), "item", input))

    def finish(self) -> None:
        _raise(_runtime.call(_current(), "finish"))


def _raise(failure: Optional[Any]) -> None:
    """Returns the failure to the host: exactly ``Err(TaskError)``, as the generated code requires."""
    if failure is not None:
        raise Err(T.TaskError(message=failure.message, retryable=failure.retryable))
