"""Stand-ins for the types componentize-py generates from ``task.wit``.

Inside a component (``sys.platform == "wasi"``) the sdk uses the real
bindings (``wit_world.imports.types`` and ``componentize_py_types.Err``). On
an ordinary Python, for unit tests with :mod:`mayfly_sdk.testing`, it uses
these twins: the same names, fields and shapes, so the code paths are the
same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar, Union

E = TypeVar("E")


@dataclass(frozen=True)
class Err(Generic[E], Exception):
    """The failure case of a WIT ``result``, raised by host calls that fail."""

    value: E


class _Types:
    """The namespace that stands for ``wit_world.imports.types``."""

    class Level(Enum):
        """Severity of a log line."""

        TRACE = 0
        DEBUG = 1
        INFO = 2
        WARN = 3
        ERROR = 4

    @dataclass
    class Field:
        """One structured key/value field attached to a log line."""

        key: str
        value: str

    @dataclass
    class IoError_Storage:  # noqa: N801 - the generated name
        """The storage behind the input or output failed; a retry may help."""

        value: str

    @dataclass
    class IoError_Invalid:  # noqa: N801 - the generated name
        """The request itself was wrong (a bad output name, an output opened twice)."""

        value: str

    @dataclass
    class IoError_Closed:  # noqa: N801 - the generated name
        """The resource was already finished."""

    @dataclass
    class ShardInfo:
        """The shard an instance serves."""

        job: str
        shard: int
        attempt: int
        items: int

    @dataclass
    class TaskError:
        """The error a task returns from ``start``, ``item`` or ``finish``."""

        message: str
        retryable: bool


T = _Types
IoError = Union[_Types.IoError_Storage, _Types.IoError_Invalid, _Types.IoError_Closed]
