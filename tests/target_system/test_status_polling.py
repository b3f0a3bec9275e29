"""The runner's status requests against a real agent: concurrent polls of one target share
one GETSTATUSLISTING (a TSI without pushed status) or one GRIDVM_WAITSTATUS, which answers
when a job ends, and a failure reaches every poller."""

import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from target_system.jobs import JobRunner
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
        assert all(bssid in listing and not pushed for listing, pushed in listings)
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
        listing, pushed = await runner._status_listing(target)  # the first answers at once
        assert pushed and bssid in listing
        started = time.monotonic()
        answers = await defer.gatherResults([runner._status_listing(target) for _ in range(5)])
        assert time.monotonic() - started < 10  # at the job's end, not after the 20 s
        assert len(sent) == 2 and all(bssid not in listing for listing, _ in answers)
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
