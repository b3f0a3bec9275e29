"""The libvirt wrapper's control flow and events, on libvirt's own test driver."""

import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from vmm.domain import DomainConfig, GridvmMetadata, OSConfig, UserNetConfig
from vmm.errors import HypervisorError
from vmm.hypervisor import DomainState, Hypervisor, LifecycleEvent
from vmm.manager import VirtualMachineManager


def config(name: str, instance_id: str = "", site: str = "") -> DomainConfig:
    return DomainConfig(
        name=name, os=OSConfig(kernel="/k"), network=UserNetConfig(host_port=4000),
        metadata=GridvmMetadata(instance_id=instance_id, site=site, host_port=4000,
                                callback_port=4001, labels={"owner": "alice"})
        if instance_id else None,
    )


async def wait_for(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


@pytest_twisted.ensureDeferred
async def test_create_state_destroy_with_events(test_uri):
    hv = Hypervisor(test_uri, reactor)
    events = []
    threads_seen = set()

    def listener(event):
        threads_seen.add(threading.current_thread().name)
        events.append(event)

    hv.add_listener(listener)
    await hv.connect()
    try:
        name = await hv.create(config("gridvm-a"))
        assert name == "gridvm-a"
        assert await hv.state("gridvm-a") == DomainState.RUNNING
        assert (await hv.xml("gridvm-a")).name == "gridvm-a"
        assert await hv.destroy("gridvm-a") is True
        assert await hv.state("gridvm-a") == DomainState.GONE
        assert await hv.destroy("gridvm-a") is False  # gone already: not an error
        await wait_for(lambda: len(events) >= 2)
        assert [e.event for e in events[:2]] == [LifecycleEvent.STARTED, LifecycleEvent.STOPPED]
        assert all(e.domain == "gridvm-a" for e in events)
        # listeners run on the reactor thread, never on libvirt's
        assert threads_seen == {threading.main_thread().name}
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_define_start_shutdown_undefine(test_uri):
    hv = Hypervisor(test_uri, reactor)
    await hv.connect()
    try:
        await hv.define(config("gridvm-p"))
        assert await hv.state("gridvm-p") == DomainState.SHUTOFF
        await hv.start("gridvm-p")
        assert await hv.state("gridvm-p") == DomainState.RUNNING
        await hv.shutdown("gridvm-p")
        assert await hv.state("gridvm-p") == DomainState.SHUTOFF
        await hv.undefine("gridvm-p")
        assert await hv.state("gridvm-p") == DomainState.GONE
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_errors_carry_libvirts_message(test_uri):
    hv = Hypervisor(test_uri, reactor)
    await hv.connect()
    try:
        await hv.create(config("gridvm-dup"))
        with pytest.raises(HypervisorError) as err:
            await hv.create(config("gridvm-dup"))
        assert err.value.reason == "HYPERVISOR_ERROR"
        assert "gridvm-dup" in str(err.value) and "already" in str(err.value)
        with pytest.raises(HypervisorError, match=r"(?i)domain not found"):
            await hv.start("gridvm-none")
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_unknown_uri_is_a_hypervisor_error():
    hv = Hypervisor("nosuchdriver:///system", reactor)
    with pytest.raises(HypervisorError) as err:
        await hv.connect()
    assert "nosuchdriver" in str(err.value)
    await hv.close()


@pytest_twisted.ensureDeferred
async def test_adoption_finds_gridvm_domains_only(test_uri, tmp_path):
    hv = Hypervisor(test_uri, reactor)
    vmm = VirtualMachineManager(hv, tmp_path / "state", reactor=reactor)
    await hv.connect()
    try:
        await hv.create(config("gridvm-0001", instance_id="0001", site=vmm.site_id))
        await hv.create(config("gridvm-stranger"))  # our prefix, but not our metadata
        await hv.create(config("someone-else", instance_id="x"))
        (tmp_path / "state" / "instances" / "0001").mkdir(parents=True)
        (tmp_path / "state" / "instances" / "dead").mkdir()
        adopted = {a.name: a for a in await vmm.adopt()}
        assert set(adopted) == {"gridvm-0001", "gridvm-stranger"}
        ours = adopted["gridvm-0001"].instance
        assert ours.instance_id == "0001" and ours.host_port == 4000
        assert ours.callback_port == 4001 and ours.labels == {"owner": "alice"}
        assert adopted["gridvm-stranger"].instance is None
        assert set(vmm.instances) == {"0001"}
        assert vmm.remove_stale_directories() == ["dead"]
        assert (tmp_path / "state" / "instances" / "0001").exists()
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_watch_hands_over_one_instances_events_until_unsubscribed(test_uri, tmp_path):
    hv = Hypervisor(test_uri, reactor)
    vmm = VirtualMachineManager(hv, tmp_path / "state", reactor=reactor)
    mine, later = [], []
    unwatch = vmm.watch("0001", mine.append)
    await hv.connect()
    try:
        await hv.create(config("gridvm-0001", instance_id="0001"))
        await hv.create(config("gridvm-0002", instance_id="0002"))  # another instance
        await hv.destroy("gridvm-0001")
        await wait_for(lambda: len(mine) >= 2)
        assert [(e.domain, e.event) for e in mine] == [
            ("gridvm-0001", LifecycleEvent.STARTED), ("gridvm-0001", LifecycleEvent.STOPPED)]
        assert mine[1].stopped and not mine[0].stopped
        unwatch()
        unwatch()  # harmless twice
        vmm.watch("0001", later.append)
        await hv.create(config("gridvm-0001", instance_id="0001"))
        await wait_for(lambda: later)
        assert len(mine) == 2
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_calls_are_serialised_off_the_reactor(test_uri):
    hv = Hypervisor(test_uri, reactor)
    await hv.connect()
    try:
        names = await defer.gatherResults(
            [hv.create(config(f"gridvm-{i}")) for i in range(8)], consumeErrors=True)
        assert sorted(names) == sorted(f"gridvm-{i}" for i in range(8))
        listed = await hv.list_domains("gridvm-")
        assert len(listed) == 8 and all(s == DomainState.RUNNING for _, _, s in listed)
    finally:
        await hv.close()
