"""A libvirt connection whose blocking calls never run on the reactor thread.

Every call goes through one dedicated worker thread per connection (libvirt calls are
blocking; serialising them keeps their order obvious), and comes back as a Deferred.
Lifecycle events arrive on libvirt's default event loop, which runs in its own daemon
thread, and are handed to listeners on the reactor thread.

The connection survives its daemon restarting: libvirt keepalive and a close callback
notice the loss, the connection is reopened with exponential backoff (event callbacks
registered anew) and reconnect listeners are told, so that their owner can re-check what
it tracks.  While disconnected every call fails at once with a :class:`HypervisorError`;
``wait_connected()`` lets a caller wait for the connection within its own deadline, and
``status`` says whether the site can reach its hypervisor.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt
from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.python.threadpool import ThreadPool

from vmm.domain import DomainConfig
from vmm.errors import ForeignDomain, HypervisorError

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
    host_lost: str = ""  #: set when the domain's host is DOWN (why): it is lost with it

    @property
    def unexpected_stop(self) -> bool:
        return (self.event is LifecycleEvent.CRASHED or
                (self.event is LifecycleEvent.STOPPED and self.detail in STOPPED_UNEXPECTEDLY))

    @property
    def stopped(self) -> bool:
        """The domain no longer runs (it stopped or crashed, whatever the cause)."""
        return self.event in (LifecycleEvent.STOPPED, LifecycleEvent.CRASHED)


EventListener = Callable[[DomainEvent], None]
ReconnectListener = Callable[[], defer.Deferred | None]


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: ``initial``, doubling up to ``maximum``."""

    initial: float = 0.5
    maximum: float = 10.0

    def after(self, delay: float) -> float:
        return min(self.maximum, max(self.initial, delay * 2))


@dataclass(frozen=True)
class Keepalive:
    """libvirt keepalive: a probe every ``interval`` s; ``count`` unanswered ones close."""

    interval: int = 5
    count: int = 3


@dataclass(frozen=True)
class HostCapacity:
    """What a hypervisor host has, as libvirt reports it."""

    cpus: int
    memory_mib: int
    free_memory_mib: int


@dataclass(frozen=True)
class ConnectionStatus:
    """Whether the hypervisor can be reached, since when, and why not."""

    uri: str
    connected: bool
    since: float  #: wall-clock time of the last change
    message: str = ""
    reconnects: int = 0  #: successful reconnections since the first connect

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "connected": self.connected, "since": self.since,
                "message": self.message, "reconnects": self.reconnects}


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "connection error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "the daemon closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
}

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


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return conn.isAlive() == 1
    except libvirt.libvirtError:
        return False


def _dispose(conn: libvirt.virConnect, callback_id: int | None) -> None:
    """Worker thread: let go of a connection (alive or not) and its callbacks."""
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    if callback_id is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback_id)
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


class Hypervisor:
    """One libvirt connection (``qemu:///system``, ``test:///default``, ``qemu+ssh://…``)."""

    def __init__(self, uri: str, reactor: IReactorThreads | None = None, *,
                 backoff: Backoff = Backoff(), keepalive: Keepalive = Keepalive(),
                 clock: IReactorTime | None = None,
                 opener: Callable[[str], libvirt.virConnect] = libvirt.open):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.uri = uri
        self.backoff, self.keepalive = backoff, keepalive
        self._reactor = reactor
        self._clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self._open = opener
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"libvirt {uri}")
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._listeners: list[EventListener] = []
        self._reconnect_listeners: list[ReconnectListener] = []
        self._waiters: list[defer.Deferred] = []
        self._retry: IDelayedCall | None = None
        self._closing = False
        self._ever_connected = False
        self._lost_because = ""
        self._status = ConnectionStatus(uri, False, time.time(), "not connected yet")
        self._shutdown_trigger = None

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        def guarded() -> Any:
            try:
                return fn(*args)
            except libvirt.libvirtError as err:
                conn = self._conn
                if conn is not None and not _alive(conn):  # e.g. "client socket is closed"
                    self._reactor.callFromThread(self._connection_lost, conn, _message(err))
                raise HypervisorError(_message(err)) from None

        return threads.deferToThreadPool(self._reactor, self._pool, guarded)

    def run(self, fn: Callable[[libvirt.virConnect], Any]) -> defer.Deferred:
        """Run ``fn(connection)`` on the connection's worker thread (libvirt calls of other
        modules, e.g. ``vmm.volumes``); fires with its result."""
        return self._call(lambda: fn(self.connection))

    def capacity(self) -> defer.Deferred:
        """Fires with the host's :class:`HostCapacity`."""

        def capacity() -> HostCapacity:
            info = self.connection.getInfo()
            try:
                free = self.connection.getFreeMemory() >> 20
            except libvirt.libvirtError:  # e.g. the test driver
                free = info[1]
            return HostCapacity(cpus=info[2], memory_mib=info[1], free_memory_mib=free)

        return self._call(capacity)

    @property
    def connection(self) -> libvirt.virConnect:
        if self._conn is None:
            raise HypervisorError(f"not connected to {self.uri}: {self._status.message}")
        return self._conn

    @property
    def connected(self) -> bool:
        return self._status.connected

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    def wait_connected(self, timeout: float) -> defer.Deferred:
        """Fires once connected (at once if so); fails with a :class:`HypervisorError`
        when the connection is not back within ``timeout`` seconds."""
        if self.connected:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)

        def timed_out(failure):
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if failure.check(defer.TimeoutError):
                raise HypervisorError(f"not connected to {self.uri} for {timeout:g} s: "
                                      f"{self._status.message}")
            return failure

        waiter.addTimeout(max(0.0, timeout), self._clock)
        return waiter.addErrback(timed_out)

    def add_reconnect_listener(self, listener: ReconnectListener) -> None:
        """``listener()`` runs on the reactor thread after each successful reconnection."""
        self._reconnect_listeners.append(listener)

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

    def dispatch(self, event: DomainEvent) -> None:
        """Hand ``event`` to every listener (reactor thread)."""
        self._dispatch(event)

    def _dispatch(self, event: DomainEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("domain event listener failed on %s", event)

    # -- connection ----------------------------------------------------------------------
    def connect(self) -> defer.Deferred:
        """Open the connection and subscribe to lifecycle events; it is reopened by itself
        when it is lost later."""
        _ensure_event_loop()
        if not self._pool.started:
            self._pool.start()
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._pool.stop)
        self._closing = False
        return self._call(self._open_connection).addCallback(self._connected)

    def _open_connection(self) -> tuple[libvirt.virConnect, int]:
        """Worker thread: open, arm keepalive and the close callback, subscribe to events."""
        conn = self._open(self.uri)
        # local drivers (test:///) have no keepalive: there is no daemon to lose
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(self.keepalive.interval, self.keepalive.count)
        conn.registerCloseCallback(self._on_close, None)
        callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
        return conn, callback_id

    def _connected(self, opened: tuple[libvirt.virConnect, int]) -> None:
        conn, callback_id = opened
        if self._closing:  # closed while it was opening
            self._pool.callInThread(_dispose, conn, callback_id)
            return
        self._conn, self._callback_id = conn, callback_id
        reconnects = self._status.reconnects + self._ever_connected
        self._ever_connected = True
        self._status = ConnectionStatus(self.uri, True, time.time(), "", reconnects)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque) -> None:
        """Called in the libvirt event thread when the connection is lost."""
        why = _CLOSE_REASONS.get(reason, f"closed ({reason})")
        self._reactor.callFromThread(self._connection_lost, conn, why)

    def _connection_lost(self, conn: libvirt.virConnect, why: str) -> None:
        if conn is not self._conn or self._closing:
            return  # an old connection, or our own close
        log.warning("lost the connection to %s (%s): reconnecting", self.uri, why)
        callback_id, self._conn, self._callback_id = self._callback_id, None, None
        self._lost_because = f"connection lost: {why}"
        self._status = ConnectionStatus(self.uri, False, time.time(), self._lost_because,
                                        self._status.reconnects)
        self._pool.callInThread(_dispose, conn, callback_id)
        self._schedule_reconnect(self.backoff.initial)

    def _schedule_reconnect(self, delay: float) -> None:
        if not self._closing:
            self._retry = self._clock.callLater(delay, self._reconnect, delay)

    def _reconnect(self, delay: float) -> None:
        self._retry = None

        def failed(failure) -> None:
            failure.trap(HypervisorError)
            following = self.backoff.after(delay)
            self._status = ConnectionStatus(
                self.uri, False, self._status.since,
                f"{self._lost_because}; reconnecting (next attempt in {following:g} s): "
                f"{failure.value}",
                self._status.reconnects)
            log.info("reconnecting to %s failed: %s; next attempt in %g s", self.uri,
                     failure.value, following)
            self._schedule_reconnect(following)

        def succeeded(_ignored) -> defer.Deferred | None:
            if not self.connected:
                return None
            log.info("reconnected to %s", self.uri)
            return defer.DeferredList([defer.maybeDeferred(listener)
                                       for listener in list(self._reconnect_listeners)])

        d = self._call(self._open_connection).addCallback(self._connected)
        d.addCallbacks(succeeded, failed)
        d.addErrback(lambda f: log.error("after reconnecting to %s: %s", self.uri,
                                         f.getTraceback()))

    def close(self) -> defer.Deferred:
        self._closing = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(HypervisorError(f"the connection to {self.uri} was closed"))
        conn, callback_id, self._conn, self._callback_id = (self._conn, self._callback_id,
                                                            None, None)
        self._status = ConnectionStatus(self.uri, False, time.time(), "closed",
                                        self._status.reconnects)

        def close_connection() -> None:
            if conn is not None:
                _dispose(conn, callback_id)

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

    def destroy(self, name: str, *, missing_ok: bool = True,
                site: str | None = None) -> defer.Deferred:
        """Stop the domain at once; a domain that is already gone is not an error.

        With ``site``, only a domain whose gridvm metadata names that site is destroyed;
        any other fails with :class:`ForeignDomain` and is left alone."""

        def destroy() -> bool:
            try:
                dom = self._lookup(name)
                if site is not None:
                    meta = DomainConfig.from_xml(dom.XMLDesc(0)).metadata
                    owner = meta.site if meta is not None else ""
                    if owner != site:
                        raise ForeignDomain(f"domain {name} belongs to site "
                                            f"{owner or '(none recorded)'}, not {site}")
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
