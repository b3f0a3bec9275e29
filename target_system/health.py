"""Whether a live target system is still alive, and how long it may live.

``HealthCheck`` pings the TSI every ``interval`` seconds and reports the instance lost after
``missed_budget`` failed pings in a row; ``Timer`` is the one re-armable delayed call behind
the idle timeout and the lease.  Time comes from the reactor (``task.Clock`` in tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer, task

log = logging.getLogger(__name__)


@dataclass
class HealthPolicy:
    interval: float = 15.0  #: seconds between pings while READY/BUSY
    missed_budget: int = 3  #: consecutive failed pings that fail the instance
    ping_timeout: float = 10.0
    idle_timeout: float | None = 600.0  #: READY without jobs this long → terminate
    lease: float | None = None  #: the instance ends this long after READY, whatever it does


class HealthCheck:
    """Pings through ``ping`` (a Deferred per call) while running; ``lost(message)`` is
    called once ``missed_budget`` pings in a row failed or timed out."""

    def __init__(self, clock, policy: HealthPolicy, name: str,
                 ping: Callable[[], defer.Deferred], lost: Callable[[str], None]):
        self.clock, self.policy, self.name = clock, policy, name
        self._ping, self._lost = ping, lost
        self.missed = 0  #: failed pings in a row
        self.round_trip: float | None = None  #: seconds the last answered ping took
        self._loop: task.LoopingCall | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    def start(self) -> None:
        """The first ping goes out one interval from now."""
        self.stop()
        self._loop = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self._check()))
        self._loop.clock = self.clock
        self._loop.start(self.policy.interval, now=False)

    def stop(self) -> None:
        if self.running:
            self._loop.stop()
        self._loop = None

    async def _check(self) -> None:
        sent = self.clock.seconds()
        try:
            await self._ping().addTimeout(self.policy.ping_timeout, self.clock)
            self.missed = 0
            self.round_trip = self.clock.seconds() - sent
        except Exception as err:
            self.missed += 1
            log.warning("instance %s: ping %d/%d failed: %s", self.name, self.missed,
                        self.policy.missed_budget, err)
            if self.missed >= self.policy.missed_budget and self.running:
                self._lost(f"{self.missed} pings in a row failed: {err}")


class Timer:
    """One delayed call that can be re-armed and cancelled (cancelling twice is fine)."""

    def __init__(self, clock):
        self.clock = clock
        self._call = None

    @property
    def active(self) -> bool:
        return self._call is not None and self._call.active()

    def arm(self, seconds: float, callback: Callable[[], object]) -> None:
        self.cancel()
        self._call = self.clock.callLater(seconds, callback)

    def cancel(self) -> None:
        if self.active:
            self._call.cancel()
        self._call = None
