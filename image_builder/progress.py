"""Progress of a build: named phases, some counted (``downloading 3/17 packages``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: The phases of a build, in order (a cached build reports ``resolving`` only).
PHASES = ("resolving", "downloading", "unpacking", "assembling", "packing", "metadata")


@dataclass(frozen=True)
class Step:
    """One progress report: ``phase`` with ``done`` of ``total`` items (0 of 0: uncounted)."""

    phase: str
    done: int = 0
    total: int = 0
    what: str = ""

    def __str__(self) -> str:
        count = f" {self.done}/{self.total}" if self.total else ""
        return f"{self.phase}{count}{' ' + self.what if self.what else ''}"


Progress = Callable[[Step], None]


def silent(_step: Step) -> None:
    """The progress callback that reports nothing."""
