"""A libvirt connection whose blocking calls never run on the reactor thread.

Every call goes through one dedicated worker thread per connection (libvirt calls are
blocking; serialising them keeps their order obvious), and comes back as a Deferred.
Lifecycle events arrive on libvirt's default event loop, which runs in its own daemon
thread, and are handed to listeners on the reactor thread.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool

from vmm.domain import DomainConfig
from vmm.errors import HypervisorError

log = logging.getLogger(__name__)


class DomainState(enum.Enum):
    """libvirt's domain states, by name."""

    NOSTATE = libvirt.VIR_DOMAIN_NOSTATE
    RUNNING = libvirt.VIR_DOMAIN_RUNNING
    BLOCKED = libvirt.VIR_DOMAIN_BLOCKED
    PAUSED = libvirt.VIR_DOMAIN_PAUSED
    SHUTDOWN = libvirt.VIR_DOMAIN_SHUTDOWN
    SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF
    CRASHED = libvirt.VIR_DOMAIN_CRASHED
    PMSUSPENDED = libvirt.VIR_DOMAIN_PMSUSPENDED
    GONE = -1  #: no such domain

    @property
    def alive(self) -> bool:
        return self in (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED,
                        DomainState.PMSUSPENDED)


class LifecycleEvent(enum.Enum):
    DEFINED = libvirt.VIR_DOMAIN_EVENT_DEFINED
    UNDEFINED = libvirt.VIR_DOMAIN_EVENT_UNDEFINED
    STARTED = libvirt.VIR_DOMAIN_EVENT_STARTED
    SUSPENDED = libvirt.VIR_DOMAIN_EVENT_SUSPENDED
    RESUMED = libvirt.VIR_DOMAIN_EVENT_RESUMED
    STOPPED = libvirt.VIR_DOMAIN_EVENT_STOPPED
    SHUTDOWN = libvirt.VIR_DOMAIN_EVENT_SHUTDOWN
    PMSUSPENDED = libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED
    CRASHED = libvirt.VIR_DOMAIN_EVENT_CRASHED

    @classmethod
    def of(cls, code: int) -> LifecycleEvent | None:
        try:
            return cls(code)
        except ValueError:
            return None


#: STOPPED details that mean the guest died rather than being told to stop.
STOPPED_UNEXPECTEDLY = {libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                        libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
                        libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN}


@dataclass(frozen=True)
class DomainEvent:
    domain: str
    event: LifecycleEvent
    detail: int

    @property
    def unexpected_stop(self) -> bool:
        return (self.event is LifecycleEvent.CRASHED or
                (self.event is LifecycleEvent.STOPPED and self.detail in STOPPED_UNEXPECTEDLY))

    @property
    def stopped(self) -> bool:
        """The domain no longer runs (it stopped or crashed, whatever the cause)."""
        return self.event in (LifecycleEvent.STOPPED, LifecycleEvent.CRASHED)


EventListener = Callable[[DomainEvent], None]

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr by default; gridvm reports them itself.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # pragma: no cover - keeps the loop alive
                    log.exception("libvirt event loop")

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _message(err: libvirt.libvirtError) -> str:
    return (err.get_error_message() or str(err)).strip()


class Hypervisor:
    """One libvirt connection (``qemu:///system``, ``test:///default``, ``qemu+ssh://…``)."""

    def __init__(self, uri: str, reactor: IReactorThreads | None = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.uri = uri
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"libvirt {uri}")
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._listeners: list[EventListener] = []
        self._shutdown_trigger = None

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        def guarded() -> Any:
            try:
                return fn(*args)
            except libvirt.libvirtError as err:
                raise HypervisorError(_message(err)) from None

        return threads.deferToThreadPool(self._reactor, self._pool, guarded)

    @property
    def connection(self) -> libvirt.virConnect:
        if self._conn is None:
            raise HypervisorError(f"not connected to {self.uri}")
        return self._conn

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _on_event(self, _conn, dom, event: int, detail: int, _opaque) -> None:
        """Called in the libvirt event thread: hop over to the reactor."""
        kind = LifecycleEvent.of(event)
        if kind is None:
            return
        self._reactor.callFromThread(self._dispatch, DomainEvent(dom.name(), kind, detail))

    def _dispatch(self, event: DomainEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("domain event listener failed on %s", event)

    # -- connection ----------------------------------------------------------------------
    def connect(self) -> defer.Deferred:
        """Open the connection and subscribe to lifecycle events."""
        _ensure_event_loop()
        if not self._pool.started:
            self._pool.start()
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._pool.stop)

        def open_connection() -> None:
            conn = libvirt.open(self.uri)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
            self._conn = conn

        return self._call(open_connection)

    def close(self) -> defer.Deferred:
        def close_connection() -> None:
            if self._conn is not None:
                if self._callback_id is not None:
                    with contextlib.suppress(libvirt.libvirtError):
                        self._conn.domainEventDeregisterAny(self._callback_id)
                self._conn.close()
                self._conn = None

        d = self._call(close_connection) if self._pool.started else defer.succeed(None)

        def stop_pool(result):
            if self._pool.started:
                self._pool.stop()
            if self._shutdown_trigger is not None:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
                self._shutdown_trigger = None
            return result

        return d.addBoth(stop_pool)

    # -- domains -------------------------------------------------------------------------
    def _lookup(self, name: str) -> libvirt.virDomain:
        return self.connection.lookupByName(name)

    def create(self, config: DomainConfig) -> defer.Deferred:
        """Start a transient domain (it vanishes when it stops). Fires with its name."""
        xml = config.to_xml()
        return self._call(lambda: self.connection.createXML(xml, 0).name())

    def define(self, config: DomainConfig) -> defer.Deferred:
        xml = config.to_xml()
        return self._call(lambda: self.connection.defineXML(xml).name())

    def start(self, name: str) -> defer.Deferred:
        return self._call(lambda: self._lookup(name).create())

    def shutdown(self, name: str) -> defer.Deferred:
        """Ask the guest to power off (ACPI)."""
        return self._call(lambda: self._lookup(name).shutdown())

    def destroy(self, name: str, *, missing_ok: bool = True) -> defer.Deferred:
        """Stop the domain at once; a domain that is already gone is not an error."""

        def destroy() -> bool:
            try:
                dom = self._lookup(name)
            except libvirt.libvirtError as err:
                if missing_ok and err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as err:
                if err.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                libvirt.VIR_ERR_OPERATION_INVALID):
                    raise
            return True

        return self._call(destroy)

    def undefine(self, name: str, *, missing_ok: bool = True) -> defer.Deferred:
        def undefine() -> None:
            try:
                dom = self._lookup(name)
            except libvirt.libvirtError as err:
                if missing_ok and err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            if dom.isPersistent():
                dom.undefine()

        return self._call(undefine)

    def state(self, name: str) -> defer.Deferred:
        """Fires with a :class:`DomainState` (``GONE`` when there is no such domain)."""

        def state() -> DomainState:
            try:
                code, _reason = self._lookup(name).state()
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return DomainState.GONE
                raise
            return DomainState(code)

        return self._call(state)

    def xml(self, name: str) -> defer.Deferred:
        """Fires with the domain's current configuration as a :class:`DomainConfig`."""
        return self._call(lambda: DomainConfig.from_xml(self._lookup(name).XMLDesc(0)))

    def list_domains(self, prefix: str = "") -> defer.Deferred:
        """Fires with ``[(name, DomainConfig, DomainState)]`` of every domain with ``prefix``."""

        def listing() -> list[tuple[str, DomainConfig, DomainState]]:
            found = []
            for dom in self.connection.listAllDomains(0):
                name = dom.name()
                if not name.startswith(prefix):
                    continue
                try:
                    config = DomainConfig.from_xml(dom.XMLDesc(0))
                    state = DomainState(dom.state()[0])
                except libvirt.libvirtError as err:
                    if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # vanished while we looked
                    raise
                found.append((name, config, state))
            return found

        return self._call(listing)
