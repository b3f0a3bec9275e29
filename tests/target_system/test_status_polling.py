"""The runner's status requests against a real agent: concurrent polls of one target share
one GETSTATUSLISTING (a TSI without pushed status) or one GRIDVM_WAITSTATUS, which answers
when a job ends, and a failure reaches every poller."""

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from target_system.jobdesc import parse_job
from target_system.jobs import Job, JobRunner
from target_system.lifecycle import JobState
from tests.support.local_agent import AgentProcess
from tsi_bridge.client import TSIClient
from tsi_bridge.errors import TSIError


@pytest.fixture
def agent(tmp_path):
    process = AgentProcess(tmp_path / "agent").start()
    yield process
    process.stop()


@pytest_twisted.ensureDeferred
async def test_concurrent_polls_of_one_target_share_one_request(agent):
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=10)
    sent = []
    real = client.get_status_listing
    client.get_status_listing = lambda: (sent.append(1), real())[1]
    client.unsupported.add("GRIDVM_WAITSTATUS")  # as the official TSI: polled
    target = SimpleNamespace(instance_id="i-1", tsi=client)
    runner = JobRunner(reactor)
    try:
        bssid = await client.submit("sleep 5\n", uspace_dir=str(agent.workdir), runtime=30)
        listings = await defer.gatherResults([runner._status_listing(target) for _ in range(5)])
        assert len(sent) == 1
        assert all(bssid in listing and not pushed for listing, pushed, _ in listings)
        await runner._status_listing(target)  # the next round asks again
        assert len(sent) == 2
        await client.abort_job(bssid)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_waits_share_one_request_answered_when_a_job_ends(agent):
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=10)
    sent = []
    real = client.wait_status
    client.wait_status = lambda seconds: (sent.append(seconds), real(seconds))[1]
    target = SimpleNamespace(instance_id="i-3", tsi=client)
    runner = JobRunner(reactor, poll_interval=20.0)
    try:
        bssid = await client.submit("sleep 0.5\n", uspace_dir=str(agent.workdir))
        listing, pushed, _ = await runner._status_listing(target)  # the first answers at once
        assert pushed and bssid in listing
        started = time.monotonic()
        answers = await defer.gatherResults([runner._status_listing(target) for _ in range(5)])
        assert time.monotonic() - started < 10  # at the job's end, not after the 20 s
        assert len(sent) == 2 and all(bssid not in listing for listing, _, _ in answers)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_listing_fails_every_poller(agent):
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=10)
    target = SimpleNamespace(instance_id="i-2", tsi=client)
    runner = JobRunner(reactor)
    agent.stop()
    results = await defer.DeferredList([runner._status_listing(target) for _ in range(3)],
                                       consumeErrors=True)
    assert [ok for ok, _ in results] == [False, False, False]
    assert all(isinstance(f.value, TSIError) for _, f in results)
    assert runner._listing_waiters == {}
    await client.close()


class HeldTSI:
    """A TSI whose GRIDVM_WAITSTATUS answers come when the test gives them."""

    def __init__(self) -> None:
        self.asked: list[defer.Deferred] = []

    def track(self, bssid: str) -> None:
        pass

    def wait_status(self, seconds: float) -> defer.Deferred:
        self.asked.append(defer.Deferred())
        return self.asked[-1]


@pytest_twisted.ensureDeferred
async def test_a_listing_asked_for_before_the_submit_does_not_end_the_job(tmp_path: Path):
    """The shared request may be answered before the job's submit reached the TSI (on
    another connection): its listing lacks the job although it runs."""
    tsi = HeldTSI()
    target = SimpleNamespace(instance_id="i-4", tsi=tsi, usable=True, detached=False)
    runner = JobRunner(reactor)
    job = Job("alice", parse_job({"Executable": "true"}), reactor, tmp_path)
    job.lifecycle.advance(JobState.STAGINGIN)
    job.lifecycle.advance(JobState.QUEUED)
    job.bssid = "2"
    runner._status_listing(target)  # another job's request, in flight
    monitored = defer.Deferred.fromCoroutine(runner._monitor(job, target))
    tsi.asked[0].callback({"1": "RUNNING"})  # computed before job 2 was submitted
    assert job.state is JobState.RUNNING and len(tsi.asked) == 2  # asked again
    tsi.asked[1].callback({})  # asked after the submit: job 2 ended
    await monitored
    assert job.state is JobState.STAGINGOUT
