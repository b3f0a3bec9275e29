"""Layered images and an image's own TSI, in real VMs.

A layer on the registered qcow2 image (only a file added) boots through its backing chain,
the base cached once on the host; a base damaged in the store fails the job's instance with
IMAGE_CHECKSUM_MISMATCH.  An image whose metadata says it brings its own UNICORE TSI gets an
official tsi.properties and is started by its start command — gridvm's agent, started
exactly as the official TSI is — and the site reaches it by its first PING.
"""

import copy
import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from base.reasons import Reason
from image_repo.layers import make_layer
from image_repo.schema import ContentRef
from image_repo.strict import to_json
from target_system.lifecycle import JobState
from tests.e2e.conftest import ALICE, CREATOR
from tests.support.disks import changed_disk

pytestmark = pytest.mark.vm


async def finished(factory, job, timeout=300.0):
    return await factory.wait(job.job_id, ALICE).addTimeout(timeout, reactor)


def layered_document(built, base_id: str, layer) -> dict:
    doc = copy.deepcopy(built.metadata)
    doc["general"]["name"] = "gridvm-debian12-layered"
    doc["origin"]["content"] = [to_json(ContentRef.for_file(layer, "disk")) if c["role"] ==
                                "disk" else c for c in doc["origin"]["content"]]
    doc["origin"]["backing_image"] = base_id
    for key in ("os_hash_value", "size"):
        doc["origin"].pop(key, None)
    return doc


@pytest_twisted.ensureDeferred
async def test_a_layered_image_boots_through_its_chain_and_a_damaged_base_is_refused(
        site, built_images, tmp_path):
    factory, repository, _root = site
    built = built_images["qcow2"]
    [base] = repository.list(CREATOR, name=built.metadata["general"]["name"])
    disk = built.directory / "disk.qcow2"
    flat = changed_disk(disk, tmp_path / "flat.qcow2",
                        {"/etc/gridvm-layer": b"from the layer\n"})
    layer = make_layer(flat, disk, tmp_path / "layer.qcow2")
    assert layer.stat().st_size < flat.stat().st_size / 4
    record = repository.register(layered_document(built, base.id, layer), [layer], CREATOR)

    job = factory.submit({"Executable": "/bin/cat", "Arguments": ["/etc/gridvm-layer"],
                          "Resources": {"Image": record.ref, "Runtime": "5min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text() == "from the layer\n"
    cache = factory.vmm.cache
    base_sha = base.metadata.origin.content[-1].sha512
    assert cache.contains(base_sha) and cache.contains(record.metadata.origin.content[-1].sha512)
    target = factory.instance(job.instance_id, ALICE)
    await target.terminate("test: next")

    # the base's blob damaged in the store (not yet on this host): refused at staging
    cache.remove(base_sha)
    blob = repository.store.path(base_sha)
    original = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        job = factory.submit({"Executable": "/bin/true",
                              "Resources": {"Image": record.ref, "Runtime": "5min"}}, ALICE)
        await finished(factory, job)
        assert job.state is JobState.FAILED
        assert job.lifecycle.reason == Reason.IMAGE_CHECKSUM_MISMATCH, job.log
    finally:
        blob.write_bytes(original)


@pytest_twisted.ensureDeferred
async def test_an_image_with_its_own_tsi_is_started_and_reached_like_the_official_tsi(
        site, built_images):
    factory, repository, _root = site
    built = built_images["initramfs"]
    doc = copy.deepcopy(built.metadata)
    doc["general"]["name"] = "gridvm-debian12-own-tsi"
    doc["tsi"].update({"flavour": "unicore", "properties_file": "/etc/unicore/tsi.properties",
                       "start_command": ["/usr/bin/python3", "-m", "tsi_bridge.agent",
                                         "--properties"]})
    record = repository.register(doc, (), CREATOR)  # its files are in the store already

    job = factory.submit({
        "Executable": "/bin/sh", "Arguments": ["-c", (
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -o '[-]-properties [^ ]*' "
                "| head -n1; ls -l /etc/unicore/tsi.properties | cut -c1-10; "
            "test -e /run/gridvm/ctx/tsi/agent.conf || echo no-agent-conf")],
        "Resources": {"Image": record.ref, "Runtime": "5min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text().split() == [
        "--properties", "/etc/unicore/tsi.properties", "-rw-------", "no-agent-conf"]
