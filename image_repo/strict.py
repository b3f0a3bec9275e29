"""Strict conversion between JSON documents and typed dataclasses.

A document is read into a tree of ``kw_only`` dataclasses.  Unknown keys, missing required
keys, values of the wrong JSON type and values outside their declared constraints are errors
(:class:`~image_repo.errors.BadRequest`) whose ``path`` names the key, e.g.
``origin.content[1].sha512``.  Constraints are declared next to the field with :func:`spec`;
cross-field rules live in an optional ``check(self, path)`` method of the dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union

from image_repo.errors import BadRequest

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def spec(
    default: Any = _MISSING,
    *,
    default_factory: Any = _MISSING,
    pattern: str | None = None,
    hint: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with validation constraints.

    ``pattern`` (full match) and ``choices`` apply to strings, ``minimum``/``maximum`` to
    numbers, ``check`` to any value (returns an error text or ``None``); ``hint`` describes
    the expected form in error messages.
    """
    metadata = {
        "pattern": re.compile(pattern) if pattern else None,
        "hint": hint,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "check": check,
        "doc": doc,
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@typing.dataclass_transform(kw_only_default=True, field_specifiers=(spec,))
def document(cls: type[T]) -> type[T]:
    """Class decorator for a document part: a keyword-only dataclass read by :func:`from_json`."""
    return dataclasses.dataclass(kw_only=True)(cls)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not (key.strip() and key.isprintable()):
        key = repr(key)  # an empty or unprintable key is named by its repr
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    """A short, JSON-flavoured description of a value for error messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    kind = names.get(type(value), type(value).__name__)
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 40):
        return f"{kind} ({value!r})"
    return kind


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        hints = _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return hints


def from_json(cls: type[T], value: Any, path: str = "") -> T:
    """Read ``value`` (parsed JSON) into dataclass ``cls``, strictly."""
    if not isinstance(value, dict):
        raise BadRequest(f"expected an object, got {describe(value)}", path or "document")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            advice = f" (did you mean '{close[0]}'?)" if close else ""
            allowed = ", ".join(known)
            raise BadRequest(f"unknown key{advice}; allowed here: {allowed}", join(path, key))
    kwargs: dict[str, Any] = {}
    for name, field in known.items():
        sub = join(path, name)
        if name not in value:
            if field.default is _MISSING and field.default_factory is _MISSING:
                raise BadRequest("required key is missing", sub)
            continue
        kwargs[name] = _convert(hints[name], value[name], sub, field.metadata)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj


def _convert(tp: Any, value: Any, path: str, meta: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_optional(tp, value, path, meta)
    if origin is Literal:
        return _convert_literal(typing.get_args(tp), value, path)
    if origin is list:
        return _convert_list(typing.get_args(tp)[0], value, path, meta)
    if origin is dict:
        if not isinstance(value, dict):
            raise BadRequest(f"expected an object, got {describe(value)}", path)
        item_type = typing.get_args(tp)[1]
        return {k: _convert(item_type, v, join(path, k), {}) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, path)
    value = _convert_scalar(tp, value, path)
    _constrain(value, path, meta)
    return value


def _convert_optional(tp: Any, value: Any, path: str, meta: Any) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    if len(members) != 1:  # pragma: no cover - the schema uses Optional[X] only
        raise TypeError(f"unsupported union {tp}")
    return _convert(members[0], value, path, meta)


def _convert_literal(choices: tuple[Any, ...], value: Any, path: str) -> Any:
    if value not in choices or type(value) is not type(choices[0]):
        listed = ", ".join(repr(a) for a in choices)
        raise BadRequest(f"expected one of {listed}, got {describe(value)}", path)
    return value


def _convert_list(item_type: Any, value: Any, path: str, meta: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"expected a list, got {describe(value)}", path)
    items = [_convert(item_type, item, join(path, i), {}) for i, item in enumerate(value)]
    _constrain(items, path, meta)
    return items


#: scalar type -> (accepts the JSON value, what the error says is expected)
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _convert_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp not in _SCALARS:  # pragma: no cover - programming error in a schema
        raise TypeError(f"unsupported type {tp} at {path}")
    accepts, expected = _SCALARS[tp]
    if not accepts(value):
        raise BadRequest(f"expected {expected}, got {describe(value)}", path)
    return float(value) if tp is float else value


def _constrain(value: Any, path: str, meta: Any) -> None:
    if not meta:
        return
    pattern = meta.get("pattern")
    if pattern is not None and not pattern.fullmatch(value):
        expected = meta.get("hint") or f"the form {pattern.pattern}"
        raise BadRequest(f"expected {expected}, got {describe(value)}", path)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise BadRequest(f"expected one of {', '.join(choices)}, got {describe(value)}", path)
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    if minimum is not None and value < minimum:
        raise BadRequest(f"must be at least {minimum}, got {value}", path)
    if maximum is not None and value > maximum:
        raise BadRequest(f"must be at most {maximum}, got {value}", path)
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise BadRequest(problem, path)


def to_json(obj: Any) -> Any:
    """The JSON form of a dataclass tree; ``None`` values and empty containers are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if value is None or (isinstance(value, (list, dict)) and not value):
                continue
            out[field.name] = to_json(value)
        return out
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def documented_fields(cls: type) -> list[tuple[str, str, str]]:
    """(key, type, doc) for each field of ``cls``: the source of the schema tables in docs."""
    hints = _hints(cls)
    return [(f.name, _type_name(hints[f.name]), f.metadata.get("doc", ""))
            for f in dataclasses.fields(cls)]


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"object of {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))
