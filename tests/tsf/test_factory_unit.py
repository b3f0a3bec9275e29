"""The factory's job API over the fakes: the catalogue is real (SQLite), the VMs and their
agents are fakes on a Clock.  Only the factory's public job API is used."""

from __future__ import annotations

import pytest
import pytest_twisted

from base.db import sqlite_url
from base.identity import Caller
from base.reasons import Reason
from image_repo.repository import ImageRepository
from target_system.instance import Deadlines, HealthPolicy, SiteCredentials
from target_system.jobs import JobRunner
from target_system.lifecycle import InstanceState, JobState
from tests.fakes.parts import FakeParts
from tests.image_repo.examples import builder_document, write_files
from tsf.factory import InstanceBusy, NotFound, Quotas, TargetSystemFactory
from tsf.pools import REFILL_DELAY, PoolSpec
from vmm.errors import GuestCrashed

ALICE = Caller.of("alice", groups=["users"])
BOB = Caller.of("bob", groups=["users"])
JOB = {"Executable": "/bin/echo", "Arguments": ["hi"],
       "Resources": {"OperatingSystem": "debian"}}
J = JobState


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> SiteCredentials:
    return SiteCredentials.load_or_create(tmp_path_factory.mktemp("ca"))


class Site(FakeParts):
    """A factory on the fake parts and a real catalogue holding alice's image."""

    def __init__(self, directory, credentials, quotas: Quotas, **options):
        super().__init__(directory / "vms")
        self.repository = ImageRepository(sqlite_url(directory / "catalogue.sqlite"),
                                          directory / "store")
        files = write_files(directory / "build", {"vmlinuz": b"kernel-bytes",
                                                  "initrd.img": b"initrd-bytes"})
        self.image = self.repository.register(builder_document(), files, ALICE)
        self.factory = TargetSystemFactory(
            self.repository, self.vms, credentials, directory / "storage", self.clock,
            quotas=quotas, deadlines=Deadlines(staging=60, booting=30, connecting=20),
            health=HealthPolicy(interval=15, ping_timeout=5, idle_timeout=None),
            runner=JobRunner(self.clock, poll_interval=1.0), tsi_connector=self.network,
            **options)

    async def finished(self, job):
        await self.run_until(lambda: job.finished.called)
        return job

    async def running(self, job):
        await self.run_until(lambda: job.state is J.RUNNING)
        return self.factory.instance(job.instance_id, Caller.of("root", admin=True))


@pytest.fixture
def site(tmp_path, credentials):
    site = Site(tmp_path, credentials, Quotas(per_user=2, total=2))
    yield site
    for target in site.factory.list_instances(Caller.of("root", admin=True)):
        target.terminate("test over")
    site.wait(1)
    site.repository.close()


@pytest_twisted.ensureDeferred
async def test_a_job_runs_to_successful_and_keeps_its_outputs(site):
    job = await site.finished(site.factory.submit(JOB, ALICE))
    assert (job.state, job.exit_code) == (J.SUCCESSFUL, 0), job.log
    target = site.factory.instance(job.instance_id, ALICE)
    agent = site.agent(target)
    assert target.state is InstanceState.READY and target.owner == "alice"
    assert target.image.image_id == site.image.id and not target.jobs
    (submitted,) = agent.jobs.values()
    assert "/bin/echo hi" in submitted.script and submitted.workdir == job.workdir
    assert (job.storage / "stdout").read_bytes() == agent.output
    assert site.factory.wait(job.job_id, ALICE).called
    with pytest.raises(NotFound):
        site.factory.job(job.job_id, BOB)


@pytest_twisted.ensureDeferred
async def test_a_nonzero_exit_fails_the_job(site):
    site.network.job_seconds = None
    job = site.factory.submit(JOB, ALICE)
    agent = site.agent(await site.running(job))
    agent.finish(job.bssid, exit_code=3)
    await site.finished(job)
    assert (job.state, job.lifecycle.reason, job.exit_code) == (J.FAILED, Reason.NONZERO_EXIT,
                                                                3)


@pytest_twisted.ensureDeferred
async def test_the_next_job_reuses_the_instance(site):
    first = await site.finished(site.factory.submit(JOB, ALICE))
    second = await site.finished(site.factory.submit(JOB, ALICE))
    assert second.state is J.SUCCESSFUL
    assert second.instance_id == first.instance_id and len(site.vms.specs) == 1
    assert any(f"reusing instance {first.instance_id}" in line for line in second.log)
    assert len(site.agent(site.factory.instance(first.instance_id, ALICE)).jobs) == 2


@pytest_twisted.ensureDeferred
async def test_jobs_beyond_the_quotas_fail_quota_exceeded(tmp_path, credentials):
    site = Site(tmp_path, credentials, Quotas(per_user=1, total=1))
    site.network.job_seconds = None
    try:
        running = site.factory.submit(JOB, ALICE)
        await site.running(running)
        bobs = await site.finished(site.factory.submit(JOB, BOB))
        assert (bobs.state, bobs.lifecycle.reason) == (J.FAILED, Reason.QUOTA_EXCEEDED)
        assert "the site runs 1 instances, its limit is 1" in bobs.lifecycle.message
        bigger = {**JOB, "Resources": {**JOB["Resources"], "CPUs": 2}}  # alice's won't do
        alices = await site.finished(site.factory.submit(bigger, ALICE))
        assert (alices.state, alices.lifecycle.reason) == (J.FAILED, Reason.QUOTA_EXCEEDED)
        assert "the limit per user is 1" in alices.lifecycle.message
        assert len(site.vms.specs) == 1 and running.state is J.RUNNING
    finally:
        site.repository.close()


@pytest_twisted.ensureDeferred
async def test_at_the_quota_a_job_shares_the_least_loaded_instance(tmp_path, credentials):
    site = Site(tmp_path, credentials, Quotas(per_user=1, total=4))
    site.network.job_seconds = None
    try:
        first, second = site.factory.submit(JOB, ALICE), site.factory.submit(JOB, ALICE)
        target = await site.running(first)
        await site.run_until(lambda: second.state is J.RUNNING)
        assert second.instance_id == target.instance_id and len(site.vms.specs) == 1
        # whichever was matched second (the catalogue answers in threads) shares
        assert any(f"sharing instance {target.instance_id}" in line
                   for job in (first, second) for line in job.log)
        assert target.jobs == {first.job_id, second.job_id}
    finally:
        site.repository.close()


@pytest_twisted.ensureDeferred
async def test_a_job_takes_a_warm_pool_instance_and_the_pool_boots_another(tmp_path,
                                                                           credentials):
    site = Site(tmp_path, credentials, Quotas(per_user=2, total=2), pool_interval=10,
                pools=[PoolSpec("warm", image="gridvm-debian12-initramfs", idle=1)])
    admin = Caller.of("root", admin=True)
    site.factory.startService()
    try:
        await site.run_until(lambda: [t.state for t in site.factory.list_instances(admin)]
                             == [InstanceState.READY])
        (warm,) = site.factory.list_instances(admin)
        assert warm.owner == "pool:warm" and warm.keep_idle
        job = await site.finished(site.factory.submit(JOB, ALICE))
        assert job.state is J.SUCCESSFUL and job.instance_id == warm.instance_id
        assert warm.owner == "alice" and not warm.keep_idle
        assert any("from pool warm" in line for line in job.log)
        await site.run_until(lambda: len(site.vms.instances) == 2)
        assert [t.owner for t in site.factory.list_instances(admin)] == ["alice", "pool:warm"]
    finally:
        await site.factory.stopService()
        site.wait(1)  # an instance still booting is taken down on the next turn
        site.repository.close()
    assert site.vms.instances == {}


@pytest_twisted.ensureDeferred
async def test_the_pool_boots_its_replacement_once_the_taking_job_runs(tmp_path, credentials):
    """A boot beside the job that took a pool instance would slow that job's start: the
    replacement waits until the job runs — or REFILL_DELAY seconds, should it never."""
    site = Site(tmp_path, credentials, Quotas(per_user=3, total=3), pool_interval=1,
                pools=[PoolSpec("warm", image="gridvm-debian12-initramfs", idle=1)])
    admin = Caller.of("root", admin=True)
    site.factory.startService()
    try:
        await site.run_until(lambda: [t.state for t in site.factory.list_instances(admin)]
                             == [InstanceState.READY])
        (warm,) = site.factory.list_instances(admin)
        site.agent(warm).stop_answering()  # the job's requests hang: it does not run
        stuck = site.factory.submit(JOB, ALICE)
        await site.run_until(lambda: stuck.job_id in warm.jobs)
        until = site.clock.seconds() + REFILL_DELAY - 2  # the pool checks 8 times meanwhile
        await site.run_until(lambda: site.clock.seconds() >= until)
        assert len(site.vms.specs) == 1 and stuck.state is J.QUEUED
        await site.run_until(lambda: len(site.vms.specs) == 2, limit=3)  # held no longer
        await site.run_until(lambda: len(site.factory.waiting_in_pool(
            site.factory.pools["warm"])) == 1 and site.vms.instances.keys() == {
            t.instance_id for t in site.factory.list_instances(admin) if t.usable})

        (spare,) = site.factory.waiting_in_pool(site.factory.pools["warm"])
        site.factory.pool_interval = 3600  # from now on only a hand-over makes it boot
        job = site.factory.submit(JOB, BOB)
        await site.run_until(lambda: job.state is J.RUNNING)
        assert job.instance_id == spare.instance_id and len(site.vms.specs) == 2
        await site.run_until(lambda: len(site.vms.specs) == 3, limit=1)  # at once
    finally:
        await site.factory.stopService()
        site.wait(1)
        site.repository.close()


@pytest.mark.parametrize("job_seconds", [1.0, None])
@pytest_twisted.ensureDeferred
async def test_a_pool_instance_is_ready_once_a_warm_up_job_ran_through_its_agent(
        tmp_path, credentials, job_seconds):
    """The guest's first job pays for the user's helper and cold code: a pool instance runs
    a no-op one before it waits; one that never ends holds READY back for half the
    CONNECTING deadline only."""
    site = Site(tmp_path, credentials, Quotas(per_user=2, total=2), pool_interval=10,
                pools=[PoolSpec("warm", image="gridvm-debian12-initramfs", idle=1)])
    site.network.job_seconds = job_seconds
    admin = Caller.of("root", admin=True)
    site.factory.startService()
    try:
        await site.run_until(lambda: [t.state for t in site.factory.list_instances(admin)]
                             == [InstanceState.READY])
        (warm,) = site.factory.list_instances(admin)
        agent = site.agent(warm)
        (warm_up,) = agent.jobs.values()
        assert warm_up.workdir == "/home/gridvm/jobs/.gridvm-warm-up" and warm_up.script == "true\n"
        connecting = warm.lifecycle.phase_seconds()["CONNECTING"]
        if job_seconds:
            assert warm_up.ended and f"rm -rf -- {warm_up.workdir}" in agent.scripts
            assert job_seconds <= connecting < job_seconds + 0.5
        else:
            assert connecting == pytest.approx(20 / 2, abs=0.2)  # Site: connecting=20
    finally:
        await site.factory.stopService()
        site.wait(1)
        site.repository.close()


@pytest_twisted.ensureDeferred
async def test_a_job_with_nothing_to_stage_is_submitted_without_a_mkdir(site):
    """gridvm's agent makes the job directory at SUBMIT: one round trip less for a job that
    stages nothing; a job with inputs gets its directory first."""
    plain = await site.finished(site.factory.submit(JOB, ALICE))
    agent = site.agent(site.factory.instance(plain.instance_id, ALICE))
    assert plain.state is J.SUCCESSFUL and agent.requests[1] == "SUBMIT", agent.requests

    def mkdirs() -> list[str]:
        return [script for script in agent.scripts if script.startswith("mkdir")]

    assert not mkdirs() and any("made at submit" in line for line in plain.log)
    staged = await site.finished(site.factory.submit(
        {**JOB, "Imports": [{"From": "inline://dummy", "To": "in.txt", "Data": "x"}]}, ALICE))
    assert staged.state is J.SUCCESSFUL
    assert mkdirs() == [f"mkdir -p {staged.workdir}"]
    assert agent.files[f"{staged.workdir}/in.txt"] == b"x"


@pytest_twisted.ensureDeferred
async def test_abort_ends_a_running_job_and_frees_its_instance(site):
    site.network.job_seconds = None
    job = site.factory.submit(JOB, ALICE)
    target = await site.running(job)
    agent = site.agent(target)
    site.factory.abort(job.job_id, ALICE)
    await site.finished(job)
    assert (job.state, job.lifecycle.reason) == (J.FAILED, Reason.JOB_ABORTED)
    assert agent.jobs[job.bssid].ended == "aborted" and "ABORTJOB" in agent.requests
    assert target.state is InstanceState.READY and not target.jobs


@pytest_twisted.ensureDeferred
async def test_delete_aborts_forgets_and_removes_the_files(site):
    done = await site.finished(site.factory.submit(JOB, ALICE))
    assert done.storage.is_dir()
    site.network.job_seconds = None
    running = site.factory.submit(JOB, ALICE)
    agent = site.agent(await site.running(running))
    deletions = [site.factory.delete(job.job_id, ALICE) for job in (done, running)]
    await site.run_until(lambda: all(d.called for d in deletions))
    assert agent.jobs[running.bssid].ended == "aborted"
    for job in (done, running):
        with pytest.raises(NotFound):
            site.factory.job(job.job_id, ALICE)
        assert not job.storage.exists()
    assert site.factory.list_jobs(ALICE) == []


@pytest_twisted.ensureDeferred
async def test_restart_runs_a_finished_job_again_under_its_id(site):
    first = await site.finished(site.factory.submit(JOB, ALICE))
    again = site.factory.restart(first.job_id, ALICE)
    assert again.job_id == first.job_id and again is not first
    assert site.factory.restart(first.job_id, ALICE) is again  # running: a no-op
    await site.finished(again)
    assert again.state is J.SUCCESSFUL and site.factory.job(first.job_id, ALICE) is again
    assert any("restarted" in line for line in again.log)
    assert len(site.agent(site.factory.instance(again.instance_id, ALICE)).jobs) == 2


@pytest_twisted.ensureDeferred
async def test_a_restart_asked_while_the_runner_tidies_up_runs_right_after(site):
    """A job is SUCCESSFUL once its outputs are kept, before the runner has removed its
    directory from the instance: a restart asked then is not lost."""
    first = site.factory.submit(JOB, ALICE)
    restarted = []
    first.lifecycle.listeners.append(  # the moment it turns SUCCESSFUL, tidy-up ahead
        lambda t: restarted.append(site.factory.restart(first.job_id, ALICE))
        if t.state is J.SUCCESSFUL else None)
    await site.run_until(lambda: bool(restarted))
    [again] = restarted
    assert again is not first and not again.state.terminal  # a client sees the new run
    assert site.factory.job(first.job_id, ALICE) is again
    await site.finished(again)
    assert again.state is J.SUCCESSFUL
    assert any(line.endswith("restarted") for line in again.log)
    assert any("tidied up after the previous run" in line for line in again.log)


@pytest_twisted.ensureDeferred
async def test_a_failed_boot_fails_its_job_with_the_instances_reason(site):
    site.vms.fail_next_boot(GuestCrashed("Kernel panic - not syncing"))
    job = await site.finished(site.factory.submit(JOB, ALICE))
    assert (job.state, job.lifecycle.reason) == (J.FAILED, Reason.GUEST_CRASHED)
    target = site.factory.instance(job.instance_id, ALICE)
    assert target.state is InstanceState.FAILED and site.vms.instances == {}


@pytest_twisted.ensureDeferred
async def test_a_crash_under_a_running_job_fails_it_guest_crashed(site):
    site.network.job_seconds = None
    job = site.factory.submit(JOB, ALICE)
    target = await site.running(job)
    site.vms.crash(target.instance_id)
    await site.finished(job)
    assert (job.state, job.lifecycle.reason) == (J.FAILED, Reason.GUEST_CRASHED)
    assert target.state is InstanceState.FAILED


@pytest_twisted.ensureDeferred
async def test_an_instance_with_a_running_job_ends_only_when_forced(site):
    site.network.job_seconds = None
    job = site.factory.submit(JOB, ALICE)
    target = await site.running(job)
    with pytest.raises(InstanceBusy):
        site.factory.end_instance(target.instance_id, ALICE)
    ended = site.factory.end_instance(target.instance_id, ALICE, force=True)
    await site.run_until(lambda: ended.called)
    assert (job.state, job.lifecycle.reason) == (J.FAILED, Reason.JOB_ABORTED)
    assert target.state is InstanceState.TERMINATED and site.vms.instances == {}


@pytest_twisted.ensureDeferred
async def test_the_exit_code_comes_from_the_kept_copy_of_the_job_directory(site):
    job = await site.finished(site.factory.submit(JOB, ALICE))
    agent = site.agent(site.factory.instance(job.instance_id, ALICE))
    assert (job.state, job.exit_code) == (J.SUCCESSFUL, 0)
    # stdout, stderr and the exit code file copied once; nothing read again for the code
    assert agent.requests.count("GETFILECHUNK") == 3 and "GETJOBDETAILS" not in agent.requests
    assert (job.storage / "UNICORE_SCRIPT_EXIT_CODE").read_text() == "0\n"


@pytest_twisted.ensureDeferred
async def test_a_restarted_run_without_exit_code_does_not_take_the_earlier_runs(site):
    first = await site.finished(site.factory.submit(JOB, ALICE))
    site.network.job_seconds = None
    again = site.factory.restart(first.job_id, ALICE)
    agent = site.agent(await site.running(again))
    agent.finish(again.bssid)
    del agent.files[f"{again.workdir}/UNICORE_SCRIPT_EXIT_CODE"]  # killed before writing it
    await site.finished(again)
    assert (again.state, again.lifecycle.reason, again.exit_code) == (
        J.FAILED, Reason.NONZERO_EXIT, None)
