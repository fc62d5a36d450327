"""Log lines the operator sees next to the job, with optional structured fields.

>>> from mayfly_sdk import log
>>> log.info("scanned", file=name, hits=3)        # doctest: +SKIP

Field values are turned into text with :func:`str`; fields keep the order
given. :func:`print` works too: each line a task prints becomes an ``info``
log line (``stderr``: ``warn``). For code that uses the standard
:mod:`logging` module, install :class:`Handler`::

    logging.getLogger().addHandler(log.Handler())

The host bounds the bytes a call may log; past the bound the attempt fails.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Union

from . import _host

__all__ = ["Handler", "Level", "debug", "error", "info", "log", "trace", "warn"]


class Level(enum.IntEnum):
    """Severity of a log line."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


def _level(level: Union[Level, str, int]) -> Level:
    if isinstance(level, str):
        try:
            return Level[level.upper()]
        except KeyError:
            raise ValueError(f"unknown log level {level!r}: use trace, debug, info, warn or error") from None
    return Level(level)


def log(level: Union[Level, str], message: str, /, **fields: Any) -> None:
    """Sends one log line at ``level`` (a :class:`Level` or its name, ``"info"``)."""
    lvl = _level(level)
    T = _host.T
    wit_fields = [T.Field(key=str(k), value=str(v)) for k, v in fields.items()]
    _host.host().log(T.Level[lvl.name], str(message), wit_fields)


def trace(message: str, /, **fields: Any) -> None:
    """Logs at trace level: very detailed tracing."""
    log(Level.TRACE, message, **fields)


def debug(message: str, /, **fields: Any) -> None:
    """Logs at debug level: debugging detail."""
    log(Level.DEBUG, message, **fields)


def info(message: str, /, **fields: Any) -> None:
    """Logs at info level: normal progress. ``log.info("done", files=3)``."""
    log(Level.INFO, message, **fields)


def warn(message: str, /, **fields: Any) -> None:
    """Logs at warn level: something unexpected that the task handled."""
    log(Level.WARN, message, **fields)


#: The standard library's spelling.
warning = warn


def error(message: str, /, **fields: Any) -> None:
    """Logs at error level: a failure."""
    log(Level.ERROR, message, **fields)


# The attributes every LogRecord has; the others came from ``extra=`` and
# become fields.
_RECORD_ATTRS = frozenset(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class Handler(logging.Handler):
    """A :mod:`logging` handler that sends records to the mayfly log.

    ``DEBUG`` and below map to ``debug`` (below ``DEBUG``: ``trace``),
    ``INFO`` to ``info``, ``WARNING`` to ``warn``, ``ERROR`` and
    ``CRITICAL`` to ``error``. The message is the formatted record (with the
    exception's traceback if any); keys given with ``extra=`` become fields,
    and the logger's name is a field ``logger`` unless it is the root logger.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            no = record.levelno
            if no >= logging.ERROR:
                level = Level.ERROR
            elif no >= logging.WARNING:
                level = Level.WARN
            elif no >= logging.INFO:
                level = Level.INFO
            elif no >= logging.DEBUG:
                level = Level.DEBUG
            else:
                level = Level.TRACE
            message = self.format(record)
            fields = {}
            if record.name and record.name != "root":
                fields["logger"] = record.name
            for key, value in record.__dict__.items():
                if key not in _RECORD_ATTRS and not key.startswith("_"):
                    fields[key] = value
            log(level, message, **fields)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
