"""The job's parameters: a JSON object, read as a ``dict`` or into a dataclass.

A dataclass is filled strictly, like the Rust sdk's ``deny_unknown_fields``
serde structs: unknown keys and missing required fields are errors, an
``Enum`` field takes the member whose *value* is given (``Mode("map")``),
nested dataclasses, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``,
``Optional[T]``/``T | None``, ``Union``, ``Literal`` and ``Any`` are followed,
and ``str``/``int``/``float``/``bool`` are checked (a ``bool`` is not an
``int``; an ``int`` is accepted for a ``float``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import json
import sys
import types
import typing
from typing import Any, Dict, Optional

from ._errors import Fatal

__all__ = ["ParamsError", "check_type", "parse"]

_NoneType = type(None)
_UnionTypes: tuple = (typing.Union,)
if sys.version_info >= (3, 10):
    _UnionTypes = (typing.Union, types.UnionType)

# Resolved type hints of each dataclass, filled at decoration time (when the
# component is built) so nothing is evaluated lazily at run time.
_HINTS: Dict[type, Dict[str, Any]] = {}


class ParamsError(ValueError):
    """Why the parameters do not fit the task's type (the detail of the task error)."""


def _hints(cls: type) -> Dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception as e:  # an unresolvable annotation: say so at build time
            raise TypeError(f"cannot resolve the type hints of parameters class {cls.__qualname__}: {e}") from e
        _HINTS[cls] = hints
    return hints


def check_type(tp: Any, _seen: Optional[set] = None) -> None:
    """Raises :class:`TypeError` if ``tp`` cannot be read from JSON (checked when a task is declared)."""
    seen = _seen if _seen is not None else set()
    if tp in (Any, object, str, int, float, bool, _NoneType, None, dict, list):
        return
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if tp in seen:
            return
        seen.add(tp)
        hints = _hints(tp)
        for f in dataclasses.fields(tp):
            if f.init:
                check_type(hints.get(f.name, Any), seen)
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UnionTypes or origin in (list, tuple, dict, collections.abc.Sequence, collections.abc.Mapping):
        if origin in (dict, collections.abc.Mapping) and args and args[0] is not str:
            raise TypeError(f"parameter type {tp!r}: JSON object keys are strings; use dict[str, ...]")
        for a in args:
            if a is not Ellipsis:
                check_type(a, seen)
        return
    if origin is typing.Literal:
        return
    raise TypeError(f"parameter type {tp!r} cannot be read from JSON")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"number {json.dumps(value)}"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _at(path: str) -> str:
    return f"field {path!r}: " if path else ""


def _convert(value: Any, tp: Any, path: str) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is None or tp is _NoneType:
        if value is None:
            return None
        raise ParamsError(f"{_at(path)}expected null, got {_json_name(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{_at(path)}expected a boolean, got {_json_name(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamsError(f"{_at(path)}expected an integer, got {_json_name(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ParamsError(f"{_at(path)}expected a number, got {_json_name(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"{_at(path)}expected a string, got {_json_name(value)}")
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise ParamsError(f"{_at(path)}expected an object, got {_json_name(value)}")
    if tp is list:
        if isinstance(value, list):
            return value
        raise ParamsError(f"{_at(path)}expected an array, got {_json_name(value)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if type(member.value) is type(value) and member.value == value:
                return member
        allowed = ", ".join(json.dumps(m.value, ensure_ascii=False, default=str) for m in tp)
        raise ParamsError(f"{_at(path)}expected one of {allowed}, got {_json_name(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(value, tp, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UnionTypes:
        if value is None and _NoneType in args:
            return None
        errors = []
        for member in args:
            if member is _NoneType:
                continue
            try:
                return _convert(value, member, path)
            except ParamsError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ParamsError(errors[0])
        raise ParamsError(f"{_at(path)}expected {_type_name(tp)}, got {_json_name(value)}")
    if origin is typing.Literal:
        for a in args:
            if type(a) is type(value) and a == value:
                return value
        allowed = ", ".join(json.dumps(a, ensure_ascii=False, default=str) for a in args)
        raise ParamsError(f"{_at(path)}expected one of {allowed}, got {_json_name(value)}")
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            raise ParamsError(f"{_at(path)}expected an array, got {_json_name(value)}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise ParamsError(f"{_at(path)}expected an array, got {_json_name(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ParamsError(f"{_at(path)}expected an array of {len(args)} elements, got {len(value)}")
        pairs = zip(value, args or [Any] * len(value), strict=True)
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(pairs))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ParamsError(f"{_at(path)}expected an object, got {_json_name(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{path}.{k}" if path else k) for k, v in value.items()}
    raise ParamsError(f"{_at(path)}unsupported parameter type {_type_name(tp)}")


def _dataclass(value: Any, cls: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise ParamsError(f"{_at(path)}expected an object, got {_json_name(value)}")
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    for key in value:
        if key not in names:
            expected = ", ".join(repr(n) for n in names) or "none"
            where = f" in {path!r}" if path else ""
            raise ParamsError(f"unknown field {key!r}{where} (expected: {expected})")
    kwargs = {}
    for f in fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints.get(f.name, Any), sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ParamsError(f"missing field {sub!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a __post_init__ that validates
        raise ParamsError(f"{_at(path)}{e}") from None


def parse(raw: str, kind: Any) -> Any:
    """Reads the job's parameters.

    ``kind``: ``None`` (the task takes none: only the JSON is checked),
    ``dict``, or a dataclass. Raises :class:`Fatal` with the Rust sdk's
    message, ``invalid task parameters: {detail} (parameters: {raw})``.
    """
    text = raw if raw.strip() else "{}"
    try:
        value = json.loads(text)
    except ValueError as e:
        raise Fatal(f"invalid task parameters: {e} (parameters: {text})") from None
    if kind is None:
        return None
    if not isinstance(value, dict):
        raise Fatal(f"invalid task parameters: expected a JSON object, got {_json_name(value)} (parameters: {text})")
    if kind is dict:
        return value
    try:
        return _convert(value, kind, "")
    except ParamsError as e:
        raise Fatal(f"invalid task parameters: {e} (parameters: {text})") from None
