"""A site with two real hypervisor hosts: the system libvirtd, and the second host that
scripts/setup-second-host.sh makes (a session libvirtd of its own user, reached over ssh on
127.0.0.2, its images and media uploaded as volumes through libvirt alone).

The ssh connection goes through a TCP relay of the test's, so that the test can make the
second host vanish (relay cut, its daemon killed) and come back: its job fails HOST_LOST
past the grace period while the other host's job finishes, and once the host is back the
lost instance's VM, still running there, is destroyed and its volumes removed.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.protocols import portforward

from base.reasons import Reason
from image_repo.layers import make_layer
from target_system.lifecycle import InstanceState, JobState
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, BOB, CREATOR
from tests.e2e.test_jobs import INITRAMFS, finished, wait_state
from tests.e2e.test_layers_and_own_tsi import layered_document
from tests.e2e.test_libvirtd_restart import qemu_runs, until
from tests.support.disks import changed_disk
from tests.tsf.rest.conftest import Http, register_images, site_config, write_users
from tsf.config import HostSection
from tsf.service import start_site
from vmm.hosts import HostState

pytestmark = pytest.mark.vm

HOST2_URI_FILE = Path("/var/lib/gridvm/host2-uri")
HOST2_USER = "gridvm-host2"
HOST2_HOME = Path("/var/lib/gridvm/host2-home")


class Relay:
    """A TCP relay 127.0.0.2:<port> -> 127.0.0.2:22 that can be cut and restored."""

    def __init__(self):
        self.connections: list[portforward.ProxyServer] = []
        relay = self

        class Factory(portforward.ProxyFactory):
            def buildProtocol(self, addr):
                server = super().buildProtocol(addr)
                relay.connections.append(server)
                return server

        self.factory = Factory("127.0.0.2", 22)
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.2")
        self.port = self.listening.getHost().port

    async def cut(self) -> None:
        await self.listening.stopListening()
        for server in self.connections:
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()
        self.connections.clear()

    def restore(self) -> None:
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.2")


def host2_uri(port: int) -> str:
    if not HOST2_URI_FILE.exists():
        pytest.skip("no second libvirt host (scripts/setup-second-host.sh)")
    return HOST2_URI_FILE.read_text().strip().replace("@127.0.0.2/", f"@127.0.0.2:{port}/")


def kill_host2_daemon() -> None:
    """The second host's libvirt daemon is killed (its QEMU runs on)."""
    found = subprocess.run(["pgrep", "-u", HOST2_USER, "-x", "libvirtd"], capture_output=True,
                           text=True)
    for pid in found.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def pool_volumes(pool_dir: Path) -> set[str]:
    return {p.name for p in pool_dir.iterdir()} if pool_dir.exists() else set()


@pytest_twisted.async_yield_fixture
async def two_hosts(built_images):
    """(site, Http, relay, pool directory) of a site on the system host and the second
    host; the site is stopped and the second host's pool removed afterwards."""
    relay = Relay()
    uri = host2_uri(relay.port)
    root = TEST_ROOT / f"hosts-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    pool_dir = HOST2_HOME / f"pool-{root.name}"
    config = site_config(root, placement={"cached_image_weight": 0.0, "host_grace_s": 4.0},
                         health={"interval": 30, "idle_timeout": 0})
    config.hosts = [HostSection("system", "qemu:///system"),
                    HostSection("host2", uri, address="127.0.0.2",
                                storage_pool=str(pool_dir))]
    site = await start_site(config, reactor)
    site.factory.runner.poll_interval = 0.5
    try:
        await threads.deferToThread(register_images, site.repository, built_images)
        yield site, Http(site.http_base), relay, pool_dir
    finally:
        await site.stopService()
        await relay.listening.stopListening()
        subprocess.run(["virsh", "-q", "-c", HOST2_URI_FILE.read_text().strip(),
                        "pool-destroy", f"{config.site.domain_prefix}pool"], capture_output=True)
        subprocess.run(["virsh", "-q", "-c", HOST2_URI_FILE.read_text().strip(),
                        "pool-undefine", f"{config.site.domain_prefix}pool"],
                       capture_output=True)
        shutil.rmtree(pool_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def job(script: str) -> dict:
    return {"Executable": "/bin/sh", "Arguments": ["-c", script], "Resources": INITRAMFS}


@pytest_twisted.ensureDeferred
async def test_jobs_run_on_both_hosts_and_a_drained_host_takes_no_new_instance(two_hosts):
    site, http, _relay, pool_dir = two_hosts
    factory = site.factory
    jobs = [factory.submit(job("echo on $(hostname)"), caller) for caller in (ALICE, BOB)]
    for each, caller in zip(jobs, (ALICE, BOB), strict=True):
        await finished(factory, each, caller)
        assert each.state is JobState.SUCCESSFUL, each.log
    targets = [factory.instance(each.instance_id, caller)
               for each, caller in zip(jobs, (ALICE, BOB), strict=True)]
    assert {t.host for t in targets} == {"system", "host2"}  # spread over both
    remote = next(t for t in targets if t.host == "host2")
    assert remote.vm.address == "127.0.0.2"
    assert any(name.startswith(remote.vm.domain) for name in pool_volumes(pool_dir))

    listing = (await http("GET", "hosts", user="root")).json()["hosts"]
    by_name = {doc["name"]: doc for doc in listing}
    assert {d["state"] for d in listing} == {"UP"}
    assert by_name["host2"]["instances"] == [remote.instance_id]
    assert remote.image.image_id in by_name["host2"]["cachedImages"]
    assert by_name["host2"]["used"]["vcpus"] == remote.vcpus and by_name["host2"]["cpus"] > 0
    refused = await http("POST", "hosts/host2/drain", user="alice")
    assert refused.status_code == 403 and refused.json()["reason"] == "NOT_AUTHORIZED"
    assert (await http("POST", "hosts/nosuch/drain", user="root")).status_code == 404

    # alice's host drained and her instance ended: her next instance goes to the other host
    # although that one is busier (bob's instance runs there)
    mine = next(t for t in targets if t.owner == "alice")
    drained = (await http("POST", f"hosts/{mine.host}/drain", user="root")).json()
    assert drained["state"] == "DRAINING"
    await factory.end_instance(mine.instance_id, ALICE)
    again = factory.submit(job("echo again"), ALICE)
    await finished(factory, again, ALICE)
    assert again.state is JobState.SUCCESSFUL, again.log
    moved = factory.instance(again.instance_id, ALICE)
    assert moved.host != mine.host
    enabled = (await http("POST", f"hosts/{mine.host}/enable", user="root")).json()
    assert enabled["state"] == "UP"


@pytest_twisted.ensureDeferred
async def test_a_host_that_vanishes_loses_its_jobs_and_the_other_host_goes_on(two_hosts):
    site, http, relay, pool_dir = two_hosts
    factory, hosts = site.factory, site.vmm
    hosts.drain("system")
    lost = factory.submit(job("echo started; sleep 600"), ALICE)
    await wait_state(lost, {JobState.RUNNING}, timeout=180)
    hosts.enable("system")
    going_on = factory.submit(job("sleep 20; echo still here"), BOB)
    await wait_state(going_on, {JobState.RUNNING}, timeout=180)
    doomed = factory.instance(lost.instance_id, ALICE)
    survivor = factory.instance(going_on.instance_id, BOB)
    assert (doomed.host, survivor.host) == ("host2", "system")

    await relay.cut()
    await threads.deferToThread(kill_host2_daemon)
    await finished(factory, lost, ALICE, timeout=60)
    assert lost.state is JobState.FAILED and lost.lifecycle.reason == Reason.HOST_LOST, lost.log
    assert doomed.state is InstanceState.FAILED and "host2" in doomed.lifecycle.message
    views = {v.name: v for v in hosts.views()}
    assert views["host2"].state is HostState.DOWN and views["system"].state is HostState.UP
    listing = (await http("GET", "hosts", user="root")).json()["hosts"]
    assert [d["state"] for d in listing] == ["UP", "DOWN"]

    await finished(factory, going_on, BOB, timeout=120)
    assert going_on.state is JobState.SUCCESSFUL, going_on.log
    assert (going_on.storage / "stdout").read_text() == "still here\n"

    relay.restore()
    await until(lambda: hosts.hosts["host2"].state is HostState.UP, "host2 is back", 60)
    await until(lambda: not any(n.startswith(doomed.vm.domain) for n in pool_volumes(pool_dir)),
                "the lost instance's VM destroyed, its volumes removed", 90)
    assert not qemu_runs(doomed.vm.domain)
    await until(lambda: hosts.host_of(doomed.instance_id) == "", "the host forgets it", 10)


@pytest_twisted.ensureDeferred
async def test_a_restarted_site_waits_for_a_host_unreachable_at_its_start(two_hosts):
    """The server restarts while the second host cannot be reached: its instance and running
    job wait for it (not HOST_LOST at once), and go on once it answers within the grace."""
    site, _http, relay, _pool_dir = two_hosts
    site.vmm.drain("system")
    waiting = site.factory.submit(job("echo before; sleep 20; echo after"), ALICE)
    await wait_state(waiting, {JobState.RUNNING}, timeout=180)
    instance_id = waiting.instance_id
    assert site.factory.instance(instance_id, ALICE).host == "host2"
    site.config.site.keep_instances = True  # its VM and job go on without the server
    site.factory.keep_on_stop = True
    await site.stopService()
    await relay.cut()
    second = await start_site(site.config, reactor)
    try:
        second.factory.runner.poll_interval = 0.5
        target = second.factory.instance(instance_id, ALICE)
        assert target.awaiting_host == "host2" and target.host == "host2", target.describe()
        assert second.vmm.hosts["host2"].state is HostState.DOWN
        resumed = second.factory.jobs[waiting.job_id]
        assert any("waiting for the host host2" in line for line in resumed.log), resumed.log
        relay.restore()  # back within the grace period (4 s)
        await until(lambda: target.usable, "the instance reconnected on host2", 30)
        assert target.vm is not None and target.vm.address == "127.0.0.2"
        await finished(second.factory, resumed, ALICE, timeout=120)
        assert resumed.state is JobState.SUCCESSFUL, resumed.log
        assert (resumed.storage / "stdout").read_text() == "before\nafter\n"
        assert any("resumed: the host host2 is back" in line for line in resumed.log)
    finally:
        second.config.site.keep_instances = False
        second.factory.keep_on_stop = False
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_a_layered_image_boots_on_a_host_whose_files_are_volumes(two_hosts, built_images,
                                                                      tmp_path):
    """Base and layer uploaded into host2's pool, the layer naming the base's volume."""
    site, _http, _relay, pool_dir = two_hosts
    built = built_images["qcow2"]
    [base] = site.repository.list(CREATOR, name=built.metadata["general"]["name"])
    disk = built.directory / "disk.qcow2"
    flat = changed_disk(disk, tmp_path / "flat.qcow2", {"/etc/gridvm-layer": b"on host2\n"})
    layer = make_layer(flat, disk, tmp_path / "layer.qcow2")
    record = await threads.deferToThread(
        site.repository.register, layered_document(built, base.id, layer), [layer], CREATOR)
    site.vmm.drain("system")
    try:
        layered = site.factory.submit(
            {"Executable": "/bin/cat", "Arguments": ["/etc/gridvm-layer"],
             "Resources": {"Image": record.ref, "Runtime": "5min"}}, ALICE)
        await finished(site.factory, layered, ALICE, timeout=300)
    finally:
        site.vmm.enable("system")
    assert layered.state is JobState.SUCCESSFUL, layered.log
    assert (layered.storage / "stdout").read_text() == "on host2\n"
    assert site.factory.instance(layered.instance_id, ALICE).host == "host2"
    volumes = pool_volumes(pool_dir)
    for ref in (base.metadata.origin.content[-1], record.metadata.origin.content[-1]):
        assert f"base-{ref.sha512[:64]}" in volumes, sorted(volumes)
