"""The libvirt daemon restarts under a running site: the site reconnects and goes on.

A private daemon (tests/e2e/private_libvirtd.py) is killed while the site runs an
instance: the site's health says it is disconnected, a terminate waits instead of
declaring a still-running VM TERMINATED, and a new job's boot waits; once the daemon is
back the site reconnects, the instance's domain really goes and the job runs in a VM
booted through the restarted daemon (its TSI callback relay and networking included).
"""

import shutil
import subprocess
import time
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from target_system.lifecycle import InstanceState, JobState
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, BOB
from tests.e2e.private_libvirtd import PrivateLibvirtd, Unavailable
from tests.e2e.test_jobs import INITRAMFS, finished, wait_state
from tests.tsf.rest.conftest import Http, register_images, site_config, write_users
from tsf.service import start_site
from vmm.hypervisor import DomainState

pytestmark = pytest.mark.vm


@pytest.fixture
def private_libvirtd():
    daemon = PrivateLibvirtd(TEST_ROOT / f"libvirtd-{uuid.uuid4().hex[:8]}")
    try:
        daemon.prepare()
        seconds = daemon.start()
    except (Unavailable, subprocess.SubprocessError) as err:
        daemon.close()
        pytest.skip(f"no private libvirtd on this host: {err}")
    print(f"private libvirtd answered {seconds:.2f} s after its start")
    try:
        yield daemon
    finally:
        daemon.close()


async def until(predicate, what: str, timeout: float = 60.0) -> float:
    """Poll ``predicate`` (maybe async); returns the seconds it took."""
    started = time.monotonic()
    while True:
        result = predicate()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await task.deferLater(reactor, 0.1, lambda: None)


def qemu_runs(domain: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"guest={domain},"], capture_output=True).returncode == 0


@pytest_twisted.ensureDeferred
async def test_site_reconnects_after_libvirtd_restarts(private_libvirtd, built_images):
    daemon = private_libvirtd
    root = TEST_ROOT / f"lvrestart-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    site = await start_site(site_config(root, site={"libvirt_uri": daemon.uri}), reactor)
    http = Http(site.http_base)

    async def hypervisor_health() -> dict:
        doc = (await http("GET", user=None)).json()
        return doc["server"]["gridvm"]["hypervisor"]

    try:
        await threads.deferToThread(register_images, site.repository, built_images)
        factory = site.factory
        factory.runner.poll_interval = 0.5
        assert (await hypervisor_health())["connected"] is True

        first = factory.submit({"Executable": "echo", "Arguments": ["before"],
                                "Resources": INITRAMFS}, ALICE)
        await finished(factory, first)
        assert first.state is JobState.SUCCESSFUL, first.log
        old = factory.instance(first.instance_id, ALICE)
        assert old.state is InstanceState.READY and qemu_runs(old.vm.domain)

        await threads.deferToThread(daemon.kill)
        await until(lambda: not site.vmm.hypervisor.connected, "the site noticed the loss",
                    timeout=20)
        health = await hypervisor_health()
        assert health["connected"] is False and "connection lost" in health["message"]
        assert qemu_runs(old.vm.domain)  # the daemon went, its VMs did not

        ending = factory.end_instance(old.instance_id, ALICE)
        second = factory.submit({"Executable": "/bin/sh",
                                 "Arguments": ["-c", "echo after; cat /proc/uptime"],
                                 "Resources": INITRAMFS}, BOB)  # a new VM: another owner
        await task.deferLater(reactor, 3, lambda: None)
        assert not ending.called and old.state is InstanceState.DRAINING
        assert qemu_runs(old.vm.domain)
        assert not second.state.terminal, second.log

        restarted = await threads.deferToThread(daemon.start)
        back = await until(lambda: site.vmm.hypervisor.connected, "the site reconnected",
                           timeout=30)
        print(f"libvirtd answered {restarted:.2f} s after its restart; the site reconnected "
              f"{back:.2f} s later")
        health = await hypervisor_health()
        assert health["connected"] is True and health["reconnects"] == 1

        await ending.addTimeout(90, reactor)
        assert old.state is InstanceState.TERMINATED, old.lifecycle.message
        assert await site.vmm.state(old.instance_id) == DomainState.GONE
        await until(lambda: not qemu_runs(old.vm.domain), "its QEMU exited", timeout=10)

        await finished(factory, second, BOB)
        assert second.state is JobState.SUCCESSFUL, second.log
        assert (second.storage / "stdout").read_text().startswith("after\n")
        assert second.instance_id != old.instance_id
        new = factory.instance(second.instance_id, BOB)
        assert await site.vmm.state(new.instance_id) == DomainState.RUNNING
        await wait_state(second, {JobState.SUCCESSFUL})
    finally:
        await site.stopService()
        shutil.rmtree(root, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_site_starts_while_its_libvirtd_is_down_and_joins_it(private_libvirtd,
                                                                      built_images):
    """A one-host site whose libvirtd does not answer at the start serves anyway: its host
    is DOWN saying why, a job fails NO_HOST_FITS naming it; once the daemon answers the site
    connects by itself and jobs run."""
    daemon = private_libvirtd
    await threads.deferToThread(daemon.kill)
    root = TEST_ROOT / f"lvdown-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    site = await start_site(site_config(root, site={"libvirt_uri": daemon.uri}), reactor)
    http = Http(site.http_base)
    try:
        await threads.deferToThread(register_images, site.repository, built_images)
        factory = site.factory
        factory.runner.poll_interval = 0.5
        health = (await http("GET", user=None)).json()["server"]["gridvm"]["hypervisor"]
        assert health["connected"] is False, health
        [host] = (await http("GET", "hosts", user="root")).json()["hosts"]
        assert host["state"] == "DOWN" and "not reachable at start" in host["message"], host
        refused = factory.submit({"Executable": "echo", "Arguments": ["too early"],
                                  "Resources": INITRAMFS}, ALICE)
        await finished(factory, refused)
        assert refused.state is JobState.FAILED and refused.lifecycle.reason == "NO_HOST_FITS"
        assert "DOWN" in refused.lifecycle.message, refused.lifecycle.message

        await threads.deferToThread(daemon.start)
        await until(lambda: site.vmm.hypervisor.connected, "the site connected", timeout=30)
        [host] = (await http("GET", "hosts", user="root")).json()["hosts"]
        assert host["state"] == "UP", host
        job = factory.submit({"Executable": "echo", "Arguments": ["now"],
                              "Resources": INITRAMFS}, ALICE)
        await finished(factory, job)
        assert job.state is JobState.SUCCESSFUL, job.log
        assert (job.storage / "stdout").read_text() == "now\n"
    finally:
        await site.stopService()
        shutil.rmtree(root, ignore_errors=True)
