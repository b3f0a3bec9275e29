"""The host pool on libvirt's test driver (one fresh driver per host), its watch on a
``task.Clock``: hosts UP, DRAINING and DOWN, a host lost past its grace period, one that
cannot be reached at the start; the real second host is tests/e2e/test_hosts.py."""

import uuid

import libvirt
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from base.reasons import Reason
from tests.vmm.conftest import NODE
from tests.vmm.test_hypervisor import config, wait_for
from tests.vmm.test_reconnect import FlakyOpener, lose
from vmm.errors import VMMError
from vmm.hosts import Host, HostPool, HostSpec, HostState, UnknownHost
from vmm.hypervisor import Hypervisor
from vmm.manager import VirtualMachineManager


def make_hosts(tmp_path, names=("a", "b"), openers=None) -> list[Host]:
    hosts, site_id = [], uuid.uuid4().hex
    for name in names:
        node = tmp_path / f"node-{name}.xml"
        node.write_text(NODE)
        uri = f"test://{node}"
        opener = (openers or {}).get(name, libvirt.open)
        manager = VirtualMachineManager(Hypervisor(uri, reactor, opener=opener),
                                        tmp_path / name, reactor=reactor, site_id=site_id)
        hosts.append(Host(HostSpec(name, uri), manager))
    return hosts


async def with_domain(host: Host) -> str:
    """A domain of this site on ``host``, adopted: its instance id."""
    instance_id = uuid.uuid4().hex[:12]
    await host.vmm.hypervisor.create(config(host.vmm.domain_name(instance_id), instance_id,
                                            site=host.vmm.site_id))
    await host.vmm.adopt()
    return instance_id


@pytest_twisted.async_yield_fixture
async def pool(tmp_path):
    """(pool of hosts a and b, the clock of its watch, the opener of a)."""
    clock, opener = task.Clock(), FlakyOpener()
    hosts = make_hosts(tmp_path, openers={"a": opener})
    pool = HostPool(hosts, clock, grace=10, drained_file=tmp_path / "drained.json")
    await pool.start()
    try:
        yield pool, clock, opener
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_hosts_report_capacity_and_drain_is_kept(pool, tmp_path):
    hosts, _clock, _opener = pool
    views = {v.name: v for v in hosts.views()}
    assert [v.state for v in views.values()] == [HostState.UP, HostState.UP]
    assert views["a"].cpus > 0 and views["a"].memory_mib > 0  # from the test driver's node
    assert hosts.drain("b").state is HostState.DRAINING
    assert (tmp_path / "drained.json").read_text() == '["b"]'
    again = HostPool(make_hosts(tmp_path), reactor, drained_file=tmp_path / "drained.json")
    assert again.hosts["b"].state is HostState.DRAINING or not again.hosts["b"].started
    assert again.hosts["b"].drained and not again.hosts["a"].drained
    assert hosts.enable("b").state is HostState.UP
    with pytest.raises(UnknownHost) as err:
        hosts.drain("nosuch")
    assert err.value.reason == Reason.NOT_FOUND and "hosts: a, b" in str(err.value)


@pytest_twisted.ensureDeferred
async def test_a_host_lost_past_its_grace_period_loses_its_instances_only(pool):
    hosts, clock, opener = pool
    a, b = hosts.hosts["a"], hosts.hosts["b"]
    on_a, on_b = await with_domain(a), await with_domain(b)
    await hosts.adopt()
    assert (hosts.host_of(on_a), hosts.host_of(on_b)) == ("a", "b")
    seen = {on_a: [], on_b: []}
    for instance_id, events in seen.items():  # stops only: a STARTED event of the domains
        hosts.watch(instance_id,  # just created may arrive after the watch began
                    lambda event, events=events: event.stopped and events.append(event))

    opener.down = True  # it does not come back
    lose(a.vmm.hypervisor)
    await wait_for(lambda: not a.vmm.hypervisor.connected)
    clock.pump([1] * 10)  # noticed at the first check, then within the grace period
    assert a.state is HostState.UP and not seen[on_a]
    clock.pump([1] * 1)
    assert a.state is HostState.DOWN and b.state is HostState.UP
    assert [e.host_lost for e in seen[on_a]] == [
        f"its host a is unreachable for 10 s: {a.message.split(': ', 1)[1]}"]
    assert seen[on_a][0].domain == a.vmm.domain_name(on_a) and seen[on_a][0].stopped
    assert not seen[on_b]
    view = next(v for v in hosts.views() if v.name == "a")
    assert view.state is HostState.DOWN and "unreachable for 10 s" in view.message
    assert "host a" in hosts.status_message() and not hosts.status().connected


@pytest_twisted.ensureDeferred
async def test_a_host_back_within_its_grace_period_keeps_its_instances(tmp_path):
    clock, opener = task.Clock(), FlakyOpener()
    hosts = HostPool(make_hosts(tmp_path, openers={"a": opener}), clock, grace=10)
    await hosts.start()
    a = hosts.hosts["a"]
    a.vmm.hypervisor._clock = clock  # its reconnection backoff on the test's clock
    try:
        on_a = await with_domain(a)
        await hosts.adopt()
        seen = []
        hosts.watch(on_a, seen.append)
        lose(a.vmm.hypervisor)
        await wait_for(lambda: not a.vmm.hypervisor.connected)
        clock.pump([1] * 5)
        await wait_for(lambda: a.vmm.hypervisor.connected)
        clock.pump([1] * 10)
        assert a.state is HostState.UP and not [e for e in seen if e.host_lost]
        assert hosts.host_of(on_a) == "a"
    finally:
        await hosts.close()


@pytest_twisted.ensureDeferred
async def test_a_host_unreachable_at_the_start_is_down_and_joins_later(tmp_path):
    clock, opener = task.Clock(), FlakyOpener()
    opener.down = True
    hosts = HostPool(make_hosts(tmp_path, openers={"b": opener}), clock, grace=10)
    adopted = await hosts.start()
    try:
        assert adopted == []
        b = hosts.hosts["b"]
        assert b.state is HostState.DOWN and "not reachable at start" in b.message
        with pytest.raises(VMMError) as err:
            await hosts.boot(_spec("b"))
        assert err.value.reason == Reason.HOST_LOST
        opener.down = False
        clock.advance(1)
        await wait_for(lambda: b.state is HostState.UP)
    finally:
        await hosts.close()


@pytest_twisted.ensureDeferred
async def test_a_one_host_site_starts_while_its_libvirtd_is_down_and_joins_it(tmp_path):
    clock, opener = task.Clock(), FlakyOpener()
    opener.down = True
    hosts = HostPool(make_hosts(tmp_path, ("only",), {"only": opener}), clock, grace=None)
    try:
        assert await hosts.start() == []
        only = hosts.hosts["only"]
        assert only.state is HostState.DOWN and "not reachable at start" in only.message
        assert "nosuchdriver" in only.message or "no connection driver" in only.message
        with pytest.raises(VMMError) as err:
            await hosts.boot(_spec("only"))
        assert err.value.reason == Reason.HOST_LOST
        clock.pump([1] * 3600)  # no grace period: tried again, never given up
        await wait_for(lambda: opener.attempts >= 2)
        assert only.state is HostState.DOWN
        opener.down = False

        def joined() -> bool:
            clock.advance(1)  # the next attempt, once the one under way has failed
            return only.state is HostState.UP

        await wait_for(joined)
        assert hosts.status().connected
    finally:
        await hosts.close()


def _spec(host: str):
    from vmm.manager import BootSpec, ImageFile, InstanceSpec

    kernel = ImageFile(path=__file__, sha512="0" * 128)
    return InstanceSpec(boot=BootSpec(kernel=kernel, cmdline=""), host=host)


@pytest_twisted.ensureDeferred
async def test_without_a_grace_period_a_lost_host_is_waited_for(tmp_path):
    clock, opener = task.Clock(), FlakyOpener()
    hosts = HostPool(make_hosts(tmp_path, ("only",), {"only": opener}), clock, grace=None)
    await hosts.start()
    only = hosts.hosts["only"]
    try:
        on_it = await with_domain(only)
        await hosts.adopt()
        seen = []
        hosts.watch(on_it, seen.append)
        opener.down = True
        lose(only.vmm.hypervisor)
        await wait_for(lambda: not only.vmm.hypervisor.connected)
        clock.pump([1] * 3600)
        assert only.state is HostState.UP and not seen
    finally:
        await hosts.close()


def test_a_forward_port_on_another_machines_address_is_drawn_from_the_ephemeral_range(
        monkeypatch):
    import errno
    import socket

    from vmm import ports

    def not_here(_sock, _address):
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    assert ports.free_port("127.0.0.2") > 0  # a loopback address: really free
    monkeypatch.setattr(socket.socket, "bind", not_here)
    low, high = ports.REMOTE_RANGE
    assert all(low <= ports.free_port("10.1.2.3") <= high for _ in range(20))


class ComingBack(FlakyOpener):
    """A host down until ``down`` is cleared, then back with the domains of ``running``
    (the test driver starts empty at every connection: they are created again)."""

    def __init__(self):
        super().__init__()
        self.down = True
        self.running: list = []

    def __call__(self, uri):
        conn = super().__call__(uri)
        for domain in self.running:
            conn.createXML(domain.to_xml(), 0)
        return conn


@pytest_twisted.ensureDeferred
async def test_instances_on_a_host_unreachable_at_the_start_are_awaited(tmp_path):
    clock, opener = task.Clock(), ComingBack()
    hosts = HostPool(make_hosts(tmp_path, openers={"b": opener}), clock, grace=10)
    await hosts.start()
    b = hosts.hosts["b"]
    try:
        back, gone, stopped = (uuid.uuid4().hex[:12] for _ in range(3))
        opener.running = [config(b.vmm.domain_name(back), back, site=b.vmm.site_id)]
        found = hosts.await_instance(back, "b")
        missing = hosts.await_instance(gone, "b")
        outcomes: dict[str, object] = {}
        for name, waiting in (("back", found), ("gone", missing)):
            waiting.addBoth(lambda result, name=name: outcomes.__setitem__(name, result))
        clock.pump([1] * 5)  # within the grace period: nothing is decided
        assert not outcomes and b.state is HostState.DOWN
        opener.down = False
        clock.advance(1)
        await wait_for(lambda: len(outcomes) == 2)
        assert outcomes["back"].instance_id == back and hosts.host_of(back) == "b"
        assert outcomes["gone"].value.reason == Reason.GUEST_CRASHED
        assert "not on host b when the host came back" in str(outcomes["gone"].value)
        # once the host is there, an instance not found on it is not waited for
        with pytest.raises(VMMError) as err:
            await hosts.await_instance(stopped, "b")
        assert err.value.reason == Reason.GUEST_CRASHED
    finally:
        await hosts.close()


@pytest_twisted.ensureDeferred
async def test_an_awaited_host_past_its_grace_period_loses_the_instance(tmp_path):
    clock, opener = task.Clock(), ComingBack()
    hosts = HostPool(make_hosts(tmp_path, openers={"b": opener}), clock, grace=10)
    await hosts.start()
    try:
        waiting = hosts.await_instance("abc123def456", "b")
        clock.pump([1] * 9)
        assert not waiting.called
        clock.pump([1] * 1)
        with pytest.raises(VMMError) as err:
            await waiting
        assert err.value.reason == Reason.HOST_LOST
        assert str(err.value) == "its host b is unreachable for 10 s since the start"
        cancelled = hosts.await_instance("fedcba654321", "b")
    finally:
        await hosts.close()
    with pytest.raises(defer.CancelledError):  # the site stopped: nothing was decided
        await cancelled
