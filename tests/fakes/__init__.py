"""Fakes of the parts below a target system, for unit tests of the cores that boot no VM
(in the spirit of buildbot's ``test/fake``): ``hypervisor.FakeVirtualMachines`` boots on a
``task.Clock``, ``tsi.FakeTSINetwork`` connects to in-memory agents.  End-to-end tests use
the real parts."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor, task


async def run_until(clock: task.Clock, done: Callable[[], bool], *, step: float = 0.1,
                    limit: float = 3600.0) -> None:
    """Advance ``clock`` by ``step``, then give the real reactor a millisecond (work done
    in threads comes back through it), until ``done()``; AssertionError once ``limit``
    clock seconds have passed."""
    end = clock.seconds() + limit
    while not done():
        if clock.seconds() >= end:
            raise AssertionError(f"not done after {limit:g} s of clock time")
        clock.advance(step)
        await task.deferLater(reactor, 0.001, lambda: None)
