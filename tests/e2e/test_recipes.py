"""A creator's recipe (tests/e2e/recipes/jq-tools.toml: jq, which gridvm's default image
lacks, with its dependency closure, a user, a file it owns, IDB applications, VO metadata)
built with ``gridvm catalogue build --recipe``, registered on a site, matched by a job that
requires application jq, and run in a real VM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from image_builder import BuiltImage
from target_system.lifecycle import JobState
from tests.conftest import TEST_ROOT
from tests.e2e.conftest import ALICE, register_built

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]
RECIPE = Path(__file__).parent / "recipes" / "jq-tools.toml"


@pytest.fixture(scope="session")
def jq_image() -> tuple[BuiltImage, str]:
    """The recipe's image built by the CLI (cached below TEST_ROOT like the other images),
    and the progress the build printed."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "gridvm", "catalogue", "build", "--recipe", str(RECIPE),
         "--output", str(TEST_ROOT / "images"), "--json"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    built = BuiltImage(summary["kind"], summary["key"], Path(summary["directory"]),
                       cached=summary["cached"], files=[Path(p) for p in summary["files"]])
    return built, result.stderr


async def finished(factory, job, timeout=300.0):
    return await factory.wait(job.job_id, ALICE).addTimeout(timeout, reactor)


@pytest_twisted.ensureDeferred
async def test_a_recipe_image_is_matched_by_its_application_and_runs_it(site, jq_image):
    factory, repository, _root = site
    built, progress = jq_image
    assert "[build] resolving packages" in progress
    if not built.cached:
        for phase in ("downloading", "unpacking", "assembling", "packing", "metadata"):
            assert f"[build] {phase}" in progress, progress
    meta = built.metadata
    jq = next(a for a in meta["idb"]["applications"] if a["name"] == "jq")
    assert jq["version"] == "1.6" and {"name": "jq", "version": "1.6"} in meta[
        "semantic"]["software"]
    image_id = register_built(repository, built)

    # Only the recipe's image offers jq: the requirement picks it among all registered.
    job = factory.submit({"ApplicationName": "jq",
                          "Arguments": ["-n", "-c", '{tool: "jq", sum: (2 + 40)}'],
                          "Resources": {"Runtime": "5min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text() == '{"tool":"jq","sum":42}\n'
    assert factory.instance(job.instance_id, ALICE).image.image_id == image_id

    # The recipe's user, its file with owner and mode set at start-up, run as the job user.
    probe = factory.submit({
        "Executable": "/bin/sh", "Arguments": ["-c", (
            "stat -c '%U:%G %a' /opt/jq-tools/bin/summarize; "
            "printf '{\"value\": 2} {\"value\": 40}' | /opt/jq-tools/bin/summarize")],
        "Resources": {"Image": "jq-tools", "Runtime": "5min"}}, ALICE)
    await finished(factory, probe)
    assert probe.state is JobState.SUCCESSFUL, probe.log
    assert (probe.storage / "stdout").read_text().split("\n") == ["curator:gridvm 750", "42",
                                                                  ""]
