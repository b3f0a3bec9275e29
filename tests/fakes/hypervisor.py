"""A fake VM manager: the ``target_system.drivers.VirtualMachines`` of unit tests.

A boot takes ``staging_seconds`` then ``boot_seconds`` of clock time (0: at once), tells
the spec's ``on_phase`` "booting" in between as the real one does, and plugs an agent in
at the spec's host port on the ``FakeTSINetwork``; a boot that would outlast the spec's
``boot_timeout`` fails with ``BootTimeout`` at that time.  ``fail_next_boot(error)`` makes
a boot fail, ``destroy_error`` every destroy, ``crash(instance_id)`` kills a domain;
watchers see STARTED, STOPPED and the crash's events as libvirt reports them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
from twisted.internet import defer, task

from base.reasons import Reason
from tests.fakes.tsi import FakeTSINetwork
from vmm.errors import BootTimeout, GuestCrashed, VMMError
from vmm.hypervisor import DomainEvent, LifecycleEvent
from vmm.manager import DOMAIN_PREFIX, Instance, InstanceSpec

Watcher = Callable[[DomainEvent], None]


class FakeVirtualMachines:
    """Boots, watches and destroys fake domains on a clock."""

    def __init__(self, clock, state_dir: Path, network: FakeTSINetwork | None = None, *,
                 staging_seconds: float = 0.0, boot_seconds: float = 1.0):
        self.clock, self.state_dir, self.network = clock, Path(state_dir), network
        self.staging_seconds = staging_seconds
        self.boot_seconds = boot_seconds
        self.instances: dict[str, Instance] = {}  #: the domains that run
        self.specs: list[InstanceSpec] = []  #: every boot asked for, in order
        self.destroyed: list[str] = []  #: every destroy asked for, in order
        self._failures: list[VMMError] = []
        #: set: every destroy fails with it and the domain runs on (the hypervisor is away)
        self.destroy_error: VMMError | None = None
        self.consoles: dict[str, str] = {}  #: instance id -> what its console shows
        self._watchers: dict[str, list[Watcher]] = {}
        self._booting: dict[str, defer.Deferred] = {}

    # -- what a test tells it ------------------------------------------------------------
    def fail_next_boot(self, error: VMMError) -> None:
        """The next boot fails with ``error`` once it is staged (nothing is left behind)."""
        self._failures.append(error)

    def crash(self, instance_id: str) -> None:
        """The guest dies: the domain is gone, its agent with it, watchers see it stop."""
        instance = self.instances.pop(instance_id)
        self._unplug(instance)
        self._emit(instance_id, LifecycleEvent.STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED)

    def lose_host(self, instance_id: str, why: str) -> None:
        """The instance's host is DOWN: watchers are told as the host pool tells them."""
        for watcher in list(self._watchers.get(instance_id, [])):
            watcher(DomainEvent(DOMAIN_PREFIX + instance_id, LifecycleEvent.STOPPED,
                                libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED, host_lost=why))

    # -- VirtualMachines -----------------------------------------------------------------
    def watch(self, instance_id: str, callback: Watcher) -> Callable[[], None]:
        watchers = self._watchers.setdefault(instance_id, [])
        watchers.append(callback)

        def unwatch() -> None:
            if callback in watchers:
                watchers.remove(callback)

        return unwatch

    def console_tail(self, instance_id: str, lines: int = 5) -> str:
        return self.consoles.get(instance_id, "")

    def boot(self, spec: InstanceSpec) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._boot(spec))

    async def _boot(self, spec: InstanceSpec) -> Instance:
        if spec.instance_id in self.instances or spec.instance_id in self._booting:
            raise VMMError(f"instance {spec.instance_id} exists already",
                           reason=Reason.BAD_REQUEST)
        self.specs.append(spec)
        started = self.clock.seconds()
        await self._wait(spec.instance_id, self.staging_seconds, "staging")
        if spec.on_phase is not None:
            await defer.maybeDeferred(spec.on_phase, "booting")
        if self._failures:
            raise self._failures.pop(0)
        directory = self.state_dir / spec.instance_id
        directory.mkdir(parents=True, exist_ok=True)
        instance = Instance(
            instance_id=spec.instance_id, domain=DOMAIN_PREFIX + spec.instance_id,
            host_port=spec.host_port or 0, callback_port=spec.callback_port,
            directory=directory, image=spec.image, labels=dict(spec.labels), created=time.time())
        self.instances[spec.instance_id] = instance
        self._emit(spec.instance_id, LifecycleEvent.STARTED, 0)
        left = spec.boot_timeout - (self.clock.seconds() - started)
        if self.boot_seconds > left:
            await self._wait(spec.instance_id, left, "booting")
            await self.destroy(spec.instance_id)
            raise BootTimeout(f"the agent did not answer within {spec.boot_timeout:g} s")
        await self._wait(spec.instance_id, self.boot_seconds, "booting")
        if self.network is not None:
            self.network.plug(instance.host_port)
        return instance

    async def _wait(self, instance_id: str, seconds: float, phase: str) -> None:
        """Clock time passes; a destroy meanwhile ends the boot as the real manager does."""
        if seconds <= 0:
            return
        self._booting[instance_id] = pause = task.deferLater(self.clock, seconds, lambda: None)
        try:
            await pause
        except defer.CancelledError:
            raise GuestCrashed(f"the guest was destroyed while {phase}") from None
        finally:
            self._booting.pop(instance_id, None)

    def destroy(self, instance_id: str) -> defer.Deferred:
        self.destroyed.append(instance_id)
        if self.destroy_error is not None:
            return defer.fail(self.destroy_error)
        pause = self._booting.get(instance_id)
        if pause is not None:
            pause.cancel()
        instance = self.instances.pop(instance_id, None)
        if instance is not None:
            self._unplug(instance)
            shutil.rmtree(instance.directory, ignore_errors=True)
            self._emit(instance_id, LifecycleEvent.STOPPED,
                       libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
        return defer.succeed(None)

    # -- plumbing ------------------------------------------------------------------------
    def _unplug(self, instance: Instance) -> None:
        if self.network is not None:
            self.network.unplug(instance.host_port)

    def _emit(self, instance_id: str, kind: LifecycleEvent, detail: int) -> None:
        event = DomainEvent(DOMAIN_PREFIX + instance_id, kind, detail)
        for watcher in list(self._watchers.get(instance_id, [])):
            watcher(event)
