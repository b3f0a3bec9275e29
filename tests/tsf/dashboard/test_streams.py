"""The event stream and the metrics over real sockets, with Basic credentials (no browser)."""

from __future__ import annotations

import json
import time

import httpx
import pytest_twisted
from twisted.internet import reactor, task, threads

from target_system.jobdesc import parse_job
from target_system.lifecycle import JobState
from tests.e2e.conftest import ALICE, BOB
from tests.tsf.rest.conftest import PASSWORDS


def _read_events(url: str, user: str, count: int, **params) -> list[tuple[str, dict]]:
    """The first ``count`` events of the stream (blocking; run in a thread)."""
    events, kind = [], None
    with httpx.Client(timeout=20) as client, client.stream(
            "GET", url, params=params, auth=(user, PASSWORDS[user])) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if len(events) == count:
                    return events
    return events


@pytest_twisted.ensureDeferred
async def test_the_stream_pushes_a_state_change_and_only_the_callers_jobs(dash_site):
    site, _http, dashboard = dash_site
    url = dashboard.removesuffix("/dashboard") + "/events"
    mine = site.factory.submit(parse_job({"Executable": "/bin/true"}), ALICE, start=False)
    bobs = site.factory.submit(parse_job({"Executable": "/bin/true"}), BOB, start=False)
    reading = threads.deferToThread(_read_events, url, "alice", 2, job=mine.job_id)
    await task.deferLater(reactor, 1.5, lambda: None)
    site.factory.abort(mine.job_id, ALICE)
    events = await reading
    assert [(kind, data["id"], data["state"]) for kind, data in events] == [
        ("job", mine.job_id, "READY"), ("job", mine.job_id, "FAILED")]
    everything = await threads.deferToThread(_read_events, url, "alice", 1)
    assert bobs.job_id not in {data["id"] for _kind, data in everything}

    def refused():
        with httpx.Client(timeout=10) as client:
            return (client.get(url).status_code,
                    client.get(url, params={"job": bobs.job_id},
                               auth=("alice", PASSWORDS["alice"])).json()["reason"])

    assert await threads.deferToThread(refused) == (401, "NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_the_stream_shows_every_state_however_briefly_it_lasted(dash_site):
    """Changes are pushed as they happen: states a job passes through within one turn of
    the reactor (far quicker than any poll) all reach the client, in order."""
    site, _http, dashboard = dash_site
    url = dashboard.removesuffix("/dashboard") + "/events"
    job = site.factory.submit(parse_job({"Executable": "/bin/true"}), ALICE, start=False)
    reading = threads.deferToThread(_read_events, url, "alice", 4, job=job.job_id)
    reading.addTimeout(30, reactor)  # a missed state would leave the reader waiting
    await task.deferLater(reactor, 1.5, lambda: None)
    job.lifecycle.advance(JobState.STAGINGIN)
    job.lifecycle.advance(JobState.QUEUED)
    site.factory.abort(job.job_id, ALICE)
    events = await reading
    assert [data["state"] for _kind, data in events] == [
        "READY", "STAGINGIN", "QUEUED", "FAILED"]


@pytest_twisted.ensureDeferred
async def test_metrics_for_administrators_only(dash_site):
    site, _http, dashboard = dash_site
    url = dashboard.removesuffix("/dashboard") + "/metrics"
    job = site.factory.submit(parse_job({"Executable": "/bin/true"}), ALICE, start=False)
    site.factory.abort(job.job_id, ALICE)

    def scrape():
        with httpx.Client(timeout=30) as client:
            bad = client.get(url, auth=("alice", "wrong"))
            return (client.get(url).status_code,
                    client.get(url, auth=("alice", PASSWORDS["alice"])).status_code,
                    bad.status_code,
                    client.get(url, auth=("root", PASSWORDS["root"])))

    anonymous, alice, wrong, root = await threads.deferToThread(scrape)
    assert (anonymous, alice, wrong) == (401, 403, 403)
    assert root.status_code == 200
    assert root.headers["content-type"].startswith("text/plain; version=")
    text = root.text
    for name in ("gridvm_instances", "gridvm_boots_total", "gridvm_boot_seconds_bucket",
                 "gridvm_tsi_round_trip_seconds", "gridvm_store_bytes",
                 "gridvm_site_storage_bytes"):
        assert name in text, name
    assert 'gridvm_jobs{reason="' in text and 'state="FAILED"' in text
    assert 'gridvm_host_up{host="default",state="UP"} 1.0' in text
    assert 'gridvm_host_used_vcpus{host="default"} 0.0' in text
    stored = [line for line in text.splitlines() if line.startswith("gridvm_store_bytes ")]
    assert float(stored[0].split()[1]) > 1e6  # the test images' blobs
    failed = [line for line in text.splitlines()
              if line.startswith("gridvm_failed_logins_total ")]
    assert float(failed[0].split()[1]) >= 1


@pytest_twisted.ensureDeferred
async def test_gridvm_wait_follows_the_stream_not_the_poll_interval(dash_site):
    """With a 30 s poll interval, a job aborted after 1 s is seen as FAILED at once: the
    client polls when the site pushes a change."""
    from client.api import Job, Site

    site, http, _dashboard = dash_site
    job = site.factory.submit(parse_job({"Executable": "/bin/true"}), ALICE, start=False)
    client = Site(http.base, "alice", PASSWORDS["alice"])

    def wait():
        started = time.monotonic()
        status = Job(client, f"{http.base}/jobs/{job.job_id}").wait(timeout=20, interval=30)
        return status, time.monotonic() - started

    waiting = threads.deferToThread(wait)
    await task.deferLater(reactor, 1.0, lambda: None)
    site.factory.abort(job.job_id, ALICE)
    status, seconds = await waiting
    assert status == "FAILED" and seconds < 5


@pytest_twisted.ensureDeferred
async def test_a_session_stream_ends_at_logout(dash_site):
    _site, _http, dashboard = dash_site
    url = dashboard.removesuffix("/dashboard") + "/events"

    def session_stream():
        import re

        with httpx.Client(timeout=20) as client:
            page = client.get(dashboard + "/login")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            client.post(dashboard + "/login", data={"csrf": token, "user": "alice",
                                                    "password": PASSWORDS["alice"]})
            csrf = re.search(r'name="csrf" value="([^"]+)"',
                             client.get(dashboard + "/jobs").text).group(1)
            started = time.monotonic()
            with httpx.Client(timeout=20, cookies=client.cookies) as streaming, \
                    streaming.stream("GET", url) as answer:
                assert answer.status_code == 200
                client.post(dashboard + "/logout", data={"csrf": csrf})
                for _line in answer.iter_lines():
                    pass  # ends when the site closes the stream
            return time.monotonic() - started

    assert await threads.deferToThread(session_stream) < 5
