"""CONTAINER jobs in a real VM: a busybox OCI image (Debian's busybox-static packed by umoci)
registered as a container image, run by crun in the cloud image that offers it, reading an
uploaded input and writing an output that is staged out."""

import pytest
import pytest_twisted

from base.reasons import Reason
from image_builder import build_image
from target_system.jobdesc import parse_job
from target_system.jobfiles import JobFiles
from target_system.lifecycle import JobState
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, CREATOR
from tests.e2e.test_cloud_image import finished

#: the cloud image boots in minutes under software emulation (image_builder.cloud)
pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="session")
def container_images():
    """(the cloud image with crun, the busybox OCI image), built once per machine."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    return (build_image("cloud-crun", output_root=TEST_ROOT / "images"),
            build_image("container", output_root=TEST_ROOT / "images"))


def register(repository, built) -> str:
    return repository.register(built.metadata, {p.name: p for p in built.files}, CREATOR).id


async def submit(factory, doc, *, inputs=None):
    desc = parse_job(doc)
    await factory.prepare(desc, ALICE, "http://localhost/storages/")
    job = factory.submit(desc, ALICE)
    for name, data in (inputs or {}).items():
        await JobFiles(job, lambda _id: None).store().write(name, data)
    if inputs:
        factory.start(job.job_id, ALICE)
    return job


@pytest_twisted.ensureDeferred
async def test_a_container_job_runs_in_its_container_in_a_vm(site, container_images):
    factory, repository, _root = site
    host, container = container_images
    register(repository, host)
    register(repository, container)
    url = container.metadata["origin"]["source_url"]
    job = await submit(factory, {
        "ApplicationName": "CONTAINER",
        "Parameters": {"IMAGE_URL": url, "COMMAND": (
            "grep PRETTY_NAME /etc/os-release; id -u; ulimit -v; "
            "tr a-z A-Z < data/in.txt > out.txt; echo to-stderr >&2")},
        "Resources": {"Runtime": "10min", "Memory": "256M"},
        "haveClientStageIn": True}, inputs={"data/in.txt": b"read inside the container\n"})
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    lines = (job.storage / "stdout").read_text().splitlines()
    assert lines[0] == 'PRETTY_NAME="gridvm busybox container"'  # not the VM's Debian
    assert lines[2] == str(256 * 1024)  # the job's memory, as RLIMIT_AS (KiB)
    assert (job.storage / "stderr").read_text() == "to-stderr\n"
    assert (job.storage / "out.txt").read_text() == "READ INSIDE THE CONTAINER\n"
    assert any("staged into the instance" in line for line in job.log)
    target = factory.instance(job.instance_id, ALICE)
    assert target.image.name == "debian12-cloud-crun"

    # The job's user: the uid the VM's own jobs run as.  The archive is cached on the
    # instance; the command's exit code is the job's.
    plain = factory.submit({"Executable": "id", "Arguments": ["-u"],
                            "Resources": {"Image": "debian12-cloud-crun"}}, ALICE)
    await finished(factory, plain)
    assert plain.state is JobState.SUCCESSFUL, plain.log
    failing = await submit(factory, {"ApplicationName": "CONTAINER", "Parameters": {
        "IMAGE_URL": container.metadata["general"]["name"], "COMMAND": "exit 3"}})
    await finished(factory, failing)
    assert lines[1] == (plain.storage / "stdout").read_text().strip()
    assert failing.instance_id == job.instance_id
    assert failing.state is JobState.FAILED and failing.exit_code == 3, failing.log
    assert failing.lifecycle.reason == Reason.NONZERO_EXIT
    assert any("already in the instance" in line for line in failing.log)
    print("container job phases (first, staged the archive; then cached): "
          f"{job.lifecycle.phase_seconds()} {failing.lifecycle.phase_seconds()}")
