"""JSON and error helpers of the REST site: responses, UNICORE error bodies, bounded bodies.

Every error a client sees is ``{"errorMessage": ..., "status": N, "reason": CODE}`` (UNICORE's
``createErrorResponse`` plus gridvm's reason code from architecture.md).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.web import server

from base.reasons import Reason

JSON = "application/json"
OCTET = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"


class RestError(Exception):
    """An HTTP error with a message for the client and a reason code."""

    def __init__(self, status: int, message: str, reason: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or _DEFAULT_REASONS.get(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"errorMessage": self.message, "status": self.status}
        if self.reason:
            doc["reason"] = self.reason
        return doc


_DEFAULT_REASONS = {400: Reason.BAD_REQUEST, 401: Reason.NOT_AUTHORIZED, 403: Reason.NOT_AUTHORIZED,
                    404: Reason.NOT_FOUND, 405: Reason.BAD_REQUEST, 406: Reason.BAD_REQUEST,
                    413: Reason.BAD_REQUEST, 416: Reason.BAD_REQUEST}


def bad_request(message: str) -> RestError:
    return RestError(400, message, Reason.BAD_REQUEST)


def not_found(message: str) -> RestError:
    return RestError(404, message, Reason.NOT_FOUND)


#: Bytes read and written at a time when a body is streamed.
STREAM_CHUNK = 1 << 20


@dataclass(frozen=True)
class Stream:
    """``length`` bytes from ``start``, read by ``read(offset, length)`` chunk by chunk."""

    read: Callable[[int, int], Awaitable[bytes]]
    start: int
    length: int


@dataclass
class Response:
    """What a handler returns: a JSON document, raw bytes or nothing."""

    status: int = 200
    json: Any = None
    data: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: Stream | None = None  #: a body read in chunks while it is sent

    @classmethod
    def created(cls, location: str) -> Response:
        return cls(201, headers={"Location": location})

    @classmethod
    def no_content(cls) -> Response:
        return cls(204)

    def encode(self) -> tuple[bytes, str | None]:
        if self.json is not None:
            return json.dumps(self.json, indent=1).encode() + b"\n", JSON
        if self.data is not None:
            return self.data, self.content_type or OCTET
        return b"", None


def iso(stamp: float | None) -> str | None:
    """UNICORE's time format: ISO 8601 with an offset, second precision."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def parse_time(value: Any, what: str = "terminationTime") -> float:
    """An ISO 8601 time (with or without offset; none means UTC) as epoch seconds; 400 if
    it is not one."""
    if not isinstance(value, str):
        raise bad_request(f"{what} must be an ISO 8601 time string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad_request(f"{what} is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)  # within years 1..9999 in UTC too, so iso() can show it
    except OverflowError:
        raise bad_request(f"{what} {value!r} lies outside the years 1 to 9999 (UTC)") from None
    return moment.timestamp()


def future_time(value: Any, what: str = "terminationTime") -> float:
    """:func:`parse_time`, and 400 unless it lies in the future."""
    stamp = parse_time(value, what)
    if stamp <= time.time():
        raise bad_request(f"{what} {value} lies in the past")
    return stamp


def link(href: str, description: str = "") -> dict[str, str]:
    return {"href": href, "description": description}


#: How deeply a JSON request body may nest arrays and objects.
MAX_JSON_DEPTH = 32
#: The largest magnitude of a JSON integer (a 64-bit signed integer, what the database keeps).
MAX_JSON_INTEGER = (1 << 63) - 1


class _NumberOutOfRange(ValueError):
    """A JSON number no request may carry (non-finite, or an integer beyond 64 bits)."""


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width] + "…"


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberOutOfRange(f"number {_clip(text)} is out of range")
    return value


def _json_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 19 or int(digits) > MAX_JSON_INTEGER:
        raise _NumberOutOfRange(f"integer {_clip(text)} is out of range (at most "
                                f"{MAX_JSON_INTEGER})")
    return int(text)


def _json_constant(name: str) -> None:
    raise _NumberOutOfRange(f"{name} is not a JSON number")


def json_depth(doc: Any) -> int:
    """How deeply arrays and objects nest in ``doc`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children = (value.values() if isinstance(value, dict) else
                    value if isinstance(value, list) else None)
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(raw: bytes, limit: int) -> Any:
    """A JSON request body; 400 with the reason when it is too big, nested too deeply, holds
    a number out of range (``1e400``, ``NaN``, integers beyond 64 bits) or is not JSON."""
    if len(raw) > limit:
        raise bad_request(f"request body is {len(raw)} bytes; the limit for JSON is {limit}")
    if not raw.strip():
        return {}
    too_deep = bad_request(f"JSON nests deeper than {MAX_JSON_DEPTH} arrays or objects")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_float=_json_float, parse_int=_json_int,
                         parse_constant=_json_constant)
    except UnicodeDecodeError as err:
        raise bad_request(f"request body is not UTF-8: {err.reason} at byte {err.start}"
                          ) from None
    except json.JSONDecodeError as err:
        raise bad_request(f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}"
                          ) from None
    except _NumberOutOfRange as err:
        raise bad_request(f"malformed JSON: {err}") from None
    except RecursionError:
        raise too_deep from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise too_deep
    return doc


def json_object(raw: bytes, limit: int, what: str = "request body") -> dict[str, Any]:
    doc = parse_json(raw, limit)
    if not isinstance(doc, dict):
        raise bad_request(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def check_keys(doc: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise bad_request(f"unknown key {where}{unknown[0]!r}; allowed: "
                          f"{', '.join(sorted(allowed))}")


def int_param(args: dict[bytes, list[bytes]], name: str, default: int, minimum: int = 0,
              maximum: int | None = None) -> int:
    values = args.get(name.encode())
    if not values:
        return default
    text = values[-1].decode("utf-8", "replace")
    if not re.fullmatch(r"\d{1,9}", text):
        raise bad_request(f"query parameter {name} must be a whole number, got {text!r}")
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        raise bad_request(f"query parameter {name} must be between {minimum} and {maximum}")
    return value


def str_param(args: dict[bytes, list[bytes]], name: str) -> str | None:
    values = args.get(name.encode())
    return values[-1].decode("utf-8", "replace") if values else None


class BoundedRequest(server.Request):
    """A request that stops keeping its body beyond ``max_body`` bytes (chunked or not).

    The handler then sees ``too_large`` and answers 400 instead of the server buffering an
    unbounded upload on disk.
    """

    max_body = 1 << 30
    #: a larger bound for a body sent to a path that contains one of ``large_paths``
    large_body = 0
    large_paths: tuple[bytes, ...] = ()
    received = 0
    too_large = False
    _limit: int | None = None

    def body_limit(self) -> int:
        """The bound for this request's body, chosen by its path (known from the request
        line before the body arrives; where it is not, the larger bound)."""
        if self._limit is None:
            path = getattr(self.channel, "_path", None)
            large = max(self.max_body, self.large_body)
            self._limit = large if path is None or any(
                part in path for part in self.large_paths) else self.max_body
        return self._limit

    def gotLength(self, length):
        if length is not None and length > self.body_limit():
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        self.received += len(data)
        if self.received > self.body_limit():
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)
