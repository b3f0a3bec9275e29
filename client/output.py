"""How the CLI prints: aligned tables for people, JSON for scripts, short durations."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str, sort_keys=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                empty: str | None = None) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    text_rows = [[_cell(c) for c in row] for row in rows]
    if not text_rows and empty is not None:
        print(empty, file=sys.stderr)
        return
    table = [list(headers), *text_rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return " ".join(str(value).split())


def seconds(value: float | None) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def age(epoch: float | None, now: float | None = None) -> str:
    if not epoch:
        return "-"
    return seconds(max(0.0, (now or time.time()) - float(epoch)))


def phase_list(phases: dict[str, float], order: Sequence[str]) -> str:
    """``booting 5.6s, connecting 0.2s`` in the given order (others after)."""
    names = [p for p in order if p in phases] + [p for p in phases if p not in order]
    return ", ".join(f"{name.lower()} {seconds(phases[name])}" for name in names)
