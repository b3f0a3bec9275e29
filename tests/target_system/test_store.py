"""Instance, job and site snapshots round-trip through the database, SQLite and PostgreSQL;
the schema migrates in place."""

import pytest_twisted
from sqlalchemy import text
from twisted.internet import reactor

from base.db import current_revision, head_revision, make_engine, migrate
from base.identity import Caller
from image_repo.schema import validate
from target_system.instance import ImageToBoot, TargetSystem
from target_system.jobdesc import parse_job
from target_system.jobs import Job
from target_system.lifecycle import InstanceState, JobState
from target_system.store import StateStore
from tests.image_repo.conftest import database_url  # noqa: F401  (fixture)
from tests.image_repo.examples import builder_document

ALICE = Caller.of("alice", groups=["users"], vos=["atlas"])
IMAGE = ImageToBoot("img1", "debian", validate(builder_document(name="debian")), {})


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


@pytest_twisted.ensureDeferred
async def test_sites_and_job_lifetimes_round_trip(database_url, tmp_path):  # noqa: F811
    store = StateStore(make_engine(database_url), reactor)
    try:
        store.save_site("s1", "alice", 1000.0, None)
        store.save_site("s2", "bob", 1001.0, 5000.0)
        job = Job(owner="alice", reactor=reactor, storage=tmp_path / "j2",
                  description=parse_job({"Executable": "true"}), site_id="s1",
                  termination=123456.0)
        store.save_job(job, ALICE)
        store.delete_site("s2")
        await store.flush()
        assert await store.load_sites() == [{"id": "s1", "owner": "alice", "created": 1000.0,
                                             "termination": None}]
        (row,) = await store.load_jobs()
        again = Job.restore(row, reactor)
        assert (again.site_id, again.termination) == ("s1", 123456.0)
        again.lifecycle.cancel()
        job.lifecycle.cancel()
    finally:
        store.close()


def test_migration_0003_keeps_the_jobs_of_an_earlier_schema(tmp_path):
    """A database at 0002 (before sites and lifetimes) upgrades in place: its job rows stay
    and read back without a site and without a termination time."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    migrate(engine, "0002_target_systems")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO jobs (id, owner, caller, state, message, description, storage, log, "
            "history, rejections, submitted, updated) VALUES ('old1', 'alice', '{}', "
            "'SUCCESSFUL', '', '{\"Executable\": \"true\"}', '/tmp/x', '[]', '[]', '[]', "
            "10.0, 11.0)"))
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, site_id, termination FROM jobs")).all()
        assert [tuple(r) for r in rows] == [("old1", None, None)]
        assert connection.execute(text("SELECT count(*) FROM sites")).scalar() == 0
    engine.dispose()
