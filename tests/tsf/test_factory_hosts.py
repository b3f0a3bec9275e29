"""The factory on several hypervisor hosts, over the fakes: a job no host takes fails with
every host's reason, a job whose instance is lost with its host before it started is placed
again on another host, a restored instance learns its host, and one whose host is
unreachable at the start waits for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import defer

from base.reasons import Reason
from target_system.instance import ImageToBoot, SiteCredentials, TargetSystem
from target_system.lifecycle import InstanceState, JobState
from tests.tsf.test_factory_unit import ALICE, BOB, JOB, Site
from tsf.factory import Quotas
from vmm.errors import VMMError
from vmm.hosts import HostState, HostView
from vmm.manager import Instance


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> SiteCredentials:
    return SiteCredentials.load_or_create(tmp_path_factory.mktemp("ca"))


@dataclass
class FakeHosts:
    """Two hosts whose states a test sets; instances are where the factory put them."""

    states: dict[str, HostState] = field(
        default_factory=lambda: {"a": HostState.UP, "b": HostState.UP})

    def views(self) -> list[HostView]:
        return [HostView(name, state, 4, 4096, 4096, address="127.0.0.1")
                for name, state in self.states.items()]

    def host_of(self, instance_id: str) -> str:
        return ""


def site_on(tmp_path, credentials, hosts: FakeHosts) -> Site:
    return Site(tmp_path, credentials, Quotas(per_user=4, total=4), hosts=hosts)


@pytest_twisted.ensureDeferred
async def test_jobs_are_spread_over_the_hosts(tmp_path, credentials):
    site = site_on(tmp_path, credentials, FakeHosts())
    first, second = site.factory.submit(JOB, ALICE), site.factory.submit(JOB, BOB)
    for job in (first, second):
        await site.finished(job)
        assert job.state is JobState.SUCCESSFUL, job.log
    hosts = {site.factory.instances[j.instance_id].host for j in (first, second)}
    assert hosts == {"a", "b"}
    assert site.factory.registry.host_usage().keys() == {"a", "b"}


@pytest_twisted.ensureDeferred
async def test_a_job_no_host_takes_fails_with_every_hosts_reason(tmp_path, credentials):
    hosts = FakeHosts({"a": HostState.DRAINING, "b": HostState.DOWN})
    site = site_on(tmp_path, credentials, hosts)
    job = await site.finished(site.factory.submit(JOB, ALICE))
    assert job.state is JobState.FAILED and job.lifecycle.reason == Reason.NO_HOST_FITS
    assert job.lifecycle.message == ("no hypervisor host can take the instance: a is DRAINING; "
                                     "b is DOWN")
    assert not site.vms.specs  # nothing was booted


@pytest_twisted.ensureDeferred
async def test_a_job_whose_host_is_lost_before_it_starts_is_placed_again(tmp_path, credentials):
    hosts = FakeHosts()
    site = site_on(tmp_path, credentials, hosts)
    site.vms.boot_seconds = 5.0
    job = site.factory.submit(JOB, ALICE)
    await site.run_until(lambda: len(site.vms.specs) == 1)
    lost = site.factory.instances[job.instance_id]
    assert lost.host == "a" and site.vms.specs[0].host == "a"
    hosts.states["a"] = HostState.DOWN
    site.vms.lose_host(lost.instance_id, "its host a is unreachable for 60 s")
    await site.finished(job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert lost.state is InstanceState.FAILED and lost.lifecycle.reason == Reason.HOST_LOST
    again = site.factory.instances[job.instance_id]
    assert again is not lost and again.host == "b" and site.vms.specs[1].host == "b"
    assert any("lost with its host before the job started" in line for line in job.log)


@pytest_twisted.ensureDeferred
async def test_a_running_job_fails_host_lost_with_its_instance(tmp_path, credentials):
    site = site_on(tmp_path, credentials, FakeHosts())
    site.network.job_seconds = 600
    job = site.factory.submit(JOB, ALICE)
    target = await site.running(job)
    site.vms.lose_host(target.instance_id, "its host a is unreachable for 60 s")
    await site.finished(job)
    assert job.state is JobState.FAILED and job.lifecycle.reason == Reason.HOST_LOST
    assert "its host a is unreachable" in job.lifecycle.message


def restored(site: Site, vm) -> TargetSystem:
    row = {"id": "abc123def456", "owner": "alice", "vcpus": 1, "memory_mib": 256,
           "instance_cert": "", "state": "READY", "history": [], "reason": None,
           "message": ""}
    image = ImageToBoot(site.image.id, site.image.name, None, {})
    return TargetSystem.restore(row, image, vm, vmm=site.vms,
                                credentials=site.factory.registry.credentials,
                                reactor=site.clock)


class Located(FakeHosts):
    def host_of(self, instance_id: str) -> str:
        return "b"


def test_a_restored_instance_gets_its_host_or_is_lost_with_a_down_one(tmp_path, credentials):
    hosts = Located({"a": HostState.DOWN, "b": HostState.UP})
    site = site_on(tmp_path, credentials, hosts)
    vm = Instance("abc123def456", "gridvm-abc123def456", 40001, 40002, tmp_path,
                  address="127.0.0.2")
    found = restored(site, vm)
    site.factory.registry.locate(found)
    assert (found.host, found.address, found.state) == ("b", "127.0.0.2", InstanceState.READY)
    missing = restored(site, None)
    site.factory.registry.locate(missing)
    assert missing.state is InstanceState.FAILED
    assert missing.lifecycle.reason == Reason.HOST_LOST
    assert missing.lifecycle.message == "its VM is on no reachable host (DOWN: a)"
    hosts.states["a"] = HostState.UP  # every host reachable: vanished, as before
    gone = restored(site, None)
    site.factory.registry.locate(gone)
    assert gone.state is InstanceState.READY


class Awaiting(FakeHosts):
    """Hosts after a restart: what each awaited instance's host will answer."""

    def __init__(self, states):
        super().__init__(states)
        self.awaited: dict[str, defer.Deferred] = {}

    def await_instance(self, instance_id: str, host_name: str) -> defer.Deferred:
        assert host_name == "a"
        self.awaited[instance_id] = defer.Deferred()
        return self.awaited[instance_id]


def restored_on(site: Site, host: str) -> TargetSystem:
    issued = site.factory.registry.credentials.ca.issue_instance("abc123def456")
    row = {"id": "abc123def456", "owner": "alice", "vcpus": 1, "memory_mib": 256,
           "instance_cert": issued.cert_pem.decode(), "state": "BUSY", "history": [],
           "reason": None, "message": "", "host": host}
    image = ImageToBoot(site.image.id, site.image.name, None, {})
    return TargetSystem.restore(row, image, None, vmm=site.vms,
                                credentials=site.factory.registry.credentials,
                                reactor=site.clock, tsi_connector=site.network)


@pytest_twisted.ensureDeferred
async def test_an_instance_whose_host_is_unreachable_at_the_start_waits_for_it(
        tmp_path, credentials):
    hosts = Awaiting({"a": HostState.DOWN, "b": HostState.UP})
    site = site_on(tmp_path, credentials, hosts)
    registry = site.factory.registry
    waiting = restored_on(site, "a")
    assert registry.locate(waiting) is True
    registry.add(waiting)
    assert (waiting.host, waiting.awaiting_host, waiting.state) == ("a", "a", InstanceState.BUSY)
    assert not waiting.usable and waiting.describe()["awaitingHost"] is True
    # a new job of alice's does not take the instance that waits for its host
    job = await site.finished(site.factory.submit(JOB, ALICE))
    assert job.state is JobState.SUCCESSFUL and job.instance_id != waiting.instance_id
    assert site.factory.instances[job.instance_id].host == "b"

    back = defer.ensureDeferred(registry.await_host(waiting))
    vm = Instance(waiting.instance_id, "gridvm-abc123def456", 40011, 40012, tmp_path,
                  address="127.0.0.1")
    site.network.plug(vm.host_port)
    hosts.awaited[waiting.instance_id].callback(vm)
    await site.run_until(lambda: back.called)
    assert back.result is True
    assert waiting.usable and waiting.vm is vm and not waiting.awaiting_host


@pytest_twisted.ensureDeferred
async def test_an_instance_whose_host_stays_unreachable_is_lost_with_it(tmp_path, credentials):
    hosts = Awaiting({"a": HostState.DOWN, "b": HostState.UP})
    site = site_on(tmp_path, credentials, hosts)
    registry = site.factory.registry
    waiting = restored_on(site, "a")
    assert registry.locate(waiting)
    registry.add(waiting)
    lost = defer.ensureDeferred(registry.await_host(waiting))
    hosts.awaited[waiting.instance_id].errback(
        VMMError("its host a is unreachable for 60 s since the start", reason=Reason.HOST_LOST))
    await site.run_until(lambda: lost.called)
    assert lost.result is False
    assert waiting.state is InstanceState.FAILED and waiting.lifecycle.reason == Reason.HOST_LOST
    assert waiting.lifecycle.message == ("after the restart: its host a is unreachable for 60 s "
                                         "since the start")
    # an instance whose recorded host is up but has no VM of it vanished, as before
    hosts.states["a"] = HostState.UP
    hosts.states["b"] = HostState.DOWN
    vanished = restored_on(site, "a")
    assert registry.locate(vanished) is False and vanished.usable
