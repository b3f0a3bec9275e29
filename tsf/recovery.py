"""Restarts: what a run leaves behind (:func:`detach`) and what the next one takes back
(:func:`recover`).

Stopping with ``keep_on_stop`` detaches: VMs and their jobs go on without the server.  At
the next start the instances are restored from the state store around the domains vmm
adopted and reconnected; each unfinished job resumes at the step it was in (or starts
afresh if it never reached its instance), fails with its instance's reason if that one is
gone, or keeps waiting for its start.  Finished jobs stay available until deleted.
An instance whose host is unreachable at the start waits for it in the background (within
the hosts' grace period), and its unfinished jobs with it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from twisted.internet import defer, threads

from base.identity import Caller
from base.reasons import Reason
from image_repo.errors import RepositoryError
from target_system.instance import ImageToBoot, TargetSystem
from target_system.jobdesc import JobDescriptionError
from target_system.jobs import Job
from target_system.lifecycle import InstanceState
from tsf.pools import pool_name

if TYPE_CHECKING:
    from tsf.factory import TargetSystemFactory

log = logging.getLogger(__name__)


async def recover(factory: TargetSystemFactory, adopted) -> dict[str, int]:
    """Take back instances and jobs from the store (``adopted``: ``vmm.start()``'s result);
    destroy the domains of this site that no live instance owns.  Returns the counts."""
    registry = factory.registry
    assert registry.store is not None
    counts = {"instances": 0, "reconnected": 0, "jobs": 0, "resumed": 0, "finished": 0,
              "awaiting": 0}
    #: instance id -> the unfinished jobs of an instance that awaits its host
    awaiting: dict[str, list[tuple[Job, Caller]]] = {
        target.instance_id: [] for target in await _take_back_instances(factory, adopted,
                                                                        counts)}
    for row in await registry.store.load_jobs(live_only=False):
        caller = Caller.of(row["caller"]["user"], row["caller"]["groups"],
                           row["caller"]["vos"], row["caller"]["admin"])
        job = Job.restore(row, factory.reactor)
        if job.termination is None:  # saved before lifetimes
            job.termination = factory.lifetimes.termination(job.submitted)
        factory.track(job, caller)
        if job.state.terminal:  # finished before: its record and files stay available
            job.settle()
            counts["finished"] += 1
            continue
        registry.persist_job(job, caller)
        counts["jobs"] += 1
        try:  # what IMAGE_URL named is the site's choice at submit, not in the description
            await registry.resolve_container_image(job.description, caller)
        except JobDescriptionError as err:
            job.fail(Reason.CONTAINER_UNKNOWN, f"after a server restart: {err}")
            job.settle()
            continue
        target = registry.instances.get(job.instance_id or "")
        if job.state.name == "READY":  # never reached its instance: start it afresh
            target = None
        if target is not None and target.instance_id in awaiting:
            job.note(f"waiting for the host {target.host} of its instance after a server "
                     "restart")
            awaiting[target.instance_id].append((job, caller))
        elif target is not None and target.usable:
            job.note("resumed after a server restart")
            factory.resume(job, target)
            counts["resumed"] += 1
        elif target is not None:
            job.fail(target.lifecycle.reason or Reason.SERVER_RESTARTED,
                     f"its target system failed: {target.lifecycle.message}")
            job.settle()
        elif job.state.name == "READY" and job.description.client_stage_in:
            job.note("waiting for the start (its uploaded inputs are kept)")
        else:
            job.note("restarted after a server restart")
            factory.start(job.job_id, caller)
    for target in registry.instances.values():
        if target.state is InstanceState.BUSY and not target.jobs and \
                target.instance_id not in awaiting:
            target.lifecycle.advance(InstanceState.READY)
    for instance_id, jobs in awaiting.items():
        target = registry.instances[instance_id]
        defer.Deferred.fromCoroutine(_after_host(factory, target, jobs)).addErrback(
            lambda f, i=instance_id: log.error("instance %s awaiting its host: %s", i,
                                               f.getTraceback()))
    log.info("recovered %(instances)d instances (%(reconnected)d reconnected, %(awaiting)d "
             "awaiting their host), %(jobs)d unfinished jobs (%(resumed)d resumed) and "
             "%(finished)d finished jobs", counts)
    return counts


async def _take_back_instances(factory: TargetSystemFactory, adopted,
                               counts: dict[str, int]) -> list[TargetSystem]:
    """Restore the saved live instances around the adopted domains and reconnect them;
    destroy this site's domains that none owns.  Returns those awaiting their host."""
    registry = factory.registry
    assert registry.store is not None
    alive = {a.instance.instance_id: a.instance for a in adopted
             if a.instance is not None and a.state.alive}
    admin = Caller.of("gridvm", admin=True)
    awaiting: list[TargetSystem] = []
    for row in await registry.store.load_instances(live_only=True):
        try:
            image = await threads.deferToThread(registry._load_image, row["image_id"], admin)
        except RepositoryError as err:
            log.warning("instance %s: its image is gone: %s", row["id"], err)
            image = ImageToBoot(row["image_id"], row["image_name"], None, {})
        target = TargetSystem.restore(
            row, image, alive.pop(row["id"], None), vmm=registry.vmm,
            credentials=registry.credentials, reactor=factory.reactor,
            deadlines=registry.deadlines, health=registry.health,
            tsi_connector=registry.tsi_connector)
        target.keep_idle = pool_name(target.owner) is not None
        waits = registry.locate(target)
        registry.add(target)
        counts["instances"] += 1
        if waits:
            log.warning("instance %s: its host %s is unreachable: waiting for it",
                        target.instance_id, target.host)
            awaiting.append(target)
            counts["awaiting"] += 1
            continue
        await target.reconnect()
        counts["reconnected"] += target.usable
    for instance in alive.values():  # ours by prefix and metadata, but unknown
        log.warning("destroying orphaned domain %s", instance.domain)
        await registry.vmm.destroy(instance.instance_id)
    return awaiting


async def _after_host(factory: TargetSystemFactory, target: TargetSystem,
                      jobs: list[tuple[Job, Caller]]) -> None:
    """Resume the jobs of an instance once its host is back, or fail them with it."""
    usable = await factory.registry.await_host(target)
    for job, _caller in jobs:
        if job.state.terminal:
            continue
        if usable:
            job.note(f"resumed: the host {target.host} is back")
            factory.resume(job, target)
        elif target.lifecycle.terminal:
            job.fail(target.lifecycle.reason or Reason.HOST_LOST,
                     f"its target system failed: {target.lifecycle.message}")
            job.settle()
    if usable and target.state is InstanceState.BUSY and not target.jobs:
        target.lifecycle.advance(InstanceState.READY)


async def detach(factory: TargetSystemFactory) -> None:
    """Stop tracking everything without ending it; :func:`recover` takes it back."""
    registry = factory.registry
    for target in registry.live():
        await target.detach()
    for job in factory.jobs.values():
        job.lifecycle.cancel()
    if registry.store is not None:
        await registry.store.flush()
        registry.store.close()
