"""Requirements in, a VM booted from the best image, a job run through the TSI, outputs out.

Real VMs through libvirt + QEMU, the real agent inside, mutual TLS on the TSI link.
"""

import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from target_system.instance import Deadlines, HealthPolicy
from target_system.jobdesc import JobDescriptionError
from target_system.lifecycle import InstanceState, JobState
from tests.e2e.conftest import ALICE, BOB, make_factory
from tsf.factory import NotFound, Quotas
from vmm.hypervisor import DomainState

pytestmark = pytest.mark.vm

INITRAMFS = {"Image": "gridvm-debian12-initramfs"}


async def wait_state(job, states, timeout=120.0):
    for _ in range(int(timeout / 0.1)):
        if job.state in states:
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"job stuck in {job.state.name}: {job.log}")


async def finished(factory, job, caller=ALICE, timeout=240.0):
    return await factory.wait(job.job_id, caller).addTimeout(timeout, reactor)


@pytest_twisted.ensureDeferred
async def test_happy_path_outputs_outlive_the_vm_and_instance_is_reused(site):
    factory, _repo, _root = site
    job = factory.submit({
        "Executable": "/bin/sh", "Arguments": ["-c", "cat in.txt; echo $GREETING; id -un"],
        "Environment": ["GREETING=hello from the VM"],
        "Imports": [{"From": "inline://dummy", "To": "in.txt", "Data": "staged input\n"}],
        "Resources": {**INITRAMFS, "Runtime": "5min"},
    }, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert job.exit_code == 0
    stdout = (job.storage / "stdout").read_text()
    assert stdout == "staged input\nhello from the VM\ngridvm\n"
    assert (job.storage / "in.txt").read_text() == "staged input\n"
    phases = job.lifecycle.phase_seconds()
    assert {"READY", "STAGINGIN", "QUEUED", "RUNNING", "STAGINGOUT"} <= set(phases)
    target = factory.instance(job.instance_id, ALICE)
    assert target.state is InstanceState.READY
    booted = target.lifecycle.phase_seconds()
    assert all(booted[p] > 0 for p in ("STAGING", "BOOTING", "CONNECTING"))

    # The same owner and image: the idle instance is reused, no new boot.
    again = factory.submit({"ApplicationName": "python3",
                            "Arguments": ["-c", "print(6 * 7)"],
                            "Resources": INITRAMFS}, ALICE)
    await finished(factory, again)
    assert again.state is JobState.SUCCESSFUL, again.log
    assert again.instance_id == job.instance_id
    assert (again.storage / "stdout").read_text() == "42\n"
    assert len(factory.instances) == 1

    # The VM goes away; the outputs stay.
    await target.terminate("test")
    assert target.state is InstanceState.TERMINATED
    assert await factory.vmm.state(target.instance_id) == DomainState.GONE
    assert (job.storage / "stdout").read_text().startswith("staged input")


@pytest_twisted.ensureDeferred
async def test_exit_codes_runtime_and_abort(site):
    factory, _repo, _root = site
    failing = factory.submit({"Executable": "sh", "Arguments": ["-c", "echo oops >&2; exit 3"],
                              "Resources": INITRAMFS}, ALICE)
    await finished(factory, failing)
    assert failing.state is JobState.FAILED
    assert failing.lifecycle.reason == "NONZERO_EXIT" and failing.exit_code == 3
    assert "<3>" in failing.status_message
    assert (failing.storage / "stderr").read_text() == "oops\n"

    tolerated = factory.submit({"Executable": "sh", "Arguments": ["-c", "exit 4"],
                                "IgnoreNonZeroExitCode": "true", "Resources": INITRAMFS}, ALICE)
    await finished(factory, tolerated)
    assert tolerated.state is JobState.SUCCESSFUL and tolerated.exit_code == 4

    slow = factory.submit({"Executable": "sleep", "Arguments": ["60"],
                           "Resources": {**INITRAMFS, "Runtime": "3s"}}, ALICE)
    await finished(factory, slow)
    assert slow.state is JobState.FAILED and slow.lifecycle.reason == "RUNTIME_EXCEEDED", slow.log
    assert slow.lifecycle.phase_seconds()["RUNNING"] < 30

    long = factory.submit({"Executable": "sleep", "Arguments": ["120"],
                           "Resources": INITRAMFS}, ALICE)
    await wait_state(long, {JobState.RUNNING})
    factory.abort(long.job_id, ALICE)
    await finished(factory, long)
    assert long.state is JobState.FAILED and long.lifecycle.reason == "JOB_ABORTED"
    target = factory.instance(long.instance_id, ALICE)
    listing = await target.tsi.get_status_listing(all_jobs=True)
    assert long.bssid not in listing  # really stopped in the guest
    assert len(factory.instances) == 1  # all four on one instance


@pytest_twisted.ensureDeferred
async def test_an_application_version_constraint_matches_and_runs(site):
    """``python3 >=3.10`` picks an image whose IDB has python3 3.11.x, and the job runs that
    entry (it used to match and then fail: "python3 is not in the image's IDB")."""
    factory, _repo, _root = site
    job = factory.submit({"ApplicationName": "python3", "ApplicationVersion": ">=3.10, <4",
                          "Arguments": ["-c", "import sys; print(sys.version_info >= (3, 10))"],
                          "Resources": INITRAMFS}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text() == "True\n"


@pytest_twisted.ensureDeferred
async def test_no_matching_image_says_why_per_image(site):
    factory, _repo, _root = site
    job = factory.submit({"Executable": "true", "Resources": {
        "OperatingSystem": "ubuntu", "OperatingSystemVersion": ">=22.04"}}, ALICE)
    await finished(factory, job)
    assert job.state is JobState.FAILED and job.lifecycle.reason == "NO_MATCHING_IMAGE"
    assert {r["ref"].split(":")[0] for r in job.rejections} == {
        "gridvm-debian12-initramfs", "gridvm-debian12-qcow2"}
    assert all(r["reasons"] for r in job.rejections)
    assert "debian" in job.status_message
    assert factory.instances == {}


def test_bad_description_is_refused_before_anything_happens(site):
    factory, _repo, _root = site
    with pytest.raises(JobDescriptionError, match=r"Resources\.Imagee"):
        factory.submit({"Executable": "true", "Resources": {"Imagee": "x"}}, ALICE)
    assert factory.jobs == {}


@pytest_twisted.ensureDeferred
async def test_users_see_only_their_own_jobs_and_instances(site):
    factory, _repo, _root = site
    job = factory.submit({"Executable": "true", "Resources": {"Image": "nope"}}, ALICE)
    await finished(factory, job)
    with pytest.raises(NotFound):
        factory.job(job.job_id, BOB)
    assert factory.list_jobs(BOB) == []
    assert factory.list_jobs(ALICE) == [job]


@pytest_twisted.ensureDeferred
async def test_quota_exceeded(vmm, site):
    factory, repository, root = site
    limited = make_factory(vmm, root, repository, factory.credentials, quotas=Quotas(1, 8))
    first = limited.submit({"Executable": "sleep", "Arguments": ["30"],
                            "Resources": INITRAMFS}, ALICE)
    await wait_state(first, {JobState.RUNNING})
    second = limited.submit({"Executable": "true", "Resources": {
        "Image": "gridvm-debian12-qcow2"}}, ALICE)
    await finished(limited, second)
    assert second.state is JobState.FAILED and second.lifecycle.reason == "QUOTA_EXCEEDED"
    assert "limit per user is 1" in second.status_message
    # The same image: rather than fail, the job shares the busy instance.
    shared = limited.submit({"Executable": "echo", "Arguments": ["shared"],
                             "Resources": INITRAMFS}, ALICE)
    await finished(limited, shared)
    assert shared.state is JobState.SUCCESSFUL and shared.instance_id == first.instance_id
    assert first.state is JobState.RUNNING
    limited.abort(first.job_id, ALICE)
    await finished(limited, first)
    for target in limited.instances.values():
        await target.terminate("test over")


@pytest_twisted.ensureDeferred
async def test_concurrent_jobs_share_an_instance_with_room_and_spill_over(site):
    factory, _repo, _root = site
    two_cpus = {**INITRAMFS, "CPUs": 2}
    # Each job marks that it runs, then waits (60 s at most) to see the other's mark: both
    # print "saw" only if they really ran at the same time (timestamps would depend on load).
    wait_for_other = ("touch /tmp/overlap-{me}; for n in $(seq 600); do "
                      "[ -e /tmp/overlap-{other} ] && echo saw && exit 0; sleep 0.1; done; "
                      "echo alone")
    jobs = [factory.submit({"Executable": "sh",
                            "Arguments": ["-c", wait_for_other.format(me=i, other=1 - i)],
                            "Resources": two_cpus}, ALICE) for i in range(2)]
    one_cpu = [factory.submit({"Executable": "sh", "Arguments": ["-c", f"echo {i}"],
                               "Resources": {"Image": "gridvm-debian12-qcow2"}}, ALICE)
               for i in range(2)]
    for job in jobs + one_cpu:
        await finished(factory, job)
        assert job.state is JobState.SUCCESSFUL, job.log
    assert jobs[0].instance_id == jobs[1].instance_id  # 2 vCPUs: both at once
    assert [(j.storage / "stdout").read_text() for j in jobs] == ["saw\n", "saw\n"]
    assert one_cpu[0].instance_id != one_cpu[1].instance_id  # 1 vCPU each: two instances
    assert [(j.storage / "stdout").read_text() for j in one_cpu] == ["0\n", "1\n"]


@pytest_twisted.ensureDeferred
async def test_guest_destroyed_mid_job_fails_job_and_instance(site):
    factory, _repo, _root = site
    job = factory.submit({"Executable": "sleep", "Arguments": ["120"],
                          "Resources": INITRAMFS}, ALICE)
    await wait_state(job, {JobState.RUNNING})
    target = factory.instance(job.instance_id, ALICE)
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", target.vm.domain],
                   check=True, capture_output=True)
    await finished(factory, job)
    assert job.state is JobState.FAILED and job.lifecycle.reason == "GUEST_CRASHED", job.log
    assert target.state is InstanceState.FAILED
    assert target.lifecycle.reason == "GUEST_CRASHED"
    for _ in range(50):
        if not factory.vmm.instance_dir(target.instance_id).exists():
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert not factory.vmm.instance_dir(target.instance_id).exists()


#: A root hook in the guest: a job (running as an unprivileged user) asks for the agent to
#: be killed by creating a file; "break" also stops busybox init from respawning it.
AGENT_KILLER = b"""
(
while true; do
    if [ -e /tmp/kill-agent ] || [ -e /tmp/break-agent ]; then
        if [ -e /tmp/break-agent ]; then
            printf '#!/bin/sh\nexec sleep 100000\n' > /etc/gridvm/agent.new
            chmod 755 /etc/gridvm/agent.new && mv /etc/gridvm/agent.new /etc/gridvm/agent
        fi
        for p in /proc/[0-9]*; do
            if grep -q tsi_bridge.agent "$p/cmdline" 2>/dev/null; then
                kill -9 "${p#/proc/}" && echo "${p#/proc/}" >> /tmp/agent-killed
            fi
        done
        rm -f /tmp/kill-agent /tmp/break-agent
    fi
    sleep 0.2
done
) </dev/null >/dev/null 2>&1 &
"""


@pytest_twisted.ensureDeferred
async def test_agent_killed_in_the_guest_is_respawned_and_the_job_finishes(vmm, site):
    factory, repository, root = site
    hooked = make_factory(vmm, root, repository, factory.credentials,
                          context_hooks={"50-agent-killer": AGENT_KILLER})
    job = hooked.submit({"Executable": "sh", "Arguments": [
        "-c", "touch /tmp/kill-agent; sleep 6; echo survived"], "Resources": INITRAMFS}, ALICE)
    await finished(hooked, job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text() == "survived\n"
    target = hooked.instance(job.instance_id, ALICE)
    killed = await target.tsi.execute_script("cat /tmp/agent-killed")
    assert killed.split(), "the agent was never killed"  # the test really killed it
    await target.terminate("test over")


@pytest_twisted.ensureDeferred
async def test_agent_gone_for_good_is_tsi_lost(vmm, site):
    factory, repository, root = site
    hooked = make_factory(vmm, root, repository, factory.credentials,
                          context_hooks={"50-agent-killer": AGENT_KILLER},
                          health=HealthPolicy(interval=1, missed_budget=3, ping_timeout=2,
                                              idle_timeout=None))
    job = hooked.submit({"Executable": "sh", "Arguments": [
        "-c", "touch /tmp/break-agent; sleep 120"], "Resources": INITRAMFS}, ALICE)
    await finished(hooked, job)
    assert job.state is JobState.FAILED and job.lifecycle.reason == "TSI_LOST", job.log
    target = hooked.instance(job.instance_id, ALICE)
    assert target.state is InstanceState.FAILED and target.lifecycle.reason == "TSI_LOST"
    for _ in range(50):
        if await vmm.state(target.instance_id) == DomainState.GONE:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert await vmm.state(target.instance_id) == DomainState.GONE


@pytest_twisted.ensureDeferred
async def test_boot_deadline_passed(vmm, site):
    factory, repository, root = site
    hasty = make_factory(vmm, root, repository, factory.credentials,
                         deadlines=Deadlines(staging=60, booting=0.5, connecting=30))
    job = hasty.submit({"Executable": "true", "Resources": INITRAMFS}, ALICE)
    await finished(hasty, job)
    assert job.state is JobState.FAILED and job.lifecycle.reason == "BOOT_TIMEOUT", job.log
    (target,) = hasty.instances.values()
    assert target.state is InstanceState.FAILED
    assert job.instance_id == target.instance_id  # named from the moment it was picked
    assert await vmm.state(target.instance_id) == DomainState.GONE
    assert not vmm.instance_dir(target.instance_id).exists()
