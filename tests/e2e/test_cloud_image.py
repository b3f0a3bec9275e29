"""A standard cloud image (Debian packages only, its own bootloader, cloud-init, python3 and
no gridvm file) registered, matched by a job's requirements, booted through libvirt, made a
target system by the NoCloud medium, and running jobs through the agent the medium carried.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor

from base.reasons import Reason
from image_builder import build_image
from target_system.instance import Deadlines, SiteCredentials
from target_system.lifecycle import InstanceState, JobState
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, CREATOR, make_factory

#: systemd + cloud-init under software emulation take minutes (image_builder.cloud)
pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="session")
def cloud_image():
    """The cloud image, built once per machine (cached below TEST_ROOT by its recipe)."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    return build_image("cloud", output_root=TEST_ROOT / "images")


def register(repository, image, **changes) -> str:
    doc = image.metadata
    for group, values in changes.items():
        doc[group].update(values)
        doc[group] = {k: v for k, v in doc[group].items() if v is not None}
    return repository.register(doc, {p.name: p for p in image.files}, CREATOR).id


async def finished(factory, job, timeout=900.0):
    return await factory.wait(job.job_id, ALICE).addTimeout(timeout, reactor)


@pytest_twisted.ensureDeferred
async def test_a_cloud_image_becomes_a_target_system_and_runs_jobs(site, cloud_image):
    factory, repository, _root = site
    image_id = register(repository, cloud_image)
    # Only the cloud image offers cloud-init: the requirements pick it.
    job = factory.submit({"ApplicationName": "cloud-init", "Arguments": ["--version"],
                          "Resources": {"Runtime": "5min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    out = (job.storage / "stdout").read_text() + (job.storage / "stderr").read_text()
    assert cloud_image.metadata["idb"]["applications"][1]["version"] in out  # cloud-init's
    target = factory.instance(job.instance_id, ALICE)
    assert target.image.image_id == image_id
    assert target.state is InstanceState.READY
    phases = target.lifecycle.phase_seconds()
    print(f"cloud image boot phases: {phases}")

    # The same instance: the job user cloud-init made, the agent from the medium, the
    # instance-id NoCloud gave, and no gridvm file in the image itself.
    probe = factory.submit({
        "Executable": "/bin/sh", "Arguments": ["-c", (
            "id -un; cat /var/lib/cloud/data/instance-id; "
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' ' "
            "| grep -o '[-]-config /run/gridvm/ctx/tsi/agent.conf' | head -n1; "
            "test -e /opt/gridvm || echo no-gridvm-in-image")],
        "Resources": {"Image": "debian12-cloud", "Runtime": "5min"}}, ALICE)
    await finished(factory, probe)
    assert probe.state is JobState.SUCCESSFUL, probe.log
    assert probe.instance_id == job.instance_id
    assert (probe.storage / "stdout").read_text().split() == [
        "gridvm", target.instance_id, "--config", "/run/gridvm/ctx/tsi/agent.conf",
        "no-gridvm-in-image"]


@pytest_twisted.ensureDeferred
async def test_a_cloud_image_that_never_reaches_the_agent_ends_boot_timeout_with_console(
        site, vmm, cloud_image):
    _factory, repository, root = site
    factory = make_factory(vmm, root, repository, SiteCredentials.load_or_create(root / "ca"),
                           deadlines=Deadlines(staging=120, booting=60, connecting=30))
    # Registered as if it carried gridvm's own agent: nothing in it starts one.
    register(repository, cloud_image, general={"name": "cloud-without-agent"},
             tsi={"contextualization": "gridvm", "boot_timeout_s": None})
    job = factory.submit({"Executable": "/bin/true",
                          "Resources": {"Image": "cloud-without-agent"}}, ALICE)
    await finished(factory, job, timeout=300)
    assert job.state is JobState.FAILED
    assert job.lifecycle.reason in (Reason.BOOT_TIMEOUT, Reason.TSI_UNREACHABLE), job.log
    assert "console" in job.lifecycle.message


@pytest_twisted.ensureDeferred
async def test_a_two_node_job_on_cloud_images_gets_its_network_names_and_the_site_hooks(
        site, cloud_image):
    """cloud-init runs the medium's start-up hooks as gridvm's own images do: the cluster
    NIC comes up, the node keeps its name, and the site's hooks run."""
    factory, repository, _root = site
    register(repository, cloud_image)
    factory.registry.context_hooks["50-mark"] = b"echo hooked > /run/gridvm-hook-ran\n"
    probe = ("hostname; cat /run/gridvm-hook-ran; tr '\\n' ' ' < \"$PBS_NODEFILE\"; echo; "
             "python3 -c 'import socket; socket.create_connection((\"node1\", 4433), "
             "timeout=20).close(); print(\"node1-reached\")'")
    job = factory.submit({"Executable": "/bin/sh", "Arguments": ["-c", probe],
                          "Resources": {"Image": "debian12-cloud", "Nodes": 2,
                                        "CPUsPerNode": 1, "Runtime": "10min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text().split() == [
        "node0", "hooked", "node0", "node1", "node1-reached"]
