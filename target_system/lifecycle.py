"""Explicit state machines with a deadline and a timestamp per phase.

``Lifecycle`` knows which transitions are legal, stamps every state it enters, arms the
deadline of phases that have one and, when a deadline passes, moves to the failure state
with the phase's timeout reason.  Time comes from the reactor, so tests drive it with
``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from base.errors import GridvmError
from base.reasons import Reason

log = logging.getLogger(__name__)


class InstanceState(enum.Enum):
    """The life of a target system (architecture.md)."""

    REQUESTED = "REQUESTED"
    STAGING = "STAGING"
    BOOTING = "BOOTING"
    CONNECTING = "CONNECTING"
    READY = "READY"
    BUSY = "BUSY"
    DRAINING = "DRAINING"
    TERMINATED = "TERMINATED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (InstanceState.TERMINATED, InstanceState.FAILED)


_I = InstanceState
INSTANCE_TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    _I.REQUESTED: frozenset({_I.STAGING, _I.TERMINATED}),
    _I.STAGING: frozenset({_I.BOOTING, _I.TERMINATED}),
    _I.BOOTING: frozenset({_I.CONNECTING, _I.TERMINATED}),
    _I.CONNECTING: frozenset({_I.READY, _I.TERMINATED}),
    _I.READY: frozenset({_I.BUSY, _I.DRAINING}),
    _I.BUSY: frozenset({_I.READY, _I.DRAINING}),
    _I.DRAINING: frozenset({_I.TERMINATED}),
    _I.TERMINATED: frozenset(),
    _I.FAILED: frozenset(),
}
# FAILED is reachable from every state that is not terminal.
for _state, _targets in list(INSTANCE_TRANSITIONS.items()):
    if not _state.terminal:
        INSTANCE_TRANSITIONS[_state] = _targets | {_I.FAILED}

#: Why a phase ends when its deadline passes.
INSTANCE_TIMEOUT_REASONS = {
    _I.STAGING: Reason.IMAGE_UNAVAILABLE,
    _I.BOOTING: Reason.BOOT_TIMEOUT,
    _I.CONNECTING: Reason.TSI_UNREACHABLE,
    _I.DRAINING: Reason.HYPERVISOR_ERROR,
}


class JobState(enum.Enum):
    """UNICORE's job states, as clients see them."""

    UNDEFINED = "UNDEFINED"
    READY = "READY"
    STAGINGIN = "STAGINGIN"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    STAGINGOUT = "STAGINGOUT"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCESSFUL, JobState.FAILED)


_J = JobState
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.UNDEFINED: frozenset({_J.READY, _J.FAILED}),
    _J.READY: frozenset({_J.STAGINGIN, _J.QUEUED, _J.FAILED}),
    _J.STAGINGIN: frozenset({_J.QUEUED, _J.FAILED}),
    _J.QUEUED: frozenset({_J.RUNNING, _J.STAGINGOUT, _J.FAILED}),
    _J.RUNNING: frozenset({_J.STAGINGOUT, _J.FAILED}),
    _J.STAGINGOUT: frozenset({_J.SUCCESSFUL, _J.FAILED}),
    _J.SUCCESSFUL: frozenset(),
    _J.FAILED: frozenset(),
}
JOB_TIMEOUT_REASONS = {
    _J.STAGINGIN: Reason.STAGING_FAILED,
    _J.QUEUED: Reason.TSI_UNREACHABLE,
    _J.RUNNING: Reason.RUNTIME_EXCEEDED,
    _J.STAGINGOUT: Reason.STAGING_FAILED,
}


class IllegalTransition(GridvmError):
    """A transition the state table does not allow (a programming error, not user input)."""


@dataclass(frozen=True)
class Transition:
    previous: enum.Enum
    state: enum.Enum
    at: float
    reason: str | None = None
    message: str = ""


Listener = Callable[[Transition], None]


@dataclass
class Lifecycle:
    """One object's state, the time it entered each state, and the running deadline."""

    transitions: dict
    failed: enum.Enum
    initial: enum.Enum
    clock: object  #: an IReactorTime (the reactor, or task.Clock in tests)
    deadlines: dict = field(default_factory=dict)  #: state -> seconds
    timeout_reasons: dict = field(default_factory=dict)
    state: enum.Enum = None  # type: ignore[assignment]
    entered: dict = field(default_factory=dict)  #: state name -> timestamp (first entry)
    history: list = field(default_factory=list)  #: [(state name, timestamp)] every entry
    reason: str | None = None
    message: str = ""
    listeners: list[Listener] = field(default_factory=list)
    #: what to add to a passed deadline's message (e.g. the guest's console), by state
    timeout_detail: Callable[[enum.Enum], str] | None = None
    _timer: object = None

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = self.initial
        self.entered.setdefault(self.state.name, self.clock.seconds())
        if not self.history:
            self.history.append((self.state.name, self.entered[self.state.name]))
        self._arm()

    @property
    def terminal(self) -> bool:
        return not self.transitions[self.state]

    def can(self, target: enum.Enum) -> bool:
        return target in self.transitions[self.state]

    def advance(self, target: enum.Enum, message: str = "") -> Transition:
        """Enter ``target``; raises :class:`IllegalTransition` if the table forbids it."""
        return self._enter(target, None, message)

    def fail(self, reason: str, message: str) -> Transition | None:
        """Enter the failure state with a reason code; a no-op once terminal."""
        if self.terminal:
            return None
        return self._enter(self.failed, reason, message)

    def phase_seconds(self) -> dict[str, float]:
        """Time spent in each state, summed over every visit (the current one up to now)."""
        result: dict[str, float] = {}
        ends = [at for _name, at in self.history[1:]] + [self.clock.seconds()]
        for (name, start), end in zip(self.history, ends, strict=True):
            if self.terminal and name == self.state.name and end == ends[-1]:
                continue
            result[name] = result.get(name, 0.0) + (end - start)
        return result

    def _enter(self, target: enum.Enum, reason: str | None, message: str) -> Transition:
        if target not in self.transitions[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {target.name}")
        previous = self.state
        self.state = target
        now = self.clock.seconds()
        self.entered.setdefault(target.name, now)
        self.history.append((target.name, now))
        if reason is not None:
            self.reason, self.message = reason, message
        elif message:
            self.message = message
        self._arm()
        transition = Transition(previous, target, now, reason, message)
        for listener in list(self.listeners):
            listener(transition)
        return transition

    def restore(self, state: enum.Enum, history: list, reason: str | None = None,
                message: str = "") -> None:
        """Take up a state saved earlier (after a restart); the deadline of that state
        counts from when it was first entered, not from now."""
        self.state = state
        self.history = [(name, float(at)) for name, at in history] or [
            (state.name, self.clock.seconds())]
        self.entered = {}
        for name, at in self.history:
            self.entered.setdefault(name, at)
        self.reason, self.message = reason, message
        self._arm(since=self.history[-1][1])

    def _arm(self, since: float | None = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        seconds = self.deadlines.get(self.state)
        if seconds is not None and not self.terminal:
            state = self.state
            elapsed = 0.0 if since is None else max(0.0, self.clock.seconds() - since)
            self._timer = self.clock.callLater(max(0.0, seconds - elapsed), self._expired,
                                               state, seconds)

    def _expired(self, state: enum.Enum, seconds: float) -> None:
        self._timer = None
        if self.state is state:
            reason = self.timeout_reasons.get(state, Reason.HYPERVISOR_ERROR)
            log.info("deadline of %s passed after %g s: %s", state.name, seconds, reason)
            detail = self.timeout_detail(state) if self.timeout_detail else ""
            self.fail(reason, f"{state.name.lower()} took longer than {seconds:g} s"
                      + (f"; {detail}" if detail else ""))

    def cancel(self) -> None:
        """Disarm the deadline (when the owner goes away)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def instance_lifecycle(clock, deadlines: dict[InstanceState, float] | None = None) -> Lifecycle:
    return Lifecycle(INSTANCE_TRANSITIONS, InstanceState.FAILED, InstanceState.REQUESTED, clock,
                     deadlines=dict(deadlines or {}), timeout_reasons=INSTANCE_TIMEOUT_REASONS)


def job_lifecycle(clock, deadlines: dict[JobState, float] | None = None) -> Lifecycle:
    return Lifecycle(JOB_TRANSITIONS, JobState.FAILED, JobState.READY, clock,
                     deadlines=dict(deadlines or {}), timeout_reasons=JOB_TIMEOUT_REASONS)
