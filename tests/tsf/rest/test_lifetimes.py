"""Lifetimes, UNICORE style: a job's ``terminationTime`` (set at submission from the site's
job lifetime, moved by ``PUT``, and the job destroyed when it passes), a site's
``terminationTime``, and sites and their jobs that outlive a server restart.

No VM boots here: the jobs wait for their client stage-in (READY) until destroyed.
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest_twisted
from twisted.internet import reactor

from tests.conftest import TEST_ROOT
from tests.tsf.rest.conftest import Http, site_config, write_users
from tests.tsf.rest.test_api import NO_BOOT, error_of, submit
from tsf.rest.http import parse_time
from tsf.service import start_site


def stamp(**delta) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%S+0000")


@pytest_twisted.ensureDeferred
async def test_job_termination_time_is_set_moved_and_destroys_the_job(rest_site):
    site, http = rest_site
    job = await submit(http)
    job_id = job.rsplit("/", 1)[-1]
    props = (await http("GET", job)).json()
    lifetime = parse_time(props["terminationTime"]) - parse_time(props["submissionTime"])
    assert abs(lifetime - 30 * 86400) <= 1  # the site's default job lifetime

    # bad input: 400 naming the problem, nothing changed
    assert "not an ISO 8601" in error_of(await http("PUT", job, json={"terminationTime": "soon"}),
                                        400)
    assert "in the future" in error_of(
        await http("PUT", job, json={"terminationTime": stamp(hours=-1)}), 400)
    assert "at most 30 days" in error_of(
        await http("PUT", job, json={"terminationTime": stamp(days=31)}), 400)
    assert "status" in error_of(await http("PUT", job, json={"status": "SUCCESSFUL"}), 400)
    error_of(await http("PUT", job, user="bob", json={"terminationTime": stamp(days=1)}), 404)
    assert (await http("GET", job)).json()["terminationTime"] == props["terminationTime"]

    wanted = stamp(days=2)
    answer = await http("PUT", job, json={"terminationTime": wanted})
    assert answer.status_code == 200 and answer.json() == {"terminationTime": "OK"}
    assert (await http("GET", job)).json()["terminationTime"] == wanted

    # once its termination time has passed, the sweep destroys it like DELETE does
    factory = site.factory
    assert factory.lifetimes.sweeping  # the periodic sweep runs while the site is up
    (storage := factory.jobs[job_id].storage).mkdir(parents=True, exist_ok=True)
    factory.jobs[job_id].termination = time.time() - 1
    assert factory.expire() == [job_id]
    await factory.store.flush()
    error_of(await http("GET", job), 404)
    assert not storage.exists()
    assert job_id not in {row["id"] for row in await factory.store.load_jobs()}


@pytest_twisted.ensureDeferred
async def test_site_termination_time_is_checked_and_ends_the_site_not_its_jobs(rest_site):
    site, http = rest_site
    for bad, says in (("tomorrow", "not an ISO 8601"), (stamp(hours=-1), "in the past"),
                      (42, "time string")):
        assert says in error_of(await http("POST", "sites", json={"terminationTime": bad}),
                                400)
    wanted = stamp(days=1)
    created = await http("POST", "sites", json={"terminationTime": wanted})
    assert created.status_code == 201
    url = created.headers["location"]
    site_id = url.rsplit("/", 1)[-1]
    assert (await http("GET", url)).json()["terminationTime"] == wanted
    job = (await http("POST", url, json=NO_BOOT)).headers["location"]
    assert (await http("GET", url)).json()["numberOfJobs"] == 1
    assert (await http("GET", f"{url}/jobs")).json()["jobs"] == [job]
    assert (await http("GET", job)).json()["_links"]["parentTSS"]["href"] == url

    site.app.sites.sites[site_id].termination = time.time() - 1
    error_of(await http("GET", url), 404)
    assert url not in (await http("GET", "sites")).json()["sites"]
    await site.factory.store.flush()
    assert site_id not in {row["id"] for row in await site.factory.store.load_sites()}
    props = (await http("GET", job)).json()  # the job stays, without its parent site
    assert props["status"] == "READY" and "parentTSS" not in props["_links"]


@pytest_twisted.ensureDeferred
async def test_sites_and_job_lifetimes_outlive_a_server_restart():
    root = TEST_ROOT / f"lifetimes-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    config = site_config(root, limits={"job_lifetime_days": 2})
    try:
        site = await start_site(config, reactor)
        try:
            http = Http(site.http_base)
            url = (await http("POST", "sites", json={"parameters": {}})).headers["location"]
            job = (await http("POST", url, json=NO_BOOT)).headers["location"]
            before = (await http("GET", job)).json()
            assert (parse_time(before["terminationTime"])
                    - parse_time(before["submissionTime"])) == 2 * 86400
            moved = stamp(days=1)
            assert (await http("PUT", job, json={"terminationTime": moved})).status_code == 200
        finally:
            await site.stopService()

        site = await start_site(config, reactor)
        try:
            http = Http(site.http_base)
            url = url.replace(url.split("/TESTSITE/")[0], site.http_base.split("/TESTSITE/")[0])
            job = job.replace(job.split("/TESTSITE/")[0], site.http_base.split("/TESTSITE/")[0])
            assert url in (await http("GET", "sites")).json()["sites"]
            assert (await http("GET", url)).json()["numberOfJobs"] == 1
            assert (await http("GET", f"{url}/jobs")).json()["jobs"] == [job]
            after = (await http("GET", job)).json()
            assert after["terminationTime"] == moved and after["status"] == "READY"
            error_of(await http("GET", url, user="bob"), 404)
        finally:
            await site.stopService()
    finally:
        shutil.rmtree(root, ignore_errors=True)
