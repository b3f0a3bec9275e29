"""One clock with the fake VM manager and the fake TSI network on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet import reactor, task

from tests.fakes.hypervisor import FakeVirtualMachines
from tests.fakes.tsi import FakeAgent, FakeTSINetwork


class FakeParts:
    """``clock``, ``network`` (the TSI connector) and ``vms`` (the VM manager)."""

    def __init__(self, directory: Path):
        self.clock = task.Clock()
        self.network = FakeTSINetwork(self.clock)
        self.vms = FakeVirtualMachines(self.clock, directory, self.network)

    def agent(self, target) -> FakeAgent:
        """The agent in a target system's VM."""
        return self.network.agents[target.vm.host_port]

    def wait(self, seconds: float, step: float = 0.25) -> None:
        """Let ``seconds`` pass in small steps (``Clock.advance`` runs what falls due in
        one jump all at its end, so timers set meanwhile would start late)."""
        whole, rest = divmod(seconds, step)
        self.clock.pump([step] * int(whole) + ([rest] if rest > 1e-9 else []))

    async def run_until(self, done: Callable[[], bool], *, step: float = 0.1,
                        limit: float = 3600.0) -> None:
        """Advance the clock by ``step``, then give the real reactor a millisecond (work
        done in threads comes back through it), until ``done()``; AssertionError once
        ``limit`` clock seconds have passed."""
        end = self.clock.seconds() + limit
        while not done():
            if self.clock.seconds() >= end:
                raise AssertionError(f"not done after {limit:g} s of clock time")
            self.clock.advance(step)
            await task.deferLater(reactor, 0.001, lambda: None)
