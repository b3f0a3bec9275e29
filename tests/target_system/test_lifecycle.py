"""State machines and deadlines, driven deterministically by a Clock."""

import pytest
from twisted.internet.task import Clock

from target_system.lifecycle import (
    IllegalTransition,
    InstanceState,
    JobState,
    instance_lifecycle,
    job_lifecycle,
)

S = InstanceState


def test_happy_path_stamps_every_phase():
    clock = Clock()
    life = instance_lifecycle(clock)
    seen = []
    life.listeners.append(seen.append)
    for state, after in [(S.STAGING, 1), (S.BOOTING, 2), (S.CONNECTING, 4), (S.READY, 0.5),
                         (S.BUSY, 3), (S.READY, 1), (S.BUSY, 2), (S.READY, 1)]:
        clock.advance(after)
        life.advance(state)
    assert [t.state for t in seen][:4] == [S.STAGING, S.BOOTING, S.CONNECTING, S.READY]
    assert life.entered["BOOTING"] == 3.0
    phases = life.phase_seconds()
    assert phases["REQUESTED"] == 1 and phases["STAGING"] == 2 and phases["BOOTING"] == 4
    assert phases["BUSY"] == 2 and phases["READY"] == 3 + 2  # summed over visits
    life.advance(S.DRAINING)
    life.advance(S.TERMINATED)
    assert life.terminal and life.reason is None
    assert "TERMINATED" not in life.phase_seconds()


@pytest.mark.parametrize(("state", "reason"), [
    (S.STAGING, "IMAGE_UNAVAILABLE"), (S.BOOTING, "BOOT_TIMEOUT"),
    (S.CONNECTING, "TSI_UNREACHABLE"),
])
def test_a_passed_deadline_fails_with_the_phases_reason(state, reason):
    clock = Clock()
    life = instance_lifecycle(clock, {S.STAGING: 30, S.BOOTING: 60, S.CONNECTING: 20})
    path = [S.STAGING, S.BOOTING, S.CONNECTING]
    for step in path[: path.index(state) + 1]:
        life.advance(step)
    clock.advance(100)
    assert life.state is S.FAILED
    assert life.reason == reason
    assert state.name.lower() in life.message and "took longer than" in life.message


def test_leaving_a_phase_in_time_disarms_its_deadline():
    clock = Clock()
    life = instance_lifecycle(clock, {S.BOOTING: 60})
    life.advance(S.STAGING)
    life.advance(S.BOOTING)
    clock.advance(59)
    life.advance(S.CONNECTING)
    clock.advance(1000)
    assert life.state is S.CONNECTING
    assert clock.getDelayedCalls() == []


def test_illegal_transitions_are_refused():
    life = instance_lifecycle(Clock())
    with pytest.raises(IllegalTransition, match="REQUESTED -> READY"):
        life.advance(S.READY)
    life.fail("HYPERVISOR_ERROR", "libvirt said no")
    assert life.fail("BOOT_TIMEOUT", "late") is None  # terminal: the first reason stays
    assert life.reason == "HYPERVISOR_ERROR"
    with pytest.raises(IllegalTransition):
        life.advance(S.STAGING)


def test_failed_is_reachable_from_every_live_state():
    for state in S:
        life = instance_lifecycle(Clock())
        life.state = state
        if state.terminal:
            assert life.fail("X", "y") is None
        else:
            assert life.fail("GUEST_CRASHED", "gone").state is S.FAILED


def test_job_runtime_deadline_is_runtime_exceeded():
    clock = Clock()
    job = job_lifecycle(clock, {JobState.RUNNING: 5})
    for state in (JobState.STAGINGIN, JobState.QUEUED, JobState.RUNNING):
        job.advance(state)
    clock.advance(5)
    assert job.state is JobState.FAILED and job.reason == "RUNTIME_EXCEEDED"


def test_restore_keeps_history_and_counts_the_deadline_from_the_first_entry():
    clock = Clock()
    clock.advance(1000)
    job = job_lifecycle(clock, {JobState.RUNNING: 60})
    job.restore(JobState.RUNNING, [["READY", 900], ["STAGINGIN", 910], ["QUEUED", 950],
                                   ["RUNNING", 960]])
    assert job.state is JobState.RUNNING and job.entered["STAGINGIN"] == 910
    clock.advance(19)
    assert job.state is JobState.RUNNING
    clock.advance(1)  # 60 s after 960
    assert job.state is JobState.FAILED and job.reason == "RUNTIME_EXCEEDED"
