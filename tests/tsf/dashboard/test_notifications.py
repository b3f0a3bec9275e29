"""UNICORE Notification: the site POSTs a job's status to a real receiver on loopback."""

from __future__ import annotations

import contextlib
import json

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from target_system.jobdesc import parse_job
from tests.e2e.conftest import ALICE
from tests.tsf.rest.conftest import running_site


class Receiver(resource.Resource):
    """Answers 503 to the first ``refuse`` POSTs, then 200; keeps what it got."""

    isLeaf = True

    def __init__(self, refuse: int = 0):
        super().__init__()
        self.refuse, self.got, self.attempts = refuse, [], 0
        self.arrived = defer.Deferred()

    def render_POST(self, request):
        self.attempts += 1
        if self.attempts <= self.refuse:
            request.setResponseCode(503)
            return b"busy"
        self.got.append(json.loads(request.content.read()))
        if not self.arrived.called:
            self.arrived.callback(None)
        return b"ok"


@contextlib.asynccontextmanager
async def receiving(built_images, receiver: Receiver):
    """(site, http, prefix): a site that may notify the receiver, listening under prefix."""
    port = reactor.listenTCP(0, server.Site(receiver), interface="127.0.0.1")
    prefix = f"http://127.0.0.1:{port.getHost().port}/"
    try:
        async with running_site(built_images, transfers={"url_prefixes": [prefix]}) as (
                site, http):
            yield site, http, prefix
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_status_is_posted_with_retries_and_bad_settings_are_refused(built_images):
    receiver = Receiver(refuse=1)
    async with receiving(built_images, receiver) as (site, http, prefix):
        job = site.factory.submit(parse_job({
            "Executable": "/bin/true", "Notification": prefix + "hook",
            "NotificationSettings": {"status": ["FAILED"]}}), ALICE, start=False)
        await task.deferLater(reactor, 1.0, lambda: None)
        site.factory.abort(job.job_id, ALICE)
        await receiver.arrived.addTimeout(30, reactor)
        [doc] = receiver.got
        assert doc["status"] == "FAILED" and doc["jobId"] == job.job_id
        assert doc["href"].endswith(f"/jobs/{job.job_id}")
        assert receiver.attempts == 2  # the 503 was retried

        unknown = await http("POST", "jobs", json={
            "Executable": "/bin/true", "Notification": prefix + "hook",
            "NotificationSettings": {"states": ["FAILED"]}})
        assert unknown.status_code == 400
        assert "NotificationSettings.states" in unknown.json()["errorMessage"]
        elsewhere = await http("POST", "jobs", json={
            "Executable": "/bin/true", "Notification": "http://127.0.0.2:9/hook"})
        assert elsewhere.status_code == 400
        assert "does not send to" in elsewhere.json()["errorMessage"]


@pytest_twisted.ensureDeferred
async def test_a_state_shorter_than_any_look_is_notified_too(built_images):
    """The notifier hears of each transition: a state left within the same turn of the
    reactor is still posted, in order."""
    from target_system.lifecycle import JobState

    receiver = Receiver()
    async with receiving(built_images, receiver) as (site, _http, prefix):
        job = site.factory.submit(parse_job({
            "Executable": "/bin/true", "Notification": prefix + "hook",
            "NotificationSettings": {"status": ["STAGINGIN", "FAILED"]}}), ALICE,
            start=False)
        job.lifecycle.advance(JobState.STAGINGIN)
        job.lifecycle.advance(JobState.QUEUED)
        site.factory.abort(job.job_id, ALICE)
        for _ in range(100):
            if len(receiver.got) >= 2:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert [doc["status"] for doc in receiver.got] == ["STAGINGIN", "FAILED"]
