"""The Target System Factory: a job's requirements in, a job running in a matching VM out.

For each job: ask the image repository for the best visible image (or fail with
``NO_MATCHING_IMAGE`` and the repository's reasons per image), let placement
(``tsf.placement``) choose a target system of that image for that owner — reuse one with a
free job slot, take one from a warm pool, boot one within the quotas, share one, or fail
``QUOTA_EXCEEDED`` — then hand the job to the runner.  Blocking calls run in threads.

The factory keeps the job API and the jobs.  Its parts: the instance registry
(``tsf.registry``), the pool keeper (``tsf.pools``) and the lifetimes sweep
(``tsf.lifetimes``), both child services, restart recovery (``tsf.recovery``), server-side
imports (``tsf.imports``) and the UNICORE sites (``tsf.sites``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer

from base.identity import Caller
from base.reasons import Reason
from image_repo.errors import RepositoryError
from image_repo.repository import ImageRepository
from image_repo.trust import TrustPolicy
from target_system.drivers import Hosts, TSIConnector, VirtualMachines, connect_tsi
from target_system.instance import (
    Deadlines,
    HealthPolicy,
    ImageToBoot,
    InstanceFailed,
    SiteCredentials,
    TargetSystem,
)
from target_system.jobdesc import JobDescription, JobDescriptionError, parse_job
from target_system.jobs import Job, JobRunner
from target_system.lifecycle import InstanceState
from target_system.store import StateStore
from target_system.transfers import TransferPolicy
from tsf import recovery
from tsf.admission import Admission
from tsf.clusters import ClusterKeeper, VirtualCluster
from tsf.errors import InstanceBusy, NotFound
from tsf.imports import fetch_imports, same_site_imports
from tsf.lifetimes import DEFAULT_JOB_LIFETIME, EXPIRY_INTERVAL, Lifetimes
from tsf.placement import Action, HostPolicy, Need, Quotas, choose
from tsf.pools import PoolKeeper, PoolSpec
from tsf.registry import InstanceRegistry
from tsf.sites import SiteRegistry
from vmm.switch import ClusterNetworks

__all__ = ["InstanceBusy", "NotFound", "Quotas", "TargetSystemFactory"]

log = logging.getLogger(__name__)

#: times a job is placed again when its instance is lost with its host before it starts
MAX_REPLACEMENTS = 2


def _delegated(part: str, name: str, doc: str) -> property:
    """A setting that one of the factory's parts keeps (``factory.<part>.<name>``)."""
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, value: setattr(getattr(self, part), name, value), doc=doc)


class TargetSystemFactory(service.MultiService):
    """Matches jobs to images, runs them on target systems, and keeps track of both."""

    name = "factory"

    def __init__(self, repository: ImageRepository, vmm: VirtualMachines,
                 credentials: SiteCredentials, storage_root: Path, reactor, *,
                 quotas: Quotas | None = None, deadlines: Deadlines | None = None,
                 health: HealthPolicy | None = None, runner: JobRunner | None = None,
                 store: StateStore | None = None,
                 context_hooks: dict[str, bytes] | None = None,
                 job_lifetime: float | None = DEFAULT_JOB_LIFETIME,
                 expiry_interval: float = EXPIRY_INTERVAL,
                 transfers: TransferPolicy | None = None,
                 pools: Sequence[PoolSpec] = (), pool_interval: float = 10.0,
                 trust: TrustPolicy | None = None,
                 tsi_connector: TSIConnector = connect_tsi,
                 admission: Admission | None = None, hosts: Hosts | None = None,
                 host_policy: HostPolicy | None = None,
                 networks: ClusterNetworks | None = None):
        super().__init__()
        self.repository = repository
        self.vmm = vmm
        self.credentials = credentials
        self.storage_root = Path(storage_root)
        self.reactor = reactor
        self.runner = runner or JobRunner(reactor)
        self.store = store
        #: the hypervisor hosts (None: a VM manager of one host, as in unit tests)
        self.hosts = hosts
        self.registry = InstanceRegistry(
            repository, vmm, credentials, reactor, quotas=quotas or Quotas(),
            deadlines=deadlines or Deadlines(), health=health or HealthPolicy(), store=store,
            trust=trust or TrustPolicy(), context_hooks=context_hooks or {},
            tsi_connector=tsi_connector, hosts=hosts, host_policy=host_policy)
        #: virtual clusters (multi-node jobs), each on a switch of its own
        self.clusters = ClusterKeeper(self.registry, networks or ClusterNetworks(
            Path(getattr(vmm, "state_dir", self.storage_root)) / "clusters"), reactor)
        #: the site's size limits and the per-user limits, checked at submit
        self.admission = admission or Admission()
        self.keep_on_stop = False  #: stopService detaches instead of terminating
        self.transfers = transfers or TransferPolicy()
        self.sites = SiteRegistry(store)  #: the UNICORE sites jobs are submitted to
        self.lifetimes = Lifetimes(self, reactor, job_lifetime, expiry_interval)
        self.lifetimes.setServiceParent(self)
        self.pool_keeper = PoolKeeper(self.registry, reactor, pools, pool_interval)
        self.pool_keeper.setServiceParent(self)
        self.jobs: dict[str, Job] = {}
        self._callers: dict[str, Caller] = {}
        self._running: dict[str, defer.Deferred] = {}

    # -- settings and state of the parts ---------------------------------------------------
    transfers = _delegated("runner", "transfers", "Where server-side Imports may come from "
                           "and Exports may go (the runner's too).")
    trust = _delegated("registry", "trust", "Whom the site trusts to endorse images, and "
                       "whether images must be endorsed.")
    quotas = _delegated("registry", "quotas", "Live instances per user and on the site.")
    pools = _delegated("pool_keeper", "specs", "The warm pools by name.")
    pool_interval = _delegated("pool_keeper", "interval", "Seconds between pool checks.")

    @property
    def instances(self) -> dict[str, TargetSystem]:
        return self.registry.instances

    # -- jobs ------------------------------------------------------------------------------
    async def prepare(self, desc: JobDescription, caller: Caller, storages_url: str
                      ) -> JobDescription:
        """The site's rules on a description before :meth:`submit`: the image of a CONTAINER
        job, and imports of this site's own files (under ``storages_url``, its
        ``…/storages/``) — ImportRefused for one that is no file of the caller's jobs."""
        await self.registry.resolve_container_image(desc, caller)
        same_site_imports(desc, storages_url, lambda job_id: self.job(job_id, caller))
        return desc

    def submit(self, description: dict[str, Any] | JobDescription, caller: Caller, *,
               start: bool | None = None, site_id: str | None = None) -> Job:
        """Create a job (raises JobDescriptionError for a bad description or one outside
        the site's limits, UserLimitReached when the caller is at a per-user limit) and
        start it unless the description waits for client stage-in (then call
        :meth:`start`).  It is destroyed ``job_lifetime`` seconds after submission (see
        :meth:`expire`)."""
        job_desc = description if isinstance(description, JobDescription) else parse_job(
            description)
        self.admission.check(job_desc, self._owned(caller))
        job = Job(owner=caller.user, description=job_desc, reactor=self.reactor,
                  storage=self.storage_root / "jobs", site_id=site_id)
        job.storage = self.storage_root / "jobs" / job.job_id
        job.termination = self.lifetimes.termination(job.submitted)
        self.track(job, caller)
        self.registry.persist_job(job, caller)
        job.note("created")
        if start if start is not None else not job_desc.client_stage_in:
            self.start(job.job_id, caller)
        return job

    def track(self, job: Job, caller: Caller) -> None:
        """Know ``job`` (a new or a restored one), submitted by ``caller``."""
        self.jobs[job.job_id] = job
        self._callers[job.job_id] = caller

    def caller_of(self, job_id: str) -> Caller:
        return self._callers[job_id]

    def _owned(self, caller: Caller) -> list[Job]:
        return [j for j in self.jobs.values() if j.owner == caller.user]

    def check_storage(self, caller: Caller) -> None:
        """Raise UserLimitReached when the caller's jobs fill their site storage limit (an
        upload is refused then)."""
        self.admission.check_owner(self._owned(caller))

    def start(self, job_id: str, caller: Caller) -> Job:
        """Start a job that waited for its inputs; a no-op once it has started."""
        job = self.job(job_id, caller)
        if job.job_id not in self._running and not job.state.terminal:
            self._running[job.job_id] = defer.Deferred.fromCoroutine(self._process(job))
        return job

    def resume(self, job: Job, target: TargetSystem) -> None:
        """Go on with a job taken back after a restart on its (reconnected) instance."""
        running = self.runner.run(job, target)
        self._running[job.job_id] = running
        running.addBoth(lambda result: (self._running.pop(job.job_id, None), result)[1])

    def job(self, job_id: str, caller: Caller) -> Job:
        job = self.jobs.get(job_id)
        if job is None or not (caller.admin or job.owner == caller.user):
            raise NotFound(f"no job {job_id}")
        return job

    def list_jobs(self, caller: Caller) -> list[Job]:
        return [j for j in self.jobs.values() if caller.admin or j.owner == caller.user]

    def abort(self, job_id: str, caller: Caller) -> Job:
        job = self.job(job_id, caller)
        self.runner.abort(job)
        if job.job_id not in self._running:  # never started: nothing else will settle it
            job.settle()
        return job

    def restart(self, job_id: str, caller: Caller) -> Job:
        """Run a finished job again under the same id (UNICORE's restart action); its old
        log is kept and its site storage is overwritten by the new run.  The new run shows
        at once; one whose previous run still tidies its instance up (a job is finished once
        its outputs are kept) starts right after that."""
        old = self.job(job_id, caller)
        if not old.state.terminal:
            return old
        job = Job(owner=old.owner, description=old.description, reactor=self.reactor,
                  storage=old.storage, job_id=old.job_id, submitted=old.submitted,
                  log=[*old.log], site_id=old.site_id, termination=old.termination)
        self.jobs[job.job_id] = job
        self._callers.setdefault(job.job_id, caller)
        self.registry.persist_job(job, self._callers[job.job_id])
        job.note("restarted")
        tidying = self._running.get(job.job_id)
        if tidying is None:
            return self.start(job.job_id, caller)
        job.note("it starts once its instance is tidied up after the previous run")

        def start(result):
            if job.state.terminal:  # aborted meanwhile: nothing else will settle it
                job.settle()
            else:
                self.start(job.job_id, caller)
            return result

        tidying.addBoth(start)
        return job

    def delete(self, job_id: str, caller: Caller) -> defer.Deferred:
        """Abort the job if it runs, then forget it and remove its files from site storage."""
        job = self.job(job_id, caller)
        self.abort(job_id, caller)

        def forget(_result=None):
            self.jobs.pop(job.job_id, None)
            self._callers.pop(job.job_id, None)
            shutil.rmtree(job.storage, ignore_errors=True)
            shutil.rmtree(job.inputs_dir, ignore_errors=True)
            if self.store is not None:
                self.store.delete_job(job.job_id)
            return job

        return self.wait(job_id, caller).addCallback(forget)

    def set_termination(self, job_id: str, when: float, caller: Caller) -> Job:
        """Move the job's termination time (UNICORE's ``terminationTime``): it must lie in
        the future and, when the site limits job lifetimes, within one lifetime from now
        (else TerminationRefused, a ValueError)."""
        job = self.job(job_id, caller)
        self.lifetimes.move(job, when)
        if self.store is not None:
            self.store.save_job(job, self._callers[job.job_id])
        return job

    def expire(self) -> list[str]:
        """Destroy the jobs past their termination time now (see ``tsf.lifetimes``)."""
        return self.lifetimes.expire()

    def wait(self, job_id: str, caller: Caller) -> defer.Deferred:
        """Fires with the job once it is SUCCESSFUL or FAILED."""
        job = self.job(job_id, caller)
        if job.finished.called:
            return defer.succeed(job)
        waiter: defer.Deferred = defer.Deferred()
        job.finished.addBoth(lambda result: (waiter.callback(job), result)[1])
        return waiter

    async def _process(self, job: Job) -> Job:
        caller = self._callers[job.job_id]
        cluster: VirtualCluster | None = None
        try:
            image = await self.registry._match(job, caller)
            if image is None:
                return job
            fetched = defer.Deferred.fromCoroutine(fetch_imports(
                job, lambda job_id: self.job(job_id, caller), self.transfers))
            if (job.description.nodes or 1) > 1:  # the imports are fetched meanwhile
                cluster = self.clusters.for_job(
                    job, caller, image, Need.of(job, caller, image, self.admission.site))
                target = cluster.nodes["node0"]
                job.note(f"waiting for instance {target.instance_id} ({target.state.name}) and "
                         f"the other {len(cluster.nodes) - 1} nodes of its cluster")
                await cluster.start(cluster.nodes.values())
            else:
                target = await self._started_target(job, caller, image)
            await fetched
            if job.state.terminal:  # aborted while the instance booted, or an import failed
                return job
            await self.runner.run(job, target)
        except InstanceFailed as err:
            job.fail(err.reason, str(err))
        except RepositoryError as err:
            job.fail(getattr(err, "reason", Reason.IMAGE_UNAVAILABLE), str(err))
        except JobDescriptionError as err:
            job.fail(Reason.BAD_REQUEST, str(err))
        except Exception as err:
            log.exception("job %s", job.job_id)
            job.fail(Reason.HYPERVISOR_ERROR, f"{type(err).__name__}: {err}")
        finally:
            if cluster is not None:
                await self._end_cluster(cluster, job)
            self._running.pop(job.job_id, None)
            job.settle()
        return job

    async def _started_target(self, job: Job, caller: Caller,
                              image: ImageToBoot) -> TargetSystem:
        """Place the job and wait until its instance is up.  A job whose instance is lost
        with its host before the job started there is placed again (another host, if one
        fits), up to ``MAX_REPLACEMENTS`` times."""
        attempt = 0
        while True:
            target = self._target_for(job, caller, image)
            if target.state is not InstanceState.READY and target.state is not InstanceState.BUSY:
                job.note(f"waiting for instance {target.instance_id} ({target.state.name})")
            try:
                await target.start()
                return target
            except InstanceFailed as err:
                if err.reason != Reason.HOST_LOST or attempt >= MAX_REPLACEMENTS or \
                        job.state.terminal:
                    raise
                attempt += 1
                job.note(f"instance {target.instance_id} was lost with its host before the job "
                         f"started ({err}): placing the job again")

    async def _end_cluster(self, cluster: VirtualCluster, job: Job) -> None:
        """A multi-node job's nodes end with it (its outputs are kept by then)."""
        await cluster.end(f"multi-node job {job.job_id} ended")
        self.clusters.forget(cluster)

    def _target_for(self, job: Job, caller: Caller, image: ImageToBoot) -> TargetSystem:
        """Carry out placement's decision for the job: reserve it a slot on the instance
        reused, taken from a pool, shared or booted — or raise QUOTA_EXCEEDED."""
        registry = self.registry
        decision = choose(Need.of(job, caller, image, self.admission.site), registry.live(),
                          registry.quotas, self.pools, registry.loads())
        if decision.action is Action.REFUSE:
            raise InstanceFailed(Reason.QUOTA_EXCEEDED, decision.limit)
        if decision.action is Action.BOOT:
            target = registry.boot(caller.user, caller, image, decision.vcpus,
                                   decision.memory_mib)
        else:
            target = self.instances[decision.instance.instance_id]
        if decision.action is Action.TAKE:
            self.pool_keeper.hand_over(target, caller, job)
        job.note(decision.note(target.instance_id))
        registry.reserve(target, job)
        return target

    # -- instances -------------------------------------------------------------------------
    def waiting_in_pool(self, spec: PoolSpec) -> list[TargetSystem]:
        """The live instances a pool keeps for jobs to take (nobody's yet)."""
        return self.pool_keeper.waiting(spec)

    def fill_pools(self) -> defer.Deferred | None:
        """Boot instances until every pool has its idle count and end the instances of pools
        no longer configured.  Runs every ``pool_interval`` and whenever one is taken."""
        return self.pool_keeper.fill()

    def visible_images(self, caller: Caller) -> list:
        """Blocking: the images the caller could run a job in here (see the registry)."""
        return self.registry.visible_images(caller)

    def recover(self, adopted) -> defer.Deferred:
        """Take back what an earlier run left: instances from the store around the domains
        vmm adopted (``vmm.start()``'s result), and their jobs, which go on where they were.
        Domains of this site that no live instance owns are destroyed."""
        return defer.Deferred.fromCoroutine(recovery.recover(self, adopted))

    def detach(self) -> defer.Deferred:
        """Stop tracking everything without ending it: VMs and their jobs keep running and
        are taken back by :meth:`recover` at the next start."""
        return defer.Deferred.fromCoroutine(recovery.detach(self))

    def instance(self, instance_id: str, caller: Caller) -> TargetSystem:
        target = self.instances.get(instance_id)
        if target is None or not (caller.admin or target.owner == caller.user):
            raise NotFound(f"no instance {instance_id}")
        return target

    def end_instance(self, instance_id: str, caller: Caller, *,
                     force: bool = False) -> defer.Deferred:
        """End an instance now (its owner or an administrator).  One that runs or awaits
        jobs is refused (:class:`InstanceBusy`) unless ``force``: then its jobs are aborted
        (``JOB_ABORTED``, their files kept) before the VM goes.  Fires with the instance."""
        target = self.instance(instance_id, caller)
        jobs = [self.jobs[j] for j in target.jobs | self.registry.reserved(instance_id)
                if j in self.jobs and not self.jobs[j].state.terminal]
        if jobs and not force:
            raise InstanceBusy(f"instance {instance_id} has {len(jobs)} unfinished job(s) "
                               f"({', '.join(sorted(j.job_id for j in jobs))}): abort them "
                               "first, or force it")
        return defer.Deferred.fromCoroutine(self._end_instance(target, jobs, caller))

    async def _end_instance(self, target: TargetSystem, jobs: list[Job],
                            caller: Caller) -> TargetSystem:
        for job in jobs:
            job.note(f"aborted: its instance {target.instance_id} was ended by {caller.user}")
            self.abort(job.job_id, self._callers[job.job_id])
        if jobs:  # let them keep their files before the VM goes (for 2 minutes at most)
            waits = [self.wait(job.job_id, self._callers[job.job_id]) for job in jobs]
            try:
                await defer.DeferredList(waits).addTimeout(120, self.reactor)
            except defer.TimeoutError:
                log.warning("instance %s: its aborted jobs did not finish within 120 s",
                            target.instance_id)
        log.info("instance %s ended by %s", target.instance_id, caller.user)
        await target.terminate(f"ended by {caller.user}")
        return target

    def list_instances(self, caller: Caller) -> list[TargetSystem]:
        return [t for t in self.instances.values() if caller.admin or t.owner == caller.user]

    def stopService(self):
        """Stop the pool keeper and the lifetimes sweep, then terminate every instance — or,
        with ``keep_on_stop``, detach from them so that they and their jobs go on and the
        next start re-adopts them."""
        stopped = super().stopService()

        def end(_result):
            if self.keep_on_stop:  # clusters end: their switches live in this process
                ending = defer.Deferred.fromCoroutine(self.clusters.end_all("site shutdown"))
                return ending.addCallback(lambda _r: self.detach())
            ending = defer.DeferredList([t.terminate("site shutdown")
                                         for t in self.registry.live()])
            return ending.addCallback(lambda _r: defer.Deferred.fromCoroutine(
                self.clusters.end_all("site shutdown")))

        return stopped.addCallback(end)
