"""Losing the libvirt connection: reconnect with backoff, re-check, retry destroys.

The loss is what libvirt's close callback reports when the daemon goes away (the real
daemon restart is tests/e2e/test_libvirtd_restart.py); the connection is libvirt's test
driver, and the backoff runs on a ``task.Clock``.
"""

import uuid

import libvirt
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.vmm.test_hypervisor import config, wait_for
from vmm.errors import HypervisorError
from vmm.hypervisor import Backoff, DomainState, Hypervisor, LifecycleEvent
from vmm.manager import VirtualMachineManager


class FlakyOpener:
    """libvirt.open, failing while ``down`` (like a daemon that is not back yet)."""

    def __init__(self):
        self.down = False
        self.attempts = 0

    def __call__(self, uri):
        self.attempts += 1
        if self.down:
            return libvirt.open("nosuchdriver:///down")  # raises a libvirtError
        return libvirt.open(uri)


def lose(hv: Hypervisor) -> None:
    """What the close callback does when the daemon dies (called on libvirt's thread)."""
    hv._on_close(hv.connection, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)


async def settle(hv: Hypervisor, condition) -> None:
    await wait_for(condition)
    await hv._call(lambda: None)  # let the worker thread finish what it was given


@pytest_twisted.ensureDeferred
async def test_lost_connection_reconnects_with_backoff_and_events_again(test_uri):
    clock, opener = task.Clock(), FlakyOpener()
    hv = Hypervisor(test_uri, reactor, clock=clock, opener=opener,
                    backoff=Backoff(initial=0.5, maximum=2.0))
    reconnected, events = [], []
    hv.add_reconnect_listener(lambda: reconnected.append(hv.status))
    hv.add_listener(events.append)
    await hv.connect()
    try:
        assert hv.status.connected and hv.status.reconnects == 0
        opener.down = True
        lose(hv)
        await wait_for(lambda: not hv.connected)
        assert "the daemon closed the connection" in hv.status.message
        with pytest.raises(HypervisorError, match="not connected"):
            await hv.state("gridvm-x")  # fails at once, does not hang
        waiting = hv.wait_connected(30)
        for attempt, delay in enumerate((0.5, 1.0, 2.0, 2.0), start=2):
            clock.advance(delay - 0.01)
            assert opener.attempts == attempt - 1  # not before its time
            clock.advance(0.01)
            await settle(hv, lambda a=attempt: opener.attempts == a and "next attempt" in
                         hv.status.message)
            assert not waiting.called and not hv.connected
        assert "next attempt in 2 s" in hv.status.message
        opener.down = False
        clock.advance(2.0)
        await waiting
        await wait_for(lambda: len(reconnected) == 1)
        assert hv.connected and hv.status.reconnects == 1
        await hv.create(config("gridvm-after"))  # the event callback is registered again
        await wait_for(lambda: any(e.domain == "gridvm-after" for e in events))
        assert [e.event for e in events] == [LifecycleEvent.STARTED]
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_waiting_for_the_connection_ends_at_its_deadline(test_uri):
    clock, opener = task.Clock(), FlakyOpener()
    hv = Hypervisor(test_uri, reactor, clock=clock, opener=opener)
    await hv.connect()
    try:
        opener.down = True
        lose(hv)
        await wait_for(lambda: not hv.connected)
        waiting = hv.wait_connected(5)
        clock.advance(5)
        with pytest.raises(HypervisorError, match=r"not connected to .* for 5 s"):
            await waiting
    finally:
        await hv.close()
    assert hv._retry is None  # closing stops reconnecting


@pytest_twisted.ensureDeferred
async def test_after_reconnecting_a_vanished_domain_is_reported_stopped(tmp_path):
    name_id = uuid.uuid4().hex[:12]
    clock = task.Clock()
    hv = Hypervisor("test:///default", reactor, clock=clock)  # shared: another client sees it
    vmm = VirtualMachineManager(hv, tmp_path / "vmm", reactor=reactor)
    events = []
    hv.add_listener(events.append)
    other = libvirt.open("test:///default")  # keeps the shared driver (and the domain) alive
    await hv.connect()
    try:
        await hv.create(config(vmm.domain_name(name_id), name_id, site=vmm.site_id))
        await vmm.adopt()
        assert name_id in vmm.instances
        lose(hv)
        await wait_for(lambda: not hv.connected)
        other.lookupByName(vmm.domain_name(name_id)).destroy()  # stops while we are away
        await task.deferLater(reactor, 0.1, lambda: None)
        events.clear()  # the test driver delivers events of other connections too
        clock.advance(0.5)
        await wait_for(lambda: any(e.event is LifecycleEvent.STOPPED for e in events))
        stop = next(e for e in events if e.event is LifecycleEvent.STOPPED)
        assert stop.domain == vmm.domain_name(name_id) and stop.unexpected_stop
    finally:
        await hv.close()
        other.close()


@pytest_twisted.ensureDeferred
async def test_destroy_while_disconnected_waits_and_is_done_once_the_domain_is_gone(tmp_path):
    instance_id = uuid.uuid4().hex[:12]
    opener = FlakyOpener()
    hv = Hypervisor("test:///default", reactor, opener=opener)
    vmm = VirtualMachineManager(hv, tmp_path / "vmm", reactor=reactor, destroy_timeout=20)
    other = libvirt.open("test:///default")  # keeps the shared driver alive while we are away
    await hv.connect()
    try:
        name = vmm.domain_name(instance_id)
        await hv.create(config(name, instance_id, site=vmm.site_id))
        opener.down = True
        lose(hv)
        await wait_for(lambda: not hv.connected)
        destroying = vmm.destroy(instance_id)
        await task.deferLater(reactor, 1.0, lambda: None)
        assert not destroying.called  # waits for the connection instead of "succeeding"
        opener.down = False  # the next reconnection attempt succeeds
        await destroying
        assert hv.connected and await hv.state(name) == DomainState.GONE
    finally:
        await hv.close()
        other.close()


@pytest_twisted.ensureDeferred
async def test_a_destroy_that_failed_is_retried_after_reconnecting(tmp_path):
    instance_id = uuid.uuid4().hex[:12]
    opener = FlakyOpener()
    hv = Hypervisor("test:///default", reactor, opener=opener, backoff=Backoff(initial=2))
    vmm = VirtualMachineManager(hv, tmp_path / "vmm", reactor=reactor, destroy_timeout=1)
    other = libvirt.open("test:///default")
    await hv.connect()
    try:
        name = vmm.domain_name(instance_id)
        await hv.create(config(name, instance_id, site=vmm.site_id))
        opener.down = True
        lose(hv)
        await wait_for(lambda: not hv.connected)
        with pytest.raises(HypervisorError, match=r"could not destroy .* within 1 s"):
            await vmm.destroy(instance_id)  # the connection is not back within its deadline
        assert other.lookupByName(name).isActive() == 1  # still running: not "terminated"
        opener.down = False  # the reconnection after 2 s succeeds, and the destroy is retried
        await wait_for(lambda: hv.connected and not vmm._undestroyed, timeout=10)
        assert await hv.state(name) == DomainState.GONE
    finally:
        await hv.close()
        other.close()


@pytest_twisted.ensureDeferred
async def test_close_while_waiting_fails_the_waiters(test_uri):
    hv = Hypervisor(test_uri, reactor, clock=task.Clock(), opener=FlakyOpener())
    await hv.connect()
    lose(hv)
    await wait_for(lambda: not hv.connected)
    waiting = hv.wait_connected(60)
    await hv.close()
    with pytest.raises(HypervisorError, match="closed"):
        await waiting
    assert not hv.connected and hv.status.message == "closed"
    assert isinstance(waiting, defer.Deferred)
