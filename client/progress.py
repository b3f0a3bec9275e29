"""The live view of a job on its way through gridvm: matching, staging, booting, connecting,
stage-in, queued, running, stage-out.

The phase comes from the job's state and, while the job waits for its VM, from the state of
its instance (``GET instances/{id}``; ``gridvm.instance``, or before the job runs there, the
factory's note in the job's log).  On a terminal the view
is one line redrawn in place; elsewhere (logs, CI, pipes) it prints one line per change.
Times of the VM's phases are the server's (``phases`` of the instance), those of the job's own
phases too once the job is terminal (``consumedTime``); a phase passed between two polls is
shown all the same when the server timed it.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from client.api import instance_id_of
from client.output import seconds

PHASES = ("matching", "staging", "booting", "connecting", "stage-in", "queued", "running",
          "stage-out")
#: Instance states while a job waits for its VM, and the phase they are shown as.
INSTANCE_PHASES = {"REQUESTED": "staging", "STAGING": "staging", "BOOTING": "booting",
                   "CONNECTING": "connecting", "READY": "stage-in", "BUSY": "stage-in"}
JOB_PHASES = {"STAGINGIN": "stage-in", "QUEUED": "queued", "RUNNING": "running",
              "STAGINGOUT": "stage-out"}
SERVER_TIMED = {"staging": "STAGING", "booting": "BOOTING", "connecting": "CONNECTING"}
#: Job phases and the state whose time the job's ``consumedTime`` carries.
JOB_TIMED = {phase: state for state, phase in JOB_PHASES.items()}
SPINNER = "|/-\\"


def phase_of(job: dict[str, Any], instance: dict[str, Any] | None) -> str:
    """The phase a job is in, given its properties and its instance (or None)."""
    status = job.get("status", "UNDEFINED")
    if status in ("SUCCESSFUL", "FAILED"):
        return status.lower()
    if status in JOB_PHASES:
        return JOB_PHASES[status]
    if not instance_id_of(job):
        return "matching"
    if instance is None:
        return "staging"
    return INSTANCE_PHASES.get(instance.get("state", ""), "staging")


class Progress:
    """Feed it the job's properties after every poll (:meth:`update`), then :meth:`finish`."""

    def __init__(self, job, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.job = job
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.phase: str | None = None
        self.entered: dict[str, float] = {}  # phase → client time first seen
        self.done: dict[str, float] = {}  # phase → seconds (server figures where known)
        self.instance: dict[str, Any] | None = None
        self.instance_id: str | None = None
        self.consumed: dict[str, float] = {}  # job state → server seconds (consumedTime)
        self.polls = 0

    # -- feeding ------------------------------------------------------------------------------
    def update(self, props: dict[str, Any]) -> None:
        self.polls += 1
        self.consumed = dict(props.get("consumedTime") or {})
        if self.phase is None:
            # Every job is matched first, though often before the first poll sees it.
            self._enter("matching")
        instance_id = instance_id_of(props)
        terminal = props.get("status") in ("SUCCESSFUL", "FAILED")
        if instance_id and not terminal and (self.phase in (None, "matching", *SERVER_TIMED)
                                             or instance_id != self.instance_id):
            self.instance = self.job.instance()
        if instance_id and instance_id != self.instance_id:
            self.instance_id = instance_id
            self._note_instance(props)
        phase = phase_of(props, self.instance)
        if phase != self.phase:
            self._enter(phase)
        if self.tty and not terminal:
            self._redraw()

    def _note_instance(self, props: dict[str, Any]) -> None:
        state = (self.instance or {}).get("state", "?")
        image = (self.instance or {}).get("image") or (props.get("gridvm") or {}).get("image")
        reused = state in ("READY", "BUSY") and self.phase == "matching"
        what = "reusing" if reused else "instance"
        self._line(f"{what} {self.instance_id}" + (f" ({image})" if image else "")
                   + (f", {state}" if not reused else ""))

    def _enter(self, phase: str) -> None:
        """Move to ``phase``; phases passed between two polls are shown too, with the
        server's times (connecting or a small job's stage-out often takes less than a poll
        interval)."""
        now = self.clock()
        terminal = phase in ("successful", "failed")
        if self.phase in PHASES and (phase in PHASES or terminal):
            server = (self.instance or {}).get("phases") or {}
            end = len(PHASES) if terminal else PHASES.index(phase)
            for skipped in PHASES[PHASES.index(self.phase) + 1: end]:
                if SERVER_TIMED.get(skipped) in server or JOB_TIMED.get(skipped) in \
                        self.consumed:
                    self._step(skipped, now)
        self._step(phase, now)

    def _step(self, phase: str, now: float) -> None:
        if self.phase is not None and self.phase not in self.done:
            self.done[self.phase] = now - self.entered[self.phase]
        self._server_times()
        self.entered.setdefault(phase, now)
        previous, self.phase = self.phase, phase
        if not self.tty and phase in PHASES:
            took = f" ({previous} took {seconds(self.done[previous])})" \
                if previous in self.done else ""
            self._line(f"{phase}{took}")

    def _server_times(self) -> None:
        phases = (self.instance or {}).get("phases") or {}
        for phase, state in SERVER_TIMED.items():
            if phase in self.done and state in phases:
                self.done[phase] = float(phases[state])
        for phase, state in JOB_TIMED.items():
            if phase in self.done and state in self.consumed:
                self.done[phase] = float(self.consumed[state])

    # -- drawing ------------------------------------------------------------------------------
    def _elapsed(self) -> str:
        return seconds(self.clock() - self.started)

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"[{self._elapsed():>6}] {text}\n")
        self.stream.flush()

    def _redraw(self) -> None:
        now = self.clock()
        parts = [f"{p} {seconds(self.done[p])}" for p in PHASES if p in self.done]
        if self.phase in PHASES:
            spin = SPINNER[self.polls % len(SPINNER)]
            parts.append(f"{spin} {self.phase} {seconds(now - self.entered[self.phase])}")
        text = f"[{self._elapsed():>6}] " + " > ".join(parts)
        width = shutil.get_terminal_size((100, 20)).columns - 1
        if len(text) > width:
            text = "…" + text[-(width - 1):]
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()

    def finish(self, props: dict[str, Any]) -> None:
        """The summary: final state, total time and the time of each phase."""
        self.consumed = dict(props.get("consumedTime") or self.consumed)
        if self.phase not in ("successful", "failed"):
            self._enter(props.get("status", "FAILED").lower())
        if self.instance_id and not self.instance:
            self.instance = self.job.instance()
        self._server_times()
        timings = ", ".join(f"{p} {seconds(self.done[p])}" for p in PHASES if p in self.done)
        code = props.get("exitCode")
        status = props.get("status", "?") + (f" (exit code {code})" if code else "")
        if self.tty:
            self.stream.write("\r\x1b[K")
        self._line(f"job {self.job.id} {status}" + (f": {timings}" if timings else ""))

    def interrupted(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
