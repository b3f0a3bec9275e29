"""Snapshots of target systems and jobs in the catalogue's database.

A snapshot is taken on the reactor thread at every state change and written by one
dedicated thread, so writes keep their order and the reactor never waits for the database.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine, delete, select
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from base.db import migrate, session_factory, session_scope
from target_system.models import InstanceRow, JobRow, SiteRow

log = logging.getLogger(__name__)

LIVE_INSTANCE_STATES = ("REQUESTED", "STAGING", "BOOTING", "CONNECTING", "READY", "BUSY",
                        "DRAINING")
LIVE_JOB_STATES = ("UNDEFINED", "READY", "STAGINGIN", "QUEUED", "RUNNING", "STAGINGOUT")


def instance_snapshot(target) -> dict[str, Any]:
    life = target.lifecycle
    return {
        "id": target.instance_id, "owner": target.owner, "image_id": target.image.image_id,
        "image_name": target.image.name, "state": life.state.name, "reason": life.reason,
        "message": life.message or "", "vcpus": target.vcpus, "memory_mib": target.memory_mib,
        "host_port": target.vm.host_port if target.vm else None,
        "callback_port": target.vm.callback_port if target.vm else None,
        "domain": target.vm.domain if target.vm else None, "host": target.host or None,
        "instance_cert": target.instance_cert_pem.decode() if target.instance_cert_pem
        else None,
        "history": [list(item) for item in life.history], "updated": time.time(),
    }


def job_snapshot(job, caller) -> dict[str, Any]:
    life = job.lifecycle
    return {
        "id": job.job_id, "owner": job.owner,
        "caller": {"user": caller.user, "groups": list(caller.groups),
                   "vos": sorted(caller.vos), "admin": caller.admin},
        "instance_id": job.instance_id, "image": job.image, "state": life.state.name,
        "reason": life.reason, "message": life.message or "",
        "description": job.description.raw, "bssid": job.bssid, "workdir": job.workdir,
        "exit_code": job.exit_code, "ended_by": job.ended_by, "storage": str(job.storage),
        "log": list(job.log), "history": [list(item) for item in life.history],
        "rejections": list(job.rejections), "submitted": job.submitted,
        "site_id": job.site_id, "termination": job.termination, "updated": time.time(),
    }


class StateStore:
    """Reads and writes instance and job snapshots."""

    def __init__(self, engine: Engine, reactor=None, *, upgrade: bool = True):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.engine = engine
        self.reactor = reactor
        if upgrade:
            migrate(engine)
        self._sessions = session_factory(engine)
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="gridvm-state")
        self._pool.start()
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

    def close(self) -> None:
        if self._pool.started:
            self._pool.stop()
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None

    def _write(self, model, snapshot: dict[str, Any]) -> None:
        with session_scope(self._sessions) as session:
            session.merge(model(**snapshot))

    def save(self, model, snapshot: dict[str, Any]) -> defer.Deferred:
        d = threads.deferToThreadPool(self.reactor, self._pool, self._write, model, snapshot)
        d.addErrback(lambda f: log.error("saving %s %s: %s", model.__tablename__,
                                         snapshot.get("id"), f.getErrorMessage()))
        return d

    def save_instance(self, target) -> defer.Deferred:
        return self.save(InstanceRow, instance_snapshot(target))

    def save_job(self, job, caller) -> defer.Deferred:
        return self.save(JobRow, job_snapshot(job, caller))

    def _delete(self, model, row_id: str) -> None:
        with session_scope(self._sessions) as session:
            session.execute(delete(model).where(model.id == row_id))

    def delete(self, model, row_id: str) -> defer.Deferred:
        """Forget a row (queued after every earlier write of it)."""
        d = threads.deferToThreadPool(self.reactor, self._pool, self._delete, model, row_id)
        d.addErrback(lambda f: log.error("deleting %s %s: %s", model.__tablename__, row_id,
                                         f.getErrorMessage()))
        return d

    def delete_job(self, job_id: str) -> defer.Deferred:
        """Forget a deleted job."""
        return self.delete(JobRow, job_id)

    def save_site(self, site_id: str, owner: str, created: float,
                  termination: float | None) -> defer.Deferred:
        return self.save(SiteRow, {"id": site_id, "owner": owner, "created": created,
                                   "termination": termination})

    def delete_site(self, site_id: str) -> defer.Deferred:
        return self.delete(SiteRow, site_id)

    def load_sites(self) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self._pool, self._load, SiteRow, None)

    def flush(self) -> defer.Deferred:
        """Fires once every write queued before it is done."""
        return threads.deferToThreadPool(self.reactor, self._pool, lambda: None)

    def _load(self, model, states: tuple[str, ...] | None) -> list[dict[str, Any]]:
        with session_scope(self._sessions) as session:
            query = select(model)
            if states is not None:
                query = query.where(model.state.in_(states))
            return [{c.name: getattr(row, c.name) for c in model.__table__.columns}
                    for row in session.scalars(query)]

    def load_instances(self, live_only: bool = True) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self._pool, self._load, InstanceRow,
                                         LIVE_INSTANCE_STATES if live_only else None)

    def load_jobs(self, live_only: bool = False) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self._pool, self._load, JobRow,
                                         LIVE_JOB_STATES if live_only else None)
