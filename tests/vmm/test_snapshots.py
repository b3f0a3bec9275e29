"""Cold start by restore: snapshots of a booted guest, instances restored from them with
identities of their own, the fallback to a boot, and invalidation."""

import hashlib
import logging
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from target_system.images import built_image_boot_spec
from tsi_bridge.ca import CertificateAuthority
from tsi_bridge.client import TSIClient
from tsi_bridge.context import instance_context_files
from tsi_bridge.readiness import probe_agent
from tsi_bridge.tls import TLSConfig
from vmm import ports
from vmm.manager import InstanceSpec
from vmm.restoring import RESTORED_TB_CACHE_MIB

pytestmark = pytest.mark.vm

PROBE = ("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; hostname; "
         "python3 -c 'import random; print(random.getrandbits(64))'")


class Guest:
    """One instance to bring up: its own CA-issued identity and a TSI client pinned to it."""

    def __init__(self, image, ca, server):
        spec_id = InstanceSpec(boot=built_image_boot_spec(image)).instance_id
        self.spec_files, self.issued = instance_context_files(ca, server, spec_id)
        self.tls = TLSConfig(server.cert_pem, server.key_pem, ca.cert_pem, self.issued.cert_pem)
        host_port = ports.free_port()
        self.client = TSIClient(reactor, "127.0.0.1", host_port, tls=self.tls, user="gridvm")
        callback_port = self.client.start()
        self.spec = InstanceSpec(
            boot=built_image_boot_spec(image), instance_id=spec_id, image=image.kind,
            host_port=host_port, callback_port=callback_port, context_files=self.spec_files,
            restorable=True, probe=lambda h, p: probe_agent(reactor, h, p, self.tls))

    async def probe(self) -> list[str]:
        return (await self.client.execute_script(PROBE)).split()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def snapshot_of(vmm, spec):
    key, slot = await vmm.restorer.key(spec)
    return await vmm.restorer.build(spec, key, slot)


@pytest_twisted.ensureDeferred
async def test_two_instances_restored_from_one_snapshot_share_no_identity(
        restoring_vmm, built_images):
    vmm = restoring_vmm
    ca = CertificateAuthority.create()
    server = ca.issue_server()
    guests = [Guest(built_images["initramfs"], ca, server) for _ in range(2)]
    snapshot = await snapshot_of(vmm, guests[0].spec)
    assert snapshot.memory.stat().st_size == snapshot.save_bytes > 0
    assert snapshot.medium.exists() and snapshot.disk is None  # initramfs: no overlay

    instances = await defer.gatherResults([vmm.boot(g.spec) for g in guests],
                                          consumeErrors=True)
    try:
        assert [i.started_by for i in instances] == ["restored", "restored"]
        # the ack is the readiness: no probe of its own before the TSI link's
        assert {"restore", "identity", "total"} <= set(instances[0].timings)
        assert "ready" not in instances[0].timings
        acks = [i.identity_ack for i in instances]
        assert [a.instance_id for a in acks] == [g.spec.instance_id for g in guests]
        assert acks[0].random_draw != acks[1].random_draw  # the agent's random reseeded
        # each agent answers with its own certificate: the clients pin one each
        probes = [await g.probe() for g in guests]
        urandom, clock, hostname, py_random = zip(*probes, strict=True)
        assert urandom[0] != urandom[1] and len(urandom[0]) == 64
        assert py_random[0] != py_random[1]
        assert [h for h in hostname] == [f"gridvm-{g.spec.instance_id}" for g in guests]
        for seconds in clock:  # the clock was stepped to the host's at the restore
            assert abs(int(seconds) - time.time()) < 5
        domains = [await vmm.hypervisor.xml(i.domain) for i in instances]
        assert domains[0].uuid != domains[1].uuid != snapshot.uuid
        # a restored guest's cold path gets a TCG cache of its own size
        assert domains[0].tb_cache_mib == RESTORED_TB_CACHE_MIB != vmm.tb_cache_mib
    finally:
        for guest in guests:
            await guest.client.close()
        for instance in instances:
            await vmm.destroy(instance.instance_id)


@pytest_twisted.ensureDeferred
async def test_a_restore_from_a_damaged_snapshot_falls_back_to_a_boot(
        restoring_vmm, built_images, caplog):
    vmm = restoring_vmm
    ca = CertificateAuthority.create()
    server = ca.issue_server()
    guest = Guest(built_images["initramfs"], ca, server)
    snapshot = await snapshot_of(vmm, guest.spec)
    with open(snapshot.memory, "r+b") as f:  # cut the guest's memory off half way
        f.truncate(snapshot.save_bytes // 2)

    with caplog.at_level(logging.WARNING, logger="vmm.manager"):
        instance = await vmm.boot(guest.spec)
    try:
        assert instance.started_by == "booted"
        assert "RESTORE_FAILED" in caplog.text and "booting it instead" in caplog.text
        assert (await guest.probe())[2] == "gridvm"  # booted: the image's own hostname
        assert vmm.restorer.store.find(snapshot.key) is None  # dropped, to be built anew
    finally:
        await guest.client.close()
        await vmm.destroy(instance.instance_id)


@pytest_twisted.ensureDeferred
async def test_a_qcow2_instance_is_restored_with_its_own_copy_of_the_disk(
        restoring_vmm, built_images):
    vmm = restoring_vmm
    ca = CertificateAuthority.create()
    server = ca.issue_server()
    guest = Guest(built_images["qcow2"], ca, server)
    snapshot = await snapshot_of(vmm, guest.spec)
    assert snapshot.disk is not None  # the snapshot-time overlay
    disk_before = digest(snapshot.disk)
    instance = await vmm.boot(guest.spec)
    try:
        assert instance.started_by == "restored"
        assert (instance.directory / "overlay.qcow2").exists()
        written = await guest.client.execute_script(
            "echo restored > /home/gridvm/mark && sync && cat /home/gridvm/mark")
        assert written.strip() == "restored"
    finally:
        await guest.client.close()
        await vmm.destroy(instance.instance_id)
    assert digest(snapshot.disk) == disk_before  # the instance wrote to its own copy


@pytest_twisted.ensureDeferred
async def test_an_erofs_instance_is_restored_on_the_shared_disk_without_a_copy(
        restoring_vmm, erofs_image):
    ca = CertificateAuthority.create()
    guest = Guest(erofs_image, ca, ca.issue_server())
    snapshot = await snapshot_of(restoring_vmm, guest.spec)
    assert snapshot.disk is None  # a read-only root: nothing of the instance's to keep
    vmm = restoring_vmm
    instance = await vmm.boot(guest.spec)
    try:
        assert instance.started_by == "restored"
        assert not (instance.directory / "overlay.qcow2").exists()
        written = await guest.client.execute_script(
            "echo restored > /home/gridvm/mark && cat /home/gridvm/mark && "
            "grep -c ' / overlay ' /proc/mounts")
        assert written.split() == ["restored", "1"]
    finally:
        await guest.client.close()
        await vmm.destroy(instance.instance_id)
