"""The Target System Factory: a job's requirements in, a job running in a matching VM out.

For each job: ask the image repository for the best visible image (or fail with
``NO_MATCHING_IMAGE`` and the repository's reasons per image), find a target system of that
image for that owner with a free job slot (an instance runs as many jobs at once as it has
vCPUs), or boot a new one within the per-user and global quotas (``QUOTA_EXCEEDED``), then
hand the job to the runner.  Blocking repository calls run in threads.

A site whose trust policy requires endorsements matches only images it trusts, and checks
that trust again once a new instance's image is staged, right before the VM is created: an
endorsement may expire (or be withdrawn) between the match and the boot.  The instance and
its jobs then fail with ``IMAGE_UNTRUSTED``.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.python import failure

from base.errors import GridvmError
from base.identity import Caller
from base.reasons import Reason
from image_repo.errors import RepositoryError
from image_repo.repository import ImageRepository
from image_repo.trust import TrustPolicy
from target_system.drivers import TSIConnector, VirtualMachines, connect_tsi
from target_system.instance import (
    Deadlines,
    HealthPolicy,
    ImageToBoot,
    InstanceFailed,
    SiteCredentials,
    TargetSystem,
)
from target_system.jobdesc import JobDescription, JobDescriptionError, parse_job
from target_system.jobfiles import PathError, confine
from target_system.jobs import Job, JobRunner
from target_system.lifecycle import InstanceState
from target_system.store import StateStore
from target_system.transfers import (
    USPACE,
    TransferFailed,
    TransferPolicy,
    copy_file,
    fetch_url,
    parse_uspace,
    transfer_failed,
)
from tsf.admission import Admission
from tsf.pools import PoolSpec, check_specs, pool_name

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MIB = 256
#: How long a job (its record and its files in site storage) is kept after submission,
#: unless its owner sets another termination time (UNICORE's ``terminationTime``).
DEFAULT_JOB_LIFETIME = 30 * 86400.0
#: Seconds between two sweeps for jobs past their termination time.
EXPIRY_INTERVAL = 60.0


@dataclass
class Quotas:
    per_user: int = 4  #: live instances one user may have
    total: int = 8  #: live instances on this site


class InstanceBusy(GridvmError):
    """An instance that still has jobs was asked to end without force."""

    reason = Reason.BAD_REQUEST


class NotFound(GridvmError, KeyError):
    """No such job or instance — or not the caller's (the two look the same)."""

    reason = Reason.NOT_FOUND


class TargetSystemFactory(service.Service):
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
                 admission: Admission | None = None):
        self.repository = repository
        self.vmm = vmm
        self.credentials = credentials
        self.storage_root = Path(storage_root)
        self.reactor = reactor
        self.quotas = quotas or Quotas()
        self.deadlines = deadlines or Deadlines()
        self.health = health or HealthPolicy()
        self.runner = runner or JobRunner(reactor)
        self.tsi_connector = tsi_connector  #: makes the TSI links to instances' agents
        self.store = store
        #: whom the site trusts to endorse images, and whether images must be endorsed
        self.trust = trust or TrustPolicy()
        #: the site's size limits and the per-user limits, checked at submit
        self.admission = admission or Admission()
        self.keep_on_stop = False  #: stopService detaches instead of terminating
        self.transfers = transfers or TransferPolicy()
        self.pools = {spec.name: spec for spec in check_specs(pools)}  #: warm pools by name
        self.pool_interval = pool_interval
        self._pool_loop = task.LoopingCall(self.fill_pools)
        self._pool_loop.clock = reactor
        self._pool_backoff: dict[str, tuple[int, float]] = {}  #: failures, next boot time
        self._filling = False
        #: seconds a job is kept after submission (None: until deleted) and at most from now
        self.job_lifetime = job_lifetime
        self._expiry = task.LoopingCall(self.expire)
        self._expiry.clock = reactor
        self.expiry_interval = expiry_interval
        #: site start-up hooks put on every instance's medium as init.d/<name>
        self.context_hooks = dict(context_hooks or {})
        self.jobs: dict[str, Job] = {}
        self.instances: dict[str, TargetSystem] = {}
        self._callers: dict[str, Caller] = {}
        self._running: dict[str, defer.Deferred] = {}
        self._reserved: dict[str, set[str]] = {}  #: instance id -> jobs waiting for it
        self._expiring: set[str] = set()  #: jobs being destroyed by :meth:`expire`

    @property
    def transfers(self) -> TransferPolicy:
        """Where server-side Imports may come from and Exports may go (the runner's too)."""
        return self.runner.transfers

    @transfers.setter
    def transfers(self, policy: TransferPolicy) -> None:
        self.runner.transfers = policy

    # -- jobs ------------------------------------------------------------------------------
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
        if self.job_lifetime:
            job.termination = job.submitted + self.job_lifetime
        self.jobs[job.job_id] = job
        self._callers[job.job_id] = caller
        self._persist_job(job, caller)
        job.note("created")
        if start if start is not None else not job_desc.client_stage_in:
            self.start(job.job_id, caller)
        return job

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
        log is kept and its site storage is overwritten by the new run."""
        old = self.job(job_id, caller)
        if not old.state.terminal or old.job_id in self._running:
            return old
        job = Job(owner=old.owner, description=old.description, reactor=self.reactor,
                  storage=old.storage, job_id=old.job_id, submitted=old.submitted,
                  log=[*old.log], site_id=old.site_id, termination=old.termination)
        self.jobs[job.job_id] = job
        self._callers.setdefault(job.job_id, caller)
        self._persist_job(job, self._callers[job.job_id])
        job.note("restarted")
        return self.start(job.job_id, caller)

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
        the future and, when the site limits job lifetimes, within one lifetime from now."""
        job = self.job(job_id, caller)
        now = self.reactor.seconds()
        if when <= now:
            raise ValueError("terminationTime must lie in the future")
        if self.job_lifetime and when > now + self.job_lifetime:
            raise ValueError(f"terminationTime may lie at most {self.job_lifetime / 86400:g} "
                             "days ahead on this site")
        job.termination = when
        job.note(f"termination time set to {_utc(when)}")
        if self.store is not None:
            self.store.save_job(job, self._callers[job.job_id])
        return job

    def expire(self) -> list[str]:
        """Destroy the jobs past their termination time, as DELETE would: abort if running,
        then forget the record and remove the files.  Runs every ``expiry_interval``."""
        now = self.reactor.seconds()
        due = [job for job in self.jobs.values()
               if job.termination is not None and job.termination <= now
               and job.job_id not in self._expiring]
        for job in due:
            log.info("job %s of %s reached its termination time %s: destroying it",
                     job.job_id, job.owner, _utc(job.termination))
            job.note("termination time reached: destroying the job")
            self._expiring.add(job.job_id)
            d = self.delete(job.job_id, self._callers[job.job_id])
            d.addBoth(lambda result, job_id=job.job_id: (self._expiring.discard(job_id),
                                                          result)[1])
        return [job.job_id for job in due]

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
        try:
            image = await self._match(job, caller)
            if image is None:
                return job
            target = self._target_for(job, caller, image)
            if target.state is not InstanceState.READY and target.state is not InstanceState.BUSY:
                job.note(f"waiting for instance {target.instance_id} ({target.state.name})")
            fetched = defer.Deferred.fromCoroutine(self._fetch_imports(job, caller))
            await target.start()  # the imports are fetched meanwhile
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
            self._running.pop(job.job_id, None)
            job.settle()
        return job

    async def _fetch_imports(self, job: Job, caller: Caller) -> None:
        """Fetch the job's server-side imports into its inputs directory (see
        ``target_system.transfers``); a failed one fails the job ``STAGING_FAILED`` unless
        its ``FailOnError`` is false."""
        for item in job.description.imports:
            if item.url is None or job.state.terminal:
                continue
            destination = job.inputs_dir / item.to
            try:
                if item.url.startswith(USPACE):
                    source = self._uspace_file(item.url, caller)
                    size = await threads.deferToThread(copy_file, source, destination)
                else:
                    size = await threads.deferToThread(
                        fetch_url, item.url, destination, self.transfers,
                        item.credentials.authorization() if item.credentials else None,
                        lambda: job.state.terminal)
            except TransferFailed as err:
                if transfer_failed(job, f"import of {item.url}", item.fail_on_error, err):
                    return
                continue
            job.note(f"fetched {item.url} as {item.to} ({size} bytes)")

    def _uspace_file(self, url: str, caller: Caller) -> Path:
        """The site-storage file ``uspace://JOBID/PATH`` names: a finished job of the
        caller's, a path inside its directory."""
        job_id, path = parse_uspace(url)
        try:
            other = self.job(job_id, caller)
        except NotFound:
            raise TransferFailed(f"no job {job_id}") from None
        if not other.finished.called:
            raise TransferFailed(f"job {job_id} has not finished: its files are still in its VM")
        try:
            rel = confine(path)
        except PathError as err:
            raise TransferFailed(str(err)) from None
        root = other.storage.resolve()
        source = (root / rel).resolve()
        if not source.is_relative_to(root) or not source.is_file():
            raise TransferFailed(f"job {job_id} has no file {rel}")
        return source

    async def _match(self, job: Job, caller: Caller) -> ImageToBoot | None:
        requirements = job.description.requirements
        result = await threads.deferToThread(
            lambda: self.repository.match(requirements, caller, policy=self.trust))
        if result.best is None:
            rejected = await threads.deferToThread(lambda: result.rejected)
            job.rejections = [r.to_dict() for r in rejected]
            reasons = "; ".join(f"{r.ref}: " + ", ".join(x.message for x in r.reasons)
                                for r in rejected[:10])
            job.fail(Reason.NO_MATCHING_IMAGE, "no image fits the job's requirements"
                     + (f" ({reasons})" if reasons else " (no image is visible to you)"))
            return None
        best = result.best

        image = await threads.deferToThread(self._load_image, best.id, caller)
        job.note(f"matched image {best.ref}")
        return image

    # -- instances -------------------------------------------------------------------------
    def _live(self) -> list[TargetSystem]:
        return [t for t in self.instances.values() if not t.lifecycle.terminal]

    def _size(self, job: Job, image: ImageToBoot) -> tuple[int, int]:
        hardware = image.metadata and image.metadata.origin.virtual_hardware
        vcpus = max(job.description.cpus or 1, (hardware and hardware.vcpus) or 1)
        memory = max(-(-(job.description.memory or 0) // (1 << 20)),
                      (hardware and hardware.memory_mib) or DEFAULT_MEMORY_MIB)
        site = self.admission.site  # an image's default size never exceeds the site's
        return min(vcpus, site.cpus), min(memory, site.memory_mib)

    def _load(self, target: TargetSystem) -> int:
        return len(target.jobs) + self._waiting(target)

    def _target_for(self, job: Job, caller: Caller, image: ImageToBoot) -> TargetSystem:
        """An instance for the job: one with a free slot, else a new one within the quotas,
        else the least loaded suitable one (jobs share it), else QUOTA_EXCEEDED."""
        vcpus, memory = self._size(job, image)
        suitable = sorted(
            (t for t in self._live()
             if t.owner == caller.user and t.image.image_id == image.image_id
             and t.state is not InstanceState.DRAINING
             and t.vcpus >= vcpus and t.memory_mib >= memory),
            key=self._load)
        if suitable and self._load(suitable[0]) < suitable[0].vcpus:
            job.note(f"reusing instance {suitable[0].instance_id}")
            self._reserve(suitable[0], job)
            return suitable[0]
        mine = [t for t in self._live() if t.owner == caller.user]
        if len(mine) < self.quotas.per_user and (
                pooled := self._from_pool(job, caller, image, vcpus, memory)):
            self._reserve(pooled, job)
            return pooled
        full = None
        if len(mine) >= self.quotas.per_user:
            full = (f"you have {len(mine)} instances, the limit per user is "
                    f"{self.quotas.per_user}")
        elif len(self._live()) >= self.quotas.total:
            full = (f"the site runs {len(self._live())} instances, its limit is "
                    f"{self.quotas.total}")
        if full and suitable:
            job.note(f"sharing instance {suitable[0].instance_id} ({full})")
            self._reserve(suitable[0], job)
            return suitable[0]
        if full:
            raise InstanceFailed(Reason.QUOTA_EXCEEDED, full)
        target = self._new_target(caller.user, caller, image, vcpus, memory)
        self._reserve(target, job)
        job.note(f"booting instance {target.instance_id} ({vcpus} vCPU, {memory} MiB)")
        return target

    def _new_target(self, owner: str, caller: Caller, image: ImageToBoot, vcpus: int,
                    memory: int) -> TargetSystem:
        """A new instance (``caller``: who the pre-boot trust check reads the image as)."""
        target = TargetSystem(
            instance_id=uuid.uuid4().hex[:12], owner=owner, image=image, vmm=self.vmm,
            credentials=self.credentials, reactor=self.reactor, vcpus=vcpus, memory_mib=memory,
            deadlines=self.deadlines, health=self.health, tsi_connector=self.tsi_connector,
            extra_context={f"init.d/{name}": script
                           for name, script in self.context_hooks.items()},
            admit=self._trust_check(image, caller) if self.trust.require else None)
        self.instances[target.instance_id] = target
        self._persist_instance(target)
        return target

    # -- warm pools ------------------------------------------------------------------------
    def _from_pool(self, job: Job, caller: Caller, image: ImageToBoot, vcpus: int,
                   memory: int) -> TargetSystem | None:
        """Hand the caller a fitting pool instance (the most advanced in its bring-up): it is
        theirs from now on, and the pool boots a replacement."""
        order = {InstanceState.READY: 0, InstanceState.CONNECTING: 1,
                 InstanceState.BOOTING: 2, InstanceState.STAGING: 3,
                 InstanceState.REQUESTED: 4}
        fitting = sorted(
            (t for t in self._live()
             if (name := pool_name(t.owner)) in self.pools and self.pools[name].serves(caller)
             and t.image.image_id == image.image_id and t.state in order
             and t.vcpus >= vcpus and t.memory_mib >= memory),
            key=lambda t: order[t.state])
        if not fitting:
            return None
        target = fitting[0]
        pool = pool_name(target.owner)
        target.owner, target.keep_idle = caller.user, False
        if self.store is not None:
            self.store.save_instance(target)
        log.info("pool %s: instance %s (%s) taken by %s", pool, target.instance_id,
                 target.state.name, caller.user)
        job.note(f"took instance {target.instance_id} from pool {pool} "
                 f"({target.state.name}, no boot of its own)")
        self.reactor.callLater(0, self.fill_pools)
        return target

    def waiting_in_pool(self, spec: PoolSpec) -> list[TargetSystem]:
        """The live instances a pool keeps for jobs to take (nobody's yet)."""
        return [t for t in self._live() if t.owner == spec.owner]

    def fill_pools(self) -> defer.Deferred | None:
        """Boot instances until every pool has its idle count (within the site's total
        quota; a pool whose boots fail backs off), and end the instances of pools no longer
        configured.  Runs every ``pool_interval`` and whenever an instance is taken."""
        if self._filling or not self.running:
            return None
        self._filling = True

        def done(result):
            self._filling = False
            if isinstance(result, failure.Failure):
                log.error("filling the pools: %s", result.getTraceback())

        return defer.Deferred.fromCoroutine(self._fill()).addBoth(done)

    async def _fill(self) -> None:
        admin = Caller.of("gridvm", admin=True)
        for target in self._live():
            name = pool_name(target.owner)
            if name is not None and name not in self.pools:
                log.info("instance %s of pool %s: the pool is no longer configured",
                         target.instance_id, name)
                target.terminate(f"pool {name} is no longer configured")
        now = self.reactor.seconds()
        for spec in self.pools.values():
            waiting = self.waiting_in_pool(spec)
            missing = spec.idle - len(waiting)
            if missing <= 0 or now < self._pool_backoff.get(spec.name, (0, 0.0))[1]:
                continue
            try:
                record = await threads.deferToThread(self.repository.get, spec.image, admin)
                image = await threads.deferToThread(self._load_image, record.id, admin)
            except RepositoryError as err:
                log.warning("pool %s: image %s: %s", spec.name, spec.image, err)
                continue
            for _ in range(missing):
                if len(self._live()) >= self.quotas.total:
                    log.warning("pool %s: the site runs %d instances, its limit", spec.name,
                                len(self._live()))
                    break
                target = self._new_target(spec.owner, admin, image, spec.vcpus,
                                          spec.memory_mib)
                target.keep_idle = True
                log.info("pool %s: booting instance %s", spec.name, target.instance_id)
                target.start().addCallbacks(
                    lambda _t, name=spec.name: self._pool_backoff.pop(name, None),
                    lambda f, name=spec.name: self._pool_failed(name, f))

    def _pool_failed(self, name: str, reason: failure.Failure) -> None:
        if not self.running or name not in self.pools:
            return  # ended on purpose (site shutdown, pool removed)
        failures = self._pool_backoff.get(name, (0, 0.0))[0] + 1
        delay = min(self.pool_interval * 2 ** failures, 600.0)
        self._pool_backoff[name] = (failures, self.reactor.seconds() + delay)
        log.warning("pool %s: an instance failed (%s); next boot in %g s", name,
                    reason.getErrorMessage(), delay)

    # -- trust -----------------------------------------------------------------------------
    def _trust_check(self, image: ImageToBoot, caller: Caller):
        """The pre-boot check of a new instance: the site still trusts the image now."""
        async def admit() -> None:
            try:
                verdict = await threads.deferToThread(self.repository.assess, image.image_id,
                                                      caller, self.trust)
            except RepositoryError as err:
                raise InstanceFailed(err.reason, str(err)) from None
            if not verdict.trusted:
                raise InstanceFailed(Reason.IMAGE_UNTRUSTED, f"{image.name} is no longer trusted: "
                                     f"{verdict.message}")
            log.info("image %s trusted before boot: %s", image.name, verdict.message)

        return admit

    def _reserve(self, target: TargetSystem, job: Job) -> None:
        """Count a job that will run on ``target`` once it is up; the job names its instance
        from now on, so a client can follow the VM while it boots."""
        job.instance_id, job.image = target.instance_id, target.image.name
        reserved = self._reserved.setdefault(target.instance_id, set())
        reserved.add(job.job_id)
        job.finished.addBoth(lambda result: (reserved.discard(job.job_id), result)[1])
        job.lifecycle.listeners.append(
            lambda t: reserved.discard(job.job_id) if t.state.name == "STAGINGIN" else None)

    def _waiting(self, target: TargetSystem) -> int:
        return len(self._reserved.get(target.instance_id, ()))

    # -- persistence and restarts ---------------------------------------------------------
    def _persist_job(self, job: Job, caller: Caller) -> None:
        if self.store is None:
            return
        store = self.store
        job.lifecycle.listeners.append(lambda _t: store.save_job(job, caller))
        store.save_job(job, caller)

    def _persist_instance(self, target: TargetSystem) -> None:
        if self.store is None:
            return
        store = self.store
        target.listeners.append(lambda t, _transition: store.save_instance(t))
        store.save_instance(target)

    def recover(self, adopted) -> defer.Deferred:
        """Take back what an earlier run left: instances from the store around the domains
        vmm adopted (``vmm.start()``'s result), and their jobs, which go on where they were.
        Domains of this site that no live instance owns are destroyed."""
        return defer.Deferred.fromCoroutine(self._recover(adopted))

    async def _recover(self, adopted) -> dict[str, int]:
        assert self.store is not None
        alive = {a.instance.instance_id: a.instance for a in adopted
                 if a.instance is not None and a.state.alive}
        admin = Caller.of("gridvm", admin=True)
        counts = {"instances": 0, "reconnected": 0, "jobs": 0, "resumed": 0, "finished": 0}
        for row in await self.store.load_instances(live_only=True):
            try:
                image = await threads.deferToThread(self._load_image, row["image_id"], admin)
            except RepositoryError as err:
                log.warning("instance %s: its image is gone: %s", row["id"], err)
                image = ImageToBoot(row["image_id"], row["image_name"], None, {})
            target = TargetSystem.restore(
                row, image, alive.pop(row["id"], None), vmm=self.vmm,
                credentials=self.credentials, reactor=self.reactor, deadlines=self.deadlines,
                health=self.health, tsi_connector=self.tsi_connector)
            target.keep_idle = pool_name(target.owner) is not None
            self.instances[target.instance_id] = target
            self._persist_instance(target)
            await target.reconnect()
            counts["instances"] += 1
            counts["reconnected"] += target.usable
        for instance in alive.values():  # ours by prefix and metadata, but unknown
            log.warning("destroying orphaned domain %s", instance.domain)
            await self.vmm.destroy(instance.instance_id)
        for row in await self.store.load_jobs(live_only=False):
            caller = Caller.of(row["caller"]["user"], row["caller"]["groups"],
                               row["caller"]["vos"], row["caller"]["admin"])
            job = Job.restore(row, self.reactor)
            if job.termination is None and self.job_lifetime:  # saved before lifetimes
                job.termination = job.submitted + self.job_lifetime
            self.jobs[job.job_id] = job
            self._callers[job.job_id] = caller
            if job.state.terminal:  # finished before: its record and files stay available
                job.settle()
                counts["finished"] += 1
                continue
            self._persist_job(job, caller)
            counts["jobs"] += 1
            target = self.instances.get(job.instance_id or "")
            if job.state.name == "READY":  # never reached its instance: start it afresh
                target = None
            if target is not None and target.usable:
                job.note("resumed after a server restart")
                running = self.runner.run(job, target)
                self._running[job.job_id] = running
                running.addBoth(lambda result, j=job: (self._running.pop(j.job_id, None),
                                                       result)[1])
                counts["resumed"] += 1
            elif target is not None:
                job.fail(target.lifecycle.reason or Reason.SERVER_RESTARTED,
                         f"its target system failed: {target.lifecycle.message}")
                job.settle()
            elif job.state.name == "READY" and job.description.client_stage_in:
                job.note("waiting for the start (its uploaded inputs are kept)")
            else:
                job.note("restarted after a server restart")
                self.start(job.job_id, caller)
        for target in self.instances.values():
            if target.state is InstanceState.BUSY and not target.jobs:
                target.lifecycle.advance(InstanceState.READY)
        log.info("recovered %(instances)d instances (%(reconnected)d reconnected), "
                 "%(jobs)d unfinished jobs (%(resumed)d resumed) and %(finished)d finished "
                 "jobs", counts)
        return counts

    def _load_image(self, image_id: str, caller: Caller) -> ImageToBoot:
        record = self.repository.get(image_id, caller)
        paths = self.repository.content_paths(image_id, caller)
        return ImageToBoot(record.id, record.name, record.metadata, paths)

    def detach(self) -> defer.Deferred:
        """Stop tracking everything without ending it: VMs and their jobs keep running and
        are taken back by :meth:`recover` at the next start."""
        return defer.Deferred.fromCoroutine(self._detach())

    async def _detach(self) -> None:
        for target in self._live():
            await target.detach()
        for job in self.jobs.values():
            job.lifecycle.cancel()
        if self.store is not None:
            await self.store.flush()
            self.store.close()

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
        jobs = [self.jobs[j] for j in target.jobs | self._reserved.get(instance_id, set())
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

    def startService(self):
        super().startService()
        self._expiry.start(self.expiry_interval, now=True).addErrback(
            lambda f: log.error("job expiry stopped: %s", f.getTraceback()))
        self._pool_loop.start(self.pool_interval, now=True)

    def stopService(self):
        """Terminate every instance — or, with ``keep_on_stop``, detach from them so that
        they and their jobs go on and the next start re-adopts them."""
        super().stopService()
        for loop in (self._expiry, self._pool_loop):
            if loop.running:
                loop.stop()
        if self.keep_on_stop:
            return self.detach()
        return defer.DeferredList([t.terminate("site shutdown") for t in self._live()])


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
