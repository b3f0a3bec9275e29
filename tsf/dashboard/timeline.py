"""A lifecycle's phases as bars on a time axis, for the dashboard's SVG timeline.

``phases(history, now)`` turns a lifecycle's ``history`` (every state entered, with its time)
into :class:`Phase` bars; the template draws them.  A terminal state is a mark, not a bar.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Width of the drawing area in SVG user units.
WIDTH = 600.0
TERMINAL = frozenset({"SUCCESSFUL", "FAILED", "TERMINATED"})


@dataclass(frozen=True)
class Phase:
    state: str
    start: float  #: seconds from the first entry
    seconds: float
    x: float  #: left edge in SVG units
    width: float

    @property
    def label(self) -> str:
        return f"{self.state} {self.seconds:.1f} s"


@dataclass(frozen=True)
class Timeline:
    phases: tuple[Phase, ...]
    total: float  #: seconds from the first entry to the end (or now)
    width: float = WIDTH


def timeline(history: list[tuple[str, float]], now: float) -> Timeline:
    """Bars of the states in ``history``; the last lasts until ``now`` unless terminal."""
    if not history:
        return Timeline((), 0.0)
    first = history[0][1]
    last_state, last_at = history[-1]
    end = last_at if last_state in TERMINAL else max(now, last_at)
    total = max(end - first, 1e-6)
    phases = []
    for i, (state, at) in enumerate(history):
        until = history[i + 1][1] if i + 1 < len(history) else end
        if i + 1 == len(history) and state in TERMINAL:
            until = at
        x = (at - first) / total * WIDTH
        phases.append(Phase(state, at - first, max(0.0, until - at), x,
                            max(2.0, (until - at) / total * WIDTH)))
    return Timeline(tuple(phases), end - first)
