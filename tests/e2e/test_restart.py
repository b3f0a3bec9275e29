"""Restart safety: stop the server while a VM runs a job, start it again, nothing is lost."""

import shutil
import subprocess
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from base.db import make_engine, sqlite_url
from image_repo.repository import ImageRepository
from target_system.instance import SiteCredentials
from target_system.jobfiles import JobFiles
from target_system.lifecycle import InstanceState, JobState
from target_system.store import StateStore
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, make_factory, register_built
from tests.e2e.test_jobs import finished, wait_state
from tsf.factory import NotFound
from tsf.pools import PoolSpec
from vmm.hypervisor import Hypervisor
from vmm.manager import VirtualMachineManager

pytestmark = pytest.mark.vm


class Server:
    """One 'server process': its own vmm, repository, store and factory over shared state."""

    def __init__(self, root, prefix):
        self.root, self.prefix = root, prefix

    async def start(self, built_images=None):
        self.vmm = VirtualMachineManager(Hypervisor("qemu:///system", reactor),
                                         self.root / "vmm", reactor=reactor, prefix=self.prefix)
        adopted = await self.vmm.start()
        url = sqlite_url(self.root / "gridvm.sqlite")
        self.repository = ImageRepository(make_engine(url), self.root / "store")
        for built in (built_images or {}).values():
            register_built(self.repository, built)
        self.store = StateStore(make_engine(url), reactor)
        credentials = SiteCredentials.load_or_create(self.root / "ca")
        self.factory = make_factory(self.vmm, self.root, self.repository, credentials,
                                    store=self.store)
        self.recovered = await self.factory.recover(adopted)
        return self.factory

    async def stop(self):
        """Like a process exit: connections drop, VMs keep running."""
        await self.factory.detach()
        await self.vmm.hypervisor.close()
        self.repository.close()


@pytest_twisted.async_yield_fixture
async def servers(built_images):
    root = TEST_ROOT / f"restart-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    prefix = f"gridvm-test-{root.name}-"
    started = []

    async def start(first=False):
        server = Server(root, prefix)
        await server.start(built_images if first else None)
        started.append(server)
        return server

    try:
        yield start
    finally:
        last = started[-1]
        for target in list(last.factory.instances.values()):
            await target.terminate("test over")
        for name, _config, _state in await last.vmm.hypervisor.list_domains(prefix):
            await last.vmm.hypervisor.destroy(name)
        await last.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_job_survives_a_server_restart(servers):
    first = await servers(first=True)
    job = first.factory.submit({"Executable": "sh", "Arguments": ["-c", "sleep 8; echo done"],
                                "Resources": {"Image": "gridvm-debian12-initramfs"}}, ALICE)
    await wait_state(job, {JobState.RUNNING})
    instance_id = job.instance_id
    await first.stop()

    second = await servers()
    assert second.recovered == {"instances": 1, "reconnected": 1, "jobs": 1, "resumed": 1,
                                "finished": 0, "awaiting": 0}
    again = second.factory.job(job.job_id, ALICE)
    assert again is not job and again.state is JobState.RUNNING
    await finished(second.factory, again)
    assert again.state is JobState.SUCCESSFUL, again.log
    assert (again.storage / "stdout").read_text() == "done\n"
    assert any("resumed after a server restart" in line for line in again.log)
    target = second.factory.instance(instance_id, ALICE)
    assert target.state is InstanceState.READY
    # A new job of the same owner runs on the instance taken back, without a boot.
    more = second.factory.submit({"Executable": "/bin/echo", "Arguments": ["more"],
                                  "Resources": {"Image": "gridvm-debian12-initramfs"}}, ALICE)
    await finished(second.factory, more)
    assert more.state is JobState.SUCCESSFUL, more.log
    assert more.instance_id == instance_id and len(second.factory.instances) == 1
    # The history from before the restart is kept: phase timings cover the whole life.
    assert {"STAGING", "BOOTING", "CONNECTING"} <= set(target.lifecycle.phase_seconds())

    # A finished job stays (record and files) across the next restart, until deleted.
    await second.stop()
    third = await servers()
    assert third.recovered["finished"] == 2 and third.recovered["jobs"] == 0
    kept = third.factory.job(job.job_id, ALICE)
    assert kept.state is JobState.SUCCESSFUL and kept.exit_code == 0
    assert await third.factory.wait(job.job_id, ALICE) is kept
    assert (kept.storage / "stdout").read_text() == "done\n"
    await third.factory.delete(job.job_id, ALICE)
    await third.stop()
    fourth = await servers()
    assert fourth.recovered["finished"] == 1  # the other job
    with pytest.raises(NotFound):
        fourth.factory.job(job.job_id, ALICE)


@pytest_twisted.ensureDeferred
async def test_domain_that_vanished_while_down_fails_instance_and_jobs(servers):
    first = await servers(first=True)
    job = first.factory.submit({"Executable": "sleep", "Arguments": ["60"],
                                "Resources": {"Image": "gridvm-debian12-initramfs"}}, ALICE)
    await wait_state(job, {JobState.RUNNING})
    domain = first.factory.instance(job.instance_id, ALICE).vm.domain
    await first.stop()
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", domain], check=True,
                   capture_output=True)

    second = await servers()
    target = second.factory.instance(job.instance_id, ALICE)
    assert target.state is InstanceState.FAILED
    assert target.lifecycle.reason == "GUEST_CRASHED"
    again = second.factory.job(job.job_id, ALICE)
    assert again.state is JobState.FAILED and again.lifecycle.reason == "GUEST_CRASHED"
    assert not second.vmm.instance_dir(job.instance_id).exists()


@pytest_twisted.ensureDeferred
async def test_inputs_uploaded_before_the_start_survive_a_server_restart(servers):
    first = await servers(first=True)
    job = first.factory.submit({"Executable": "sh", "Arguments": ["-c", "cat data/in.txt"],
                                "haveClientStageIn": True,
                                "Resources": {"Image": "gridvm-debian12-initramfs"}}, ALICE)
    uploads = JobFiles(job, lambda _id: None).store()
    await uploads.write("data/in.txt", b"uploaded before the restart\n")
    await first.stop()

    second = await servers()
    assert second.recovered["jobs"] == 1 and second.recovered["resumed"] == 0
    again = second.factory.job(job.job_id, ALICE)
    assert again.state is JobState.READY
    listing = await JobFiles(again, lambda _id: None).store().listdir("data")
    assert [entry.path for entry in listing] == ["data/in.txt"]
    second.factory.start(job.job_id, ALICE)
    await finished(second.factory, again)
    assert again.state is JobState.SUCCESSFUL, again.log
    assert (again.storage / "stdout").read_text() == "uploaded before the restart\n"


@pytest_twisted.ensureDeferred
async def test_a_warm_pool_instance_waits_on_across_a_restart(servers):
    first = await servers(first=True)
    spec = PoolSpec("demo", "gridvm-debian12-initramfs", idle=1, vos=("demo",))
    first.factory.pools = {"demo": spec}
    first.factory.pool_interval = 0.5
    first.factory.startService()
    for _ in range(900):
        waiting = [t for t in first.factory.instances.values()
                   if t.owner == "pool:demo" and t.state is InstanceState.READY]
        if waiting:
            break
        await task.deferLater(reactor, 0.2, lambda: None)
    [warm] = waiting
    first.factory.keep_on_stop = True  # as gridvm serve: the VMs go on without the server
    await first.factory.stopService()  # stops the pool loop, detaches
    await first.vmm.hypervisor.close()
    first.repository.close()

    second = await servers()
    assert second.recovered["instances"] == 1 and second.recovered["reconnected"] == 1
    again = second.factory.instances[warm.instance_id]
    assert again.owner == "pool:demo" and again.keep_idle  # still the pool's, never idled out
    second.factory.pools = {"demo": spec}
    job = second.factory.submit({"Executable": "/bin/echo", "Arguments": ["after restart"],
                                 "Resources": {"Image": "gridvm-debian12-initramfs"}}, ALICE)
    await finished(second.factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert job.instance_id == warm.instance_id and again.owner == "alice"
