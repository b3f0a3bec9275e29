"""Versions and the one table of comparison operators used by requirement matching.

A version is split into numeric and alphabetic segments (``6.1.0-13`` -> 6, 1, 0, 13;
``3.12rc1`` -> 3, 12, "rc", 1).  Segments compare pairwise: numbers numerically, words
alphabetically, a word before a number (so ``3.12rc1 < 3.12``), and a missing segment counts
as 0 (so ``12 == 12.0``); a number beyond 63 bits compares as the largest 63-bit one.

Operators (``OPERATORS``):

``=``   the offered version agrees with the required one in every segment the requirement
        names: ``12.4 = 12`` holds, ``12 = 12.4`` does not (``12`` means "any 12.x").
``!=``  the negation of ``=``.
``<``, ``<=``, ``>``, ``>=``  ordering as above.
``~=``  compatible release (PEP 440): ``~= 3.11`` means ``>= 3.11`` and ``= 3``;
        ``~= 6.1.0`` means ``>= 6.1.0`` and ``= 6.1``.

A constraint string is one or more ``OP VERSION`` terms separated by commas
(``">=3.10, <4"``); a bare version means ``=``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from image_repo.errors import BadRequest

_SEGMENT = re.compile(r"[0-9]+|[A-Za-z]+")
Segment = int | str
#: The largest number a version segment stands for; larger ones compare as it.
MAX_NUMBER = (1 << 63) - 1
#: The largest image version (the catalogue keeps it in an SQL INTEGER: 32 bits).
MAX_IMAGE_VERSION = (1 << 31) - 1


def _number(digits: str) -> int:
    """A numeric segment, at most :data:`MAX_NUMBER` (never converts thousands of digits)."""
    significant = digits.lstrip("0") or "0"
    return min(int(significant), MAX_NUMBER) if len(significant) <= 19 else MAX_NUMBER


def image_version(text: str, path: str = "image") -> int:
    """The version number of an image reference ``name:VERSION``; a :class:`BadRequest`
    naming ``path`` unless it is decimal digits standing for at most
    :data:`MAX_IMAGE_VERSION`."""
    if text.isascii() and text.isdigit() and _number(text) <= MAX_IMAGE_VERSION:
        return _number(text)
    raise BadRequest(f"an image version is a whole number of at most {MAX_IMAGE_VERSION}, "
                     f"got {text[:40]!r}", path)


@functools.total_ordering
class Version:
    """A comparable version; ``str(v)`` is the text it was made from."""

    __slots__ = ("segments", "text")

    def __init__(self, text: str | int):
        self.text = str(text)
        self.segments: tuple[Segment, ...] = tuple(
            _number(s) if s.isdigit() else s.lower() for s in _SEGMENT.findall(self.text)
        )

    def compare(self, other: Version, width: int | None = None) -> int:
        """-1, 0 or 1; ``width`` limits the comparison to the first segments."""
        n = width if width is not None else max(len(self.segments), len(other.segments))
        for i in range(n):
            a = self.segments[i] if i < len(self.segments) else 0
            b = other.segments[i] if i < len(other.segments) else 0
            if a == b:
                continue
            if type(a) is type(b):
                return -1 if a < b else 1  # type: ignore[operator]
            return -1 if isinstance(a, str) else 1
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.compare(other) == 0

    def __lt__(self, other: Version) -> bool:
        return self.compare(other) < 0

    def __hash__(self) -> int:
        trimmed = list(self.segments)
        while trimmed and trimmed[-1] == 0:
            trimmed.pop()
        return hash(tuple(trimmed))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def _agrees(offered: Version, required: Version) -> bool:
    return offered.compare(required, width=len(required.segments)) == 0


def _compatible(offered: Version, required: Version) -> bool:
    if offered < required:
        return False
    width = max(len(required.segments) - 1, 0)
    return width == 0 or offered.compare(required, width=width) == 0


@dataclass(frozen=True)
class Operator:
    """One comparison: its symbol, the sentence used when it fails, and the test.

    ``failure`` is formatted with ``name``, ``offered`` and ``required``.
    """

    symbol: str
    failure: str
    test: Callable[[Version, Version], bool]

    def explain(self, name: str, offered: object, required: object) -> str:
        return self.failure.format(name=name, offered=offered, required=required)


OPERATORS: dict[str, Operator] = {
    op.symbol: op
    for op in (
        Operator("=", "{name} is {offered}, required {required}", _agrees),
        Operator("!=", "{name} is {offered}, required not {required}",
                 lambda a, b: not _agrees(a, b)),
        Operator("<", "{name} {offered} is not below required {required}", lambda a, b: a < b),
        Operator("<=", "{name} {offered} > allowed {required}", lambda a, b: a <= b),
        Operator(">", "{name} {offered} is not above required {required}", lambda a, b: a > b),
        Operator(">=", "{name} {offered} < required {required}", lambda a, b: a >= b),
        Operator("~=", "{name} {offered} is not compatible with required ~={required}",
                 _compatible),
    )
}
# Longest symbols first, so "<=" is not read as "<".
_TERM = re.compile(
    r"\s*(" + "|".join(re.escape(s) for s in sorted(OPERATORS, key=len, reverse=True))
    + r")?\s*([0-9A-Za-z][0-9A-Za-z.+:~_-]*)\s*"
)


@dataclass(frozen=True)
class Term:
    """``OP VERSION``: one term of a constraint."""

    operator: Operator
    version: Version

    def holds(self, offered: Version) -> bool:
        return self.operator.test(offered, self.version)

    def __str__(self) -> str:
        return f"{self.operator.symbol}{self.version}"


@dataclass(frozen=True)
class Constraint:
    """All terms of a constraint string; it holds when every term holds."""

    text: str
    terms: tuple[Term, ...]

    def failing(self, offered: Version) -> Term | None:
        """The first term ``offered`` violates, or ``None`` when it satisfies all."""
        for term in self.terms:
            if not term.holds(offered):
                return term
        return None

    def holds(self, offered: Version | str) -> bool:
        if not isinstance(offered, Version):
            offered = Version(offered)
        return self.failing(offered) is None

    def __str__(self) -> str:
        return ", ".join(str(t) for t in self.terms)


def parse_constraint(text: str, path: str = "") -> Constraint:
    """Parse ``">=3.10, <4"``; a bad constraint is a :class:`BadRequest` naming ``path``."""
    terms = []
    for part in text.split(","):
        match = _TERM.fullmatch(part)
        if not match:
            symbols = " ".join(OPERATORS)
            raise BadRequest(
                f"expected a version constraint like '>=12' or '>=3.10, <4' "
                f"(operators: {symbols}), got {text!r}",
                path,
            )
        symbol = match.group(1) or "="
        terms.append(Term(OPERATORS[symbol], Version(match.group(2))))
    return Constraint(text, tuple(terms))


def constraint_problem(text: str) -> str | None:
    """For schema checks: the error text when ``text`` is not a constraint, else ``None``."""
    try:
        parse_constraint(text)
    except BadRequest as err:
        return err.message
    return None
