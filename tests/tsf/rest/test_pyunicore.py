"""pyunicore 2.x, unmodified, against the REST site: real VMs, real sockets, HTTP and HTTPS.

All of alice's jobs run one after the other on one reused instance (the factory reuses an idle
instance of the same image and owner), so the module boots a single VM.  pyunicore is
blocking: every client call runs in a thread while the reactor serves.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest
import pytest_twisted
from pyunicore import client as uc
from pyunicore import credentials
from pyunicore.aio import client as aio
from twisted.internet import threads

from tests.tsf.rest.conftest import HIDDEN, PASSWORDS, PUBLIC

pytestmark = pytest.mark.vm

IMAGE = {"Image": PUBLIC}


def alice(base: str) -> uc.Client:
    return uc.Client(credentials.UsernamePassword("alice", PASSWORDS["alice"]), base)


def wait(job: uc.Job, states=("SUCCESSFUL", "FAILED"), timeout=180.0) -> str:
    """Poll faster than pyunicore's 6 s (a cache-less view of the same job)."""
    fresh = uc.Job(job.transport, job.resource_url, cache_time=0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fresh.properties["status"]
        if status in states:
            return status
        time.sleep(0.3)
    raise AssertionError(f"{job.resource_url} still {status}: {fresh.properties['log']}")


def fresh(job: uc.Job) -> dict:
    """The job's properties now (pyunicore caches them for 5 s)."""
    return uc.Job(job.transport, job.resource_url, cache_time=0).properties


def in_thread(function, *args):
    return threads.deferToThread(function, *args)


@pytest_twisted.ensureDeferred
async def test_https_image_job_with_input_then_files_and_range(rest_site, tmp_path):
    site, _http = rest_site
    assert site.https_base.startswith("https://")
    source = tmp_path / "input.txt"
    source.write_text("hello from the client\n")

    def scenario():
        client = alice(site.https_base)  # self-signed certificate: pyunicore's verify=False
        assert client.access_info()["role"]["selected"] == "user"
        assert client.server_version_info() == (10, 2, 0)
        compute = client.get_compute()
        assert len(compute) == 1
        queues = compute[0].get_queues()
        assert queues["batch"]["Image"] == [PUBLIC]
        names = [f"{a.name}---v{a.version}" for a in compute[0].get_applications()]
        assert "CONTAINER---v1.0" in names and HIDDEN not in str(names)

        job = client.new_job({"Executable": "/bin/sh",
                              "Arguments": ["-c", "cat input.txt; seq 1 1000 | tr -d '\\n'"],
                              "Resources": {**IMAGE, "Runtime": "10min"}},
                             inputs=[str(source)])
        job.poll()  # pyunicore's own polling, once
        assert job.status == uc.JobStatus.SUCCESSFUL, job.properties["log"]
        assert job.properties["exitCode"] == "0" and job.exit_code == 0
        wd = job.working_dir
        listing = wd.listdir()
        assert {"input.txt", "stdout", "stderr"} <= set(listing)
        stdout = wd.stat("stdout")
        text = stdout.read().decode()
        assert text.startswith("hello from the client\n12345")
        assert stdout.read(offset=22, size=5) == b"12345"
        assert wd.stat("input.txt").read() == b"hello from the client\n"
        return job

    job = await in_thread(scenario)
    job_id = job.resource_url.rsplit("/", 1)[1]
    phases = site.factory.jobs[job_id].lifecycle.phase_seconds()
    assert {"STAGINGIN", "RUNNING", "STAGINGOUT"} <= set(phases)


@pytest_twisted.ensureDeferred
async def test_http_application_and_container_jobs_reuse_the_instance(rest_site):
    site, http = rest_site

    def scenario():
        client = alice(site.http_base)
        python = client.new_job({"ApplicationName": "python3",
                                 "Arguments": ["-c", "print(6 * 7)"]})
        assert wait(python) == "SUCCESSFUL"
        assert python.working_dir.stat("stdout").read() == b"42\n"
        python.restart()  # UNICORE's restart: the finished job runs again, same id
        assert wait(python) == "SUCCESSFUL"
        assert any("restarted" in line for line in fresh(python)["log"])
        container = client.new_job({"ApplicationName": "CONTAINER",
                                    "Parameters": {"IMAGE_URL": PUBLIC,
                                                   "COMMAND": "echo in the container"}})
        assert wait(container) == "SUCCESSFUL"
        assert container.working_dir.stat("stdout").read() == b"in the container\n"
        hidden = client.new_job({"ApplicationName": "CONTAINER",
                                 "Parameters": {"IMAGE_URL": HIDDEN, "COMMAND": "true"}})
        assert wait(hidden) == "FAILED"
        assert "CONTAINER_UNKNOWN" in fresh(hidden)["statusMessage"]
        return python, container

    python, container = await in_thread(scenario)
    jobs = [site.factory.jobs[j.resource_url.rsplit("/", 1)[1]] for j in (python, container)]
    assert jobs[0].instance_id == jobs[1].instance_id
    assert len(site.factory.instances) == 1

    instances = (await http("GET", "instances")).json()
    assert instances["instances"] == [f"{http.base}/instances/{jobs[0].instance_id}"]
    detail = instances["details"][0]
    assert detail["state"] in ("READY", "BUSY") and detail["image"] == PUBLIC
    assert {"STAGING", "BOOTING", "CONNECTING"} <= set(detail["phases"])
    assert (await http("GET", f"instances/{jobs[0].instance_id}", user="bob")).status_code == 404


@pytest_twisted.ensureDeferred
async def test_running_job_files_in_the_guest_symlinks_abort_and_delete(rest_site):
    site, _http = rest_site

    def scenario():
        client = alice(site.http_base)
        job = client.new_job({"Executable": "/bin/sh",
                              "Arguments": ["-c", "ln -s /etc outside; echo started; "
                                                  "exec sleep 120"],
                              "Resources": IMAGE})
        assert wait(job, ("RUNNING",)) == "RUNNING"
        time.sleep(0.5)
        wd = job.working_dir  # pyunicore waits for READY here
        wd.put(b"uploaded while running\n", "sub/dir/note.txt")
        wd.mkdir("made")
        wd.copy("sub/dir/note.txt", "made/copy.txt")
        assert wd.stat("made/copy.txt").read() == b"uploaded while running\n"
        big = os.urandom(3 << 20)  # over one chunk: streamed into and out of the guest
        wd.put(big, "big.bin")
        assert wd.stat("big.bin").read() == big
        assert wd.stat("big.bin").read(offset=(1 << 20) - 3, size=1 << 20) == \
            big[(1 << 20) - 3: (2 << 20) - 3]
        listing = wd.listdir()
        assert {"sub/", "made/", "outside/", "stdout"} <= set(listing)
        with pytest.raises(httpx.HTTPError, match=r"400.*outside the job directory"):
            wd.stat("outside/passwd").read()
        with pytest.raises(httpx.HTTPError, match=r"400.*outside the job directory"):
            wd.put(b"x", "outside/planted")
        job.abort()
        assert wait(job) == "FAILED"
        assert "aborted" in fresh(job)["statusMessage"].lower()
        # after the job its files come from the site storage copy
        assert job.working_dir.stat("made/copy.txt").read() == b"uploaded while running\n"
        assert job.working_dir.stat("stdout").read() == b"started\n"
        job.delete()
        with pytest.raises(httpx.HTTPError, match="404"):
            fresh(job)
        return job

    job = await in_thread(scenario)
    assert job.resource_url.rsplit("/", 1)[1] not in site.factory.jobs


@pytest_twisted.ensureDeferred
async def test_asyncio_client_runs_a_job_with_a_chunked_upload(rest_site, tmp_path):
    site, _http = rest_site
    source = tmp_path / "data.txt"
    source.write_bytes(b"abc" * 50000)

    async def scenario():
        credential = credentials.UsernamePassword("alice", PASSWORDS["alice"])
        async with aio.Client(credential, site.http_base, cache_time=1) as client:
            assert (await client.access_info)["role"]["selected"] == "user"
            job = await client.new_job({"Executable": "wc", "Arguments": ["-c", "data.txt"],
                                        "Resources": IMAGE}, inputs=[str(source)])
            job.cache_time = 1
            await job.poll()
            assert await job.status == aio.JobStatus.SUCCESSFUL
            wd = await job.working_dir
            stdout = await wd.stat("stdout")
            return await stdout.read()

    output = await in_thread(asyncio.run, scenario())
    assert output.decode().split()[0] == "150000"
