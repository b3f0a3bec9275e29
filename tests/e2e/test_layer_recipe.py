"""A VO's layer recipe (tests/e2e/recipes/jq-layer.toml: jq and a script on the registered
qcow2 base) built with ``gridvm catalogue build --recipe … --base-disk …``, registered with
its backing image, matched by a job requiring the layer's application, and run in a real VM
booted through the layer's chain."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from target_system.lifecycle import JobState
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, CREATOR

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]
RECIPE = Path(__file__).parent / "recipes" / "jq-layer.toml"


async def finished(factory, job, timeout=300.0):
    return await factory.wait(job.job_id, ALICE).addTimeout(timeout, reactor)


@pytest_twisted.ensureDeferred
async def test_a_layer_recipe_registers_on_its_base_and_runs_its_application(site,
                                                                             built_images):
    factory, repository, _root = site
    base_disk = built_images["qcow2"].directory / "disk.qcow2"
    result = subprocess.run(
        [sys.executable, "-m", "gridvm", "catalogue", "build", "--recipe", str(RECIPE),
         "--base-disk", str(base_disk), "--output", str(TEST_ROOT / "images"), "--json"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    [layer] = [Path(p) for p in summary["files"]]
    meta = json.loads(Path(summary["metadata"]).read_text())
    record = repository.register(meta, [layer], CREATOR)  # kernel, initrd: the base's blobs
    [base] = repository.list(CREATOR, name="gridvm-debian12-qcow2")
    assert record.metadata.origin.backing_image == base.id

    # Only the layer offers jq: the requirement picks it among all registered images.
    job = factory.submit({"ApplicationName": "jq",
                          "Arguments": ["-n", "-c", '{layer: "jq", sum: (2 + 40)}'],
                          "Resources": {"Runtime": "5min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text() == '{"layer":"jq","sum":42}\n'
    assert factory.instance(job.instance_id, ALICE).image.image_id == record.id

    # The recipe's file with the owner and mode written into its inode, run as the job user.
    probe = factory.submit({
        "Executable": "/bin/sh", "Arguments": ["-c", (
            "stat -c '%U:%G %a' /opt/jq-layer/bin/summarize; "
            "printf '{\"value\": 2} {\"value\": 40}' | /opt/jq-layer/bin/summarize")],
        "Resources": {"Image": record.ref, "Runtime": "5min"}}, ALICE)
    await finished(factory, probe)
    assert probe.state is JobState.SUCCESSFUL, probe.log
    assert (probe.storage / "stdout").read_text().split("\n") == [
        "curator:gridvm 750", "42", ""]
