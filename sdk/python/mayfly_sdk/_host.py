"""Which host the sdk talks to.

Inside a component (``sys.platform == "wasi"``, also while componentize-py
pre-initializes it) these are the real bindings generated from ``task.wit``.
Elsewhere there is no host until :mod:`mayfly_sdk.testing` installs its fake
with :func:`use`. The switch is on the platform, not on whether ``wit_world``
imports: stub bindings generated into a task's directory must never be taken
for the real ones.
"""

from __future__ import annotations

import sys
from typing import Any

if sys.platform == "wasi":
    from componentize_py_types import Err
    from wit_world.imports import host as _real_host
    from wit_world.imports import types as T

    _backend: Any = _real_host
else:
    from ._wit_fallback import Err, T

    _backend = None

__all__ = ["Err", "T", "host", "use"]


class NoHostError(RuntimeError):
    """Raised when the sdk is used outside a component without a fake host."""


def use(backend: Any) -> Any:
    """Installs ``backend`` (``None`` to remove it) and returns the previous one."""
    global _backend
    previous = _backend
    _backend = backend
    return previous


def host() -> Any:
    """The host: ``open_output``, ``log``, ``progress``, ``params``, ``partitions``, ``panicked``."""
    if _backend is None:
        raise NoHostError(
            "no mayfly host: this code runs inside a task component; "
            "in unit tests, run the task with mayfly_sdk.testing.run(...)"
        )
    return _backend
