"""Instance and job snapshots round-trip through the database, SQLite and PostgreSQL."""

import pytest_twisted
from twisted.internet import reactor

from image_repo.access import Caller
from image_repo.db import make_engine
from target_system.instance import ImageToBoot, TargetSystem
from target_system.jobdesc import parse_job
from target_system.jobs import Job
from target_system.lifecycle import InstanceState, JobState
from target_system.store import StateStore
from tests.image_repo.conftest import database_url  # noqa: F401  (fixture)

ALICE = Caller.of("alice", groups=["users"], vos=["atlas"])
IMAGE = ImageToBoot("img1", "debian", {"tsi": {"user": "gridvm"}}, {})


def target() -> TargetSystem:
    system = TargetSystem(instance_id="i1", owner="alice", image=IMAGE, vmm=None,
                          credentials=None, reactor=reactor, vcpus=2, memory_mib=512)
    system.instance_cert_pem = b"-----BEGIN CERTIFICATE-----\n"
    for state in (InstanceState.STAGING, InstanceState.BOOTING, InstanceState.CONNECTING):
        system.lifecycle.advance(state)
    return system


@pytest_twisted.ensureDeferred
async def test_snapshots_round_trip(database_url, tmp_path):  # noqa: F811
    store = StateStore(make_engine(database_url), reactor)
    try:
        system = target()
        job = Job(owner="alice", reactor=reactor, storage=tmp_path / "j1",
                  description=parse_job({"Executable": "echo", "Arguments": ["hi"],
                                         "Resources": {"Runtime": "10min"}}))
        job.instance_id, job.bssid, job.workdir = "i1", "12345", "/home/gridvm/jobs/j1"
        for state in (JobState.STAGINGIN, JobState.QUEUED, JobState.RUNNING):
            job.lifecycle.advance(state)
        store.save_instance(system)
        store.save_job(job, ALICE)
        system.lifecycle.fail("TSI_LOST", "3 pings in a row failed")
        store.save_instance(system)  # a later snapshot replaces the earlier one
        await store.flush()

        (row,) = await store.load_instances(live_only=False)
        assert row["state"] == "FAILED" and row["reason"] == "TSI_LOST"
        assert row["vcpus"] == 2 and row["instance_cert"].startswith("-----BEGIN")
        assert [h[0] for h in row["history"]] == ["REQUESTED", "STAGING", "BOOTING",
                                                   "CONNECTING", "FAILED"]
        assert await store.load_instances(live_only=True) == []

        (job_row,) = await store.load_jobs(live_only=True)
        assert job_row["caller"] == {"user": "alice", "groups": ["users"], "vos": ["atlas"],
                                     "admin": False}
        again = Job.restore(job_row, reactor)
        assert again.state is JobState.RUNNING and again.bssid == "12345"
        assert again.description.runtime == 600 and again.description.arguments == ["hi"]
        assert again.lifecycle.entered.keys() == job.lifecycle.entered.keys()
        again.lifecycle.cancel()
        job.lifecycle.cancel()

        store.delete_job(job.job_id)  # queued behind the writes before it
        await store.flush()
        assert await store.load_jobs(live_only=False) == []
    finally:
        store.close()
