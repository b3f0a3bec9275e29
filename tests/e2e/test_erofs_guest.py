"""gridvm's micro guest on a read-only erofs root shared by every instance: a job runs
through its TSI agent, its writes go to the guest's tmpfs overlay, the image's cached disk
is attached as it is (no overlay, no copy per instance)."""

import hashlib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from target_system.lifecycle import JobState
from tests.e2e.conftest import ALICE, register_built
from vmm.domain import DomainConfig

pytestmark = pytest.mark.vm

EROFS = {"Image": "gridvm-debian12-erofs", "Runtime": "5min"}
SCRIPT = """
import json, pathlib, sys
mounts = {line.split()[1]: line.split()[2] for line in open("/proc/mounts")}
pathlib.Path("written.txt").write_text("kept in the overlay")
print(json.dumps({"root": mounts["/"], "python": sys.version_info[:2],
                  "sourceless": not pathlib.Path(json.__file__).with_suffix(".py").exists()}))
"""


def sha512(path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_job_runs_in_the_erofs_guest_and_the_shared_disk_is_untouched(
        site, vmm, erofs_image):
    factory, repository, _root = site
    register_built(repository, erofs_image)
    image_sha512 = next(ref["sha512"] for ref in erofs_image.metadata["origin"]["content"]
                        if ref["role"] == "disk")
    job = factory.submit({"ApplicationName": "python3", "Arguments": ["-c", SCRIPT],
                          "Resources": EROFS}, ALICE)
    await factory.wait(job.job_id, ALICE).addTimeout(240, reactor)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text().strip() == \
        '{"root": "overlay", "python": [3, 11], "sourceless": true}'
    assert (job.storage / "written.txt").read_text() == "kept in the overlay"
    target = factory.instance(job.instance_id, ALICE)
    directory = vmm.instance_dir(target.instance_id)
    assert directory.exists() and not (directory / "overlay.qcow2").exists()
    xml = await vmm.hypervisor.run(lambda conn: conn.lookupByName(target.vm.domain).XMLDesc())
    root = next(d for d in DomainConfig.from_xml(xml).disks() if d.serial == "gridvm-root")
    assert root.readonly and root.shareable and root.driver_type == "raw"
    assert not Path(root.source).is_relative_to(directory)  # the cached image file itself
    assert sha512(Path(root.source)) == image_sha512
    await target.terminate("test over")
    assert sha512(Path(root.source)) == image_sha512  # the guest wrote to its overlay only
