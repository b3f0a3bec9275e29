"""Several hypervisor hosts: one libvirt connection and one VM manager per host.

:class:`HostPool` is the ``VirtualMachines`` of a site with one or more hosts: a boot goes
to the host its ``InstanceSpec.host`` names (placement chose it), every other call to the
host the instance runs on.  Each host has its own connection (keepalive, reconnection with
backoff, events — ``vmm.hypervisor``), so one host's daemon restarting or vanishing never
disturbs the others.

A host is **UP**, **DRAINING** (an operator's ``drain``, or ``enabled = false`` in
site.toml: it takes no new instance, its instances go on) or **DOWN**: unreachable for
longer than ``grace`` seconds (None: never — a one-host site waits for its libvirtd as it
always did).  When a host turns DOWN its instances are told
(a :class:`DomainEvent` with ``host_lost``): they end FAILED ``HOST_LOST``.  While it is
unreachable but within the grace period nothing is declared: when it comes back in time
its instances simply go on (the VM manager re-checks their domains after reconnecting).
When a DOWN host comes back, the destroys of its lost instances that failed meanwhile are
retried, so nothing of theirs is left on it.  Drained hosts are remembered across restarts
(``drained.json`` in the state directory).

After a server restart, an instance whose host is unreachable at the start is **awaited**
(:meth:`HostPool.await_instance`): when the host joins within the grace period its domain
is handed back, else the instance is lost with it (``HOST_LOST``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import libvirt
from twisted.application import service
from twisted.internet import defer, task

from base.reasons import Reason
from vmm.errors import HypervisorError, VMMError
from vmm.hypervisor import (
    ConnectionStatus,
    DomainEvent,
    HostCapacity,
    Hypervisor,
    LifecycleEvent,
)
from vmm.manager import AdoptedDomain, Instance, InstanceSpec, VirtualMachineManager
from vmm.volumes import StoragePool

log = logging.getLogger(__name__)

DEFAULT_HOST = "default"


class HostState(StrEnum):
    UP = "UP"
    DRAINING = "DRAINING"
    DOWN = "DOWN"


@dataclass(frozen=True)
class HostSpec:
    """One ``[[hosts]]`` table of site.toml."""

    name: str
    uri: str
    address: str = "127.0.0.1"  #: where the host binds forwarded TSI ports
    site_address: str = "127.0.0.1"  #: where the host reaches the site's callback listener
    cpus: int = 0  #: 0: as libvirt reports
    memory_mib: int = 0  #: 0: as libvirt reports
    enabled: bool = True
    storage_pool: str = ""  #: a directory on the host for gridvm's pool; "" = local files


@dataclass(frozen=True)
class HostView:
    """A host as placement and operators see it now."""

    name: str
    state: HostState
    cpus: int
    memory_mib: int
    free_memory_mib: int
    cached: frozenset[str] = frozenset()  #: ids of images staged there
    instances: tuple[str, ...] = ()
    message: str = ""
    uri: str = ""
    address: str = "127.0.0.1"  #: where the host binds forwarded TSI ports
    site_address: str = "127.0.0.1"  #: where the host reaches the site

    @property
    def local(self) -> bool:
        """Its libvirt runs on the site's machine (a URI without a remote transport or host),
        so sockets of the site's own, such as a cluster's switch, are reachable from its
        guests."""
        scheme, _, rest = self.uri.partition("://")
        return "+" not in scheme and rest.startswith("/")

    def to_dict(self) -> dict:
        return {"name": self.name, "state": self.state.value, "uri": self.uri,
                "address": self.address,
                "cpus": self.cpus, "memoryMiB": self.memory_mib,
                "freeMemoryMiB": self.free_memory_mib, "cachedImages": sorted(self.cached),
                "instances": list(self.instances), "message": self.message}


class UnknownHost(VMMError):
    reason = Reason.NOT_FOUND


@dataclass
class Host:
    """One hypervisor host: its configuration, VM manager and what the pool knows of it."""

    spec: HostSpec
    vmm: VirtualMachineManager
    drained: bool = False
    down: bool = False
    started: bool = False  #: its first connection (and adoption) is done
    lost_since: float | None = None
    capacity: HostCapacity | None = None
    cached_images: set[str] = field(default_factory=set)
    message: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> HostState:
        if self.down or not self.started:
            return HostState.DOWN
        if self.drained or not self.spec.enabled:
            return HostState.DRAINING
        return HostState.UP

    def view(self, instances: Sequence[str]) -> HostView:
        capacity = self.capacity or HostCapacity(0, 0, 0)
        message = self.message
        if self.state is HostState.DOWN and not message:
            message = self.vmm.hypervisor.status.message
        return HostView(self.name, self.state, self.spec.cpus or capacity.cpus,
                        self.spec.memory_mib or capacity.memory_mib,
                        capacity.free_memory_mib, frozenset(self.cached_images),
                        tuple(sorted(instances)), message, self.spec.uri,
                        self.spec.address, self.spec.site_address)


def build_hosts(specs: Sequence[HostSpec], state_dir: Path, reactor, *, prefix: str,
                site_id: str | None = None, **vmm_options) -> list[Host]:
    """One :class:`Host` per spec; the first keeps ``state_dir`` (a single-host site's
    layout), the others get ``state_dir/hosts/<name>``; all share one site identity."""
    hosts = []
    for i, spec in enumerate(specs):
        directory = state_dir if i == 0 else state_dir / "hosts" / spec.name
        pool = StoragePool(f"{prefix}pool", spec.storage_pool) if spec.storage_pool else None
        manager = VirtualMachineManager(
            Hypervisor(spec.uri, reactor), directory, reactor=reactor, prefix=prefix,
            site_id=site_id or (hosts[0].vmm.site_id if hosts else None),
            storage_pool=pool, address=spec.address, site_address=spec.site_address,
            **vmm_options)
        hosts.append(Host(spec, manager))
    return hosts


class HostPool(service.Service):
    """The hosts of a site, as one ``VirtualMachines``."""

    name = "hosts"

    def __init__(self, hosts: Sequence[Host], reactor, *, grace: float | None = 60.0,
                 interval: float = 1.0, capacity_every: float = 15.0,
                 drained_file: Path | None = None, start_timeout: float = 60.0):
        if not hosts:
            raise VMMError("a site needs at least one hypervisor host", reason=Reason.BAD_REQUEST)
        self.hosts = {host.name: host for host in hosts}
        self.reactor = reactor
        self.grace, self.interval, self.capacity_every = grace, interval, capacity_every
        #: seconds a host has to answer at the start (then it is DOWN and joins when it
        #: answers)
        self.start_timeout = start_timeout
        self.drained_file = drained_file
        self._where: dict[str, Host] = {}  #: instance id -> its host (booting ones too)
        self._booting: set[str] = set()
        self._watchers: dict[str, list[Callable[[DomainEvent], None]]] = {}
        self._monitor = task.LoopingCall(self.check)
        self._monitor.clock = reactor
        self._capacity_at = 0.0
        self._joining: set[str] = set()
        self._asking: set[str] = set()  #: hosts asked for their capacity, not answered yet
        #: instance id -> (its host's name, what await_instance handed out)
        self._awaited: dict[str, tuple[str, defer.Deferred]] = {}
        for name in self._read_drained():
            if name in self.hosts:
                self.hosts[name].drained = True

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def first(self) -> Host:
        return next(iter(self.hosts.values()))

    def start(self) -> defer.Deferred:
        """Connect to every host; fires with the domains adopted from earlier runs.  A host
        that cannot be reached within ``start_timeout`` is DOWN and tried again every
        ``interval`` (a one-host site's too: its REST service, finished jobs and files are
        there while its libvirtd is not)."""
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> list[AdoptedDomain]:
        starts = [host.vmm.start() for host in self.hosts.values()]
        for each in starts:
            each.addTimeout(self.start_timeout, self.reactor)
        results = await defer.DeferredList(starts, consumeErrors=True)
        adopted: list[AdoptedDomain] = []
        for host, (ok, result) in zip(self.hosts.values(), results, strict=True):
            if ok:
                adopted.extend(self._joined(host, result))
            else:
                host.message = f"not reachable at start: {result.getErrorMessage()}"
                log.warning("host %s (%s) %s", host.name, host.spec.uri, host.message)
                host.lost_since = self.reactor.seconds()
                host.down = True
        await self._refresh_capacity()
        self._monitor.start(self.interval, now=False)
        return adopted

    def _joined(self, host: Host, adopted: list[AdoptedDomain]) -> list[AdoptedDomain]:
        host.started, host.down, host.message = True, False, ""
        for found in adopted:
            if found.instance is not None:
                self._where[found.instance.instance_id] = host
                host.cached_images.add(found.instance.image)
        return adopted

    def stopService(self):
        super().stopService()
        return self.close()

    def close(self) -> defer.Deferred:
        """Stop watching the hosts and close every connection."""
        if self._monitor.running:
            self._monitor.stop()
        for _host, waiting in list(self._awaited.values()):
            waiting.cancel()  # the site stops: nothing is decided about these instances
        return defer.DeferredList([host.vmm.hypervisor.close() for host in self.hosts.values()])

    # -- watching the hosts ----------------------------------------------------------------
    def check(self) -> None:
        """Once per ``interval``: mark hosts DOWN past their grace period, UP when they are
        back, and refresh the capacity every ``capacity_every`` seconds (without waiting
        for it: a host busy with an upload must not hold up the watch of the others)."""
        now = self.reactor.seconds()
        for host in self.hosts.values():
            if not host.started:
                self._try_joining(host)
                if self.grace is not None and host.lost_since is not None and \
                        now - host.lost_since >= self.grace:
                    self._give_up_awaited(host, now - host.lost_since)
                continue
            if host.vmm.hypervisor.connected:
                if host.down:
                    log.warning("host %s is back after %.0f s", host.name,
                                now - (host.lost_since or now))
                host.lost_since, host.down, host.message = None, False, ""
                self._forget_gone(host)
                continue
            if host.lost_since is None:
                host.lost_since = now
            if not host.down and self.grace is not None and \
                    now - host.lost_since >= self.grace:
                self._declare_lost(host, now - host.lost_since)
        if now - self._capacity_at >= self.capacity_every:
            self._capacity_at = now
            self._refresh_capacity()

    def _forget_gone(self, host: Host) -> None:
        """Forget the instances the host's VM manager no longer has (e.g. destroyed after
        the host came back) — not those still booting or still to be destroyed."""
        manager = host.vmm
        for instance_id in [i for i, h in self._where.items() if h is host]:
            if instance_id not in manager.instances and instance_id not in self._booting \
                    and instance_id not in manager.undestroyed:
                del self._where[instance_id]

    def adopt(self) -> defer.Deferred:
        """Find this site's domains on every reachable host again (see the VM manager)."""

        async def adopt() -> list[AdoptedDomain]:
            found: list[AdoptedDomain] = []
            for host in self.hosts.values():
                if host.started and host.vmm.hypervisor.connected:
                    found.extend(self._joined(host, await host.vmm.adopt()))
            return found

        return defer.Deferred.fromCoroutine(adopt())

    def _try_joining(self, host: Host) -> None:
        """A host unreachable since the start: connect and adopt once it answers (its
        domains were not taken back: they are destroyed, their instances have ended)."""
        if host.name in self._joining:
            return
        self._joining.add(host.name)

        async def join() -> None:
            try:
                adopted = await host.vmm.start()
            except HypervisorError as err:
                host.message = f"not reachable: {err}"
                return
            finally:
                self._joining.discard(host.name)
            log.info("host %s joined", host.name)
            joined = self._joined(host, adopted)
            await self._refresh_capacity()  # placement needs it before the next 15 s tick
            for found in joined:
                if found.instance is None:
                    continue
                awaited = self._awaited.pop(found.instance.instance_id, None)
                if awaited is not None and found.state.alive:
                    awaited[1].callback(found.instance)
                    continue
                if found.instance.instance_id not in self._watchers:
                    await self.destroy(found.instance.instance_id)
                if awaited is not None:
                    awaited[1].errback(VMMError(
                        f"its VM on host {host.name} was {found.state.name.lower()} when "
                        "the host came back", reason=Reason.GUEST_CRASHED))
            self._end_awaited(host, VMMError(
                f"its VM was not on host {host.name} when the host came back",
                reason=Reason.GUEST_CRASHED))

        defer.Deferred.fromCoroutine(join()).addErrback(
            lambda f: log.error("joining host %s: %s", host.name, f.getTraceback()))

    def await_instance(self, instance_id: str, host_name: str) -> defer.Deferred:
        """Fires with the ``Instance`` of a restored instance whose host (unreachable since
        the start) joins with its domain; fails with a :class:`VMMError`: ``HOST_LOST``
        once the host is unreachable past the grace period, ``GUEST_CRASHED`` when it joins
        without the domain.  Cancelled when the pool closes."""
        host = self.host(host_name)
        if host.started:
            return defer.fail(VMMError(f"its VM is not on host {host_name}",
                                       reason=Reason.GUEST_CRASHED))
        waiting: defer.Deferred = defer.Deferred(
            lambda _d: self._awaited.pop(instance_id, None))
        self._awaited[instance_id] = (host_name, waiting)
        return waiting

    def _give_up_awaited(self, host: Host, seconds: float) -> None:
        if not any(name == host.name for name, _waiting in self._awaited.values()):
            return
        host.message = f"unreachable for {seconds:.0f} s since the start"
        self._end_awaited(host, VMMError(f"its host {host.name} is {host.message}",
                                         reason=Reason.HOST_LOST))

    def _end_awaited(self, host: Host, error: VMMError) -> None:
        for instance_id, (name, waiting) in list(self._awaited.items()):
            if name == host.name:
                del self._awaited[instance_id]
                waiting.errback(error)

    def _declare_lost(self, host: Host, seconds: float) -> None:
        host.down = True
        host.message = (f"unreachable for {seconds:.0f} s: "
                        f"{host.vmm.hypervisor.status.message}")
        lost = [i for i, h in self._where.items() if h is host]
        log.error("host %s is DOWN (%s): %d instance(s) lost", host.name, host.message,
                  len(lost))
        for instance_id in lost:
            event = DomainEvent(host.vmm.domain_name(instance_id), LifecycleEvent.STOPPED,
                                libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
                                host_lost=f"its host {host.name} is {host.message}")
            for watcher in list(self._watchers.get(instance_id, ())):
                try:
                    watcher(event)
                except Exception:
                    log.exception("host-lost listener of %s", instance_id)

    def _refresh_capacity(self) -> defer.Deferred:
        """Ask every reachable host for its capacity (one question at a time per host);
        fires when all have answered."""
        asked = []
        for host in self.hosts.values():
            if not host.vmm.hypervisor.connected or host.name in self._asking:
                continue
            self._asking.add(host.name)

            def answered(capacity, host=host):
                host.capacity = capacity

            def failed(reason, host=host):
                reason.trap(HypervisorError)
                log.warning("capacity of host %s: %s", host.name, reason.getErrorMessage())

            d = host.vmm.hypervisor.capacity().addCallbacks(answered, failed)
            d.addBoth(lambda _r, name=host.name: self._asking.discard(name))
            asked.append(d)
        return defer.DeferredList(asked)

    # -- operators -------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        if name not in self.hosts:
            raise UnknownHost(f"no host {name!r}; hosts: {', '.join(self.hosts)}")
        return self.hosts[name]

    def views(self) -> list[HostView]:
        on: dict[str, list[str]] = {name: [] for name in self.hosts}
        for instance_id, host in self._where.items():
            on[host.name].append(instance_id)
        return [host.view(on[host.name]) for host in self.hosts.values()]

    def drain(self, name: str) -> HostView:
        """The host takes no new instance; the ones it runs go on."""
        return self._set_drained(name, True)

    def enable(self, name: str) -> HostView:
        return self._set_drained(name, False)

    def _set_drained(self, name: str, drained: bool) -> HostView:
        host = self.host(name)
        host.drained = drained
        self._write_drained()
        log.info("host %s %s", name, "drained" if drained else "enabled")
        return next(v for v in self.views() if v.name == name)

    def _read_drained(self) -> list[str]:
        try:
            names = json.loads(self.drained_file.read_text()) if self.drained_file else []
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def _write_drained(self) -> None:
        if self.drained_file is None:
            return
        fresh = self.drained_file.with_name(f".{self.drained_file.name}.{os.getpid()}")
        fresh.write_text(json.dumps(sorted(h.name for h in self.hosts.values() if h.drained)))
        fresh.replace(self.drained_file)

    def host_of(self, instance_id: str) -> str:
        """The name of the host the instance runs on ("" when none knows it)."""
        host = self._where.get(instance_id)
        return host.name if host is not None else ""

    # -- VirtualMachines -------------------------------------------------------------------
    def boot(self, spec: InstanceSpec) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._boot(spec))

    async def _boot(self, spec: InstanceSpec) -> Instance:
        host = self.host(spec.host) if spec.host else self.first
        if host.state is HostState.DOWN:
            raise VMMError(f"host {host.name} is DOWN: {host.message}", reason=Reason.HOST_LOST)
        self._where[spec.instance_id] = host
        self._booting.add(spec.instance_id)
        try:
            instance = await host.vmm.boot(spec)
        except BaseException:
            self._where.pop(spec.instance_id, None)
            raise
        finally:
            self._booting.discard(spec.instance_id)
        host.cached_images.add(spec.image)
        return instance

    def destroy(self, instance_id: str) -> defer.Deferred:
        host = self._where.get(instance_id)
        if host is None:
            return defer.succeed(None)

        def forget(result):
            self._where.pop(instance_id, None)
            return result

        return host.vmm.destroy(instance_id).addCallback(forget)

    def watch(self, instance_id: str, callback: Callable[[DomainEvent], None]
              ) -> Callable[[], None]:
        """Events of the instance's domain on whichever host, and its host's loss."""
        watchers = self._watchers.setdefault(instance_id, [])
        watchers.append(callback)
        unwatches = [host.vmm.watch(instance_id, callback) for host in self.hosts.values()]

        def unwatch() -> None:
            for each in unwatches:
                each()
            if callback in watchers:
                watchers.remove(callback)
            if not watchers:
                self._watchers.pop(instance_id, None)

        return unwatch

    def console_tail(self, instance_id: str, lines: int = 5) -> str:
        host = self._where.get(instance_id)
        return host.vmm.console_tail(instance_id, lines) if host is not None else ""

    def console_text(self, instance_id: str) -> str | None:
        """The end of the instance's console log, live or kept (see the VM manager)."""
        host = self._where.get(instance_id)
        if host is not None:
            return host.vmm.console_text(instance_id)
        for each in self.hosts.values():
            text = each.vmm.console_text(instance_id)
            if text is not None:
                return text
        return None

    # a one-host site's parts, as they were before there were several hosts
    @property
    def hypervisor(self) -> Hypervisor:
        """The first host's connection (a one-host site's only one)."""
        return self.first.vmm.hypervisor

    @property
    def state_dir(self) -> Path:
        return self.first.vmm.state_dir

    def instance_dir(self, instance_id: str) -> Path:
        return self._where.get(instance_id, self.first).vmm.instance_dir(instance_id)

    def state(self, instance_id: str) -> defer.Deferred:
        """Fires with the ``DomainState`` of the instance's domain on its host."""
        host = self._where.get(instance_id, self.first)
        return host.vmm.state(instance_id)

    def status_message(self) -> str:
        """Empty when every host is reachable, else which are not and why."""
        return "; ".join(f"host {h.name}: {h.message or h.vmm.hypervisor.status.message}"
                         for h in self.hosts.values() if not h.vmm.hypervisor.connected)

    def status(self) -> ConnectionStatus:
        """The one host's connection status; of several: connected when all are."""
        statuses = [h.vmm.hypervisor.status for h in self.hosts.values()]
        if len(statuses) == 1:
            return statuses[0]
        return ConnectionStatus(", ".join(s.uri for s in statuses),
                                all(s.connected for s in statuses),
                                min(s.since for s in statuses), self.status_message(),
                                sum(s.reconnects for s in statuses))
