"""A job's files in real VMs: what stage-out keeps of a hostile directory, the directory
removed from the guest afterwards, a full disk, and an instance retired for lack of space."""

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from target_system.lifecycle import InstanceState, JobState
from tests.e2e.conftest import ALICE, make_factory
from tsf.factory import Quotas

pytestmark = pytest.mark.vm

INITRAMFS = {"Image": "gridvm-debian12-initramfs"}
SMALL_FILES = 5000
ODD_NAMES = [b"new\nline", b"carriage\rreturn", b"bad\xffbytes"]

HOSTILE = f"""
import os
os.symlink("/etc/passwd", "outside")
os.symlink("in.txt", "inner")
open("in.txt", "w").write("inside\\n")
os.mkfifo("pipe")
open("secret", "w").write("unreadable\\n")
os.chmod("secret", 0)
for name in {ODD_NAMES!r}:
    open(name, "wb").write(name)
os.mkdir("many")
for n in range({SMALL_FILES}):
    with open(f"many/f{{n:05d}}", "wb") as f:
        f.write(b"x" * 1024)
print("made")
"""


async def finished(factory, job, timeout=300.0):
    return await factory.wait(job.job_id, ALICE).addTimeout(timeout, reactor)


@pytest_twisted.ensureDeferred
async def test_stage_out_keeps_the_regular_files_and_the_guest_directory_goes(site):
    factory, _repo, _root = site
    job = factory.submit({"ApplicationName": "python3", "Arguments": ["-c", HOSTILE],
                          "Resources": {**INITRAMFS, "Runtime": "10min"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    storage = job.storage
    assert (storage / "stdout").read_text() == "made\n"
    assert len(os.listdir(storage / "many")) == SMALL_FILES
    assert (storage / "many" / "f04999").read_bytes() == b"x" * 1024
    names = os.listdir(os.fsencode(storage))
    for name in ODD_NAMES:
        assert name in names
        with open(os.fsencode(storage) + b"/" + name, "rb") as kept:
            assert kept.read() == name
    assert os.readlink(storage / "inner") == "in.txt"
    for gone in ("outside", "pipe", "secret"):
        assert not os.path.lexists(storage / gone)
    log = "\n".join(job.log)
    print(log, job.lifecycle.phase_seconds())
    assert "not copied: outside (symbolic link to outside the job directory)" in log
    assert "not copied: pipe (special file (FIFO))" in log
    assert "not copied: secret (Permission denied)" in log
    assert f"copied {SMALL_FILES + len(ODD_NAMES) + 5} file(s)" in log, log
    staging_out = job.lifecycle.phase_seconds()["STAGINGOUT"]
    print(f"stage-out of {SMALL_FILES} small files: {staging_out:.2f} s")
    assert staging_out < 60

    # The job directory is gone from the guest; the instance takes the next job.
    target = factory.instance(job.instance_id, ALICE)
    assert target.state is InstanceState.READY
    assert await target.tsi.ls(job.workdir, "A") == []


SMALL_DISK = b"mount -t tmpfs -o size=8m,mode=0755 tmpfs /home/gridvm/jobs\n"


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_reported_freed_and_an_instance_without_room_retired(
        site, vmm):
    base, repository, root = site
    factory = make_factory(vmm, root / "small", repository, base.credentials,
                           quotas=Quotas(2, 4), context_hooks={"40-small-disk": SMALL_DISK})
    factory.runner.min_free_space = 2 * 1024 * 1024
    factory.runner.exit_code_grace = 5
    try:
        filling = factory.submit({"Executable": "/bin/sh", "Arguments": [
            "-c", "head -c 20000000 /dev/zero > big"], "Resources": INITRAMFS}, ALICE)
        await finished(factory, filling)
        assert filling.state is JobState.FAILED
        assert filling.lifecycle.reason == "NONZERO_EXIT"
        assert "could not write its exit code: No space left on device" in (
            filling.status_message), filling.log
        assert 7_000_000 < (filling.storage / "big").stat().st_size <= 8 * 1024 * 1024

        # Its directory was removed: the next job on the same instance has the disk.
        started = time.monotonic()
        after = factory.submit({"Executable": "/bin/sh", "Arguments": [
            "-c", "ls /home/gridvm/jobs; head -c 6000000 /dev/zero > again"],
            "Resources": INITRAMFS}, ALICE)
        await finished(factory, after)
        assert after.state is JobState.SUCCESSFUL, after.log
        assert after.instance_id == filling.instance_id
        assert (after.storage / "stdout").read_text() == f"{after.job_id}\n"
        print(f"second job on the freed instance: {time.monotonic() - started:.1f} s")

        # A job that leaves its files outside its directory: no room after it, retired.
        hog = factory.submit({"Executable": "/bin/sh", "Arguments": [
            "-c", "head -c 7000000 /dev/zero > /home/gridvm/jobs/left-behind"],
            "Resources": INITRAMFS}, ALICE)
        await finished(factory, hog)
        assert hog.state is JobState.SUCCESSFUL, hog.log
        assert any("retired: only" in line for line in hog.log), hog.log
        retired = factory.instance(hog.instance_id, ALICE)
        for _ in range(300):
            if retired.state is InstanceState.TERMINATED:
                break
            await _pause(0.1)
        assert retired.state is InstanceState.TERMINATED

        fresh = factory.submit({"Executable": "true", "Resources": INITRAMFS}, ALICE)
        await finished(factory, fresh)
        assert fresh.state is JobState.SUCCESSFUL, fresh.log
        assert fresh.instance_id != hog.instance_id
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("test over")


def _pause(seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)
