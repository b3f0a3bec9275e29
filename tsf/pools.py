"""Warm pools for batch operators: instances of an image booted ahead of demand, so a job
starts without waiting for a boot.

A pool keeps ``idle`` booted instances that belong to nobody yet (owner ``pool:<name>``),
each READY once a no-op warm-up job has run through its agent (see :meth:`PoolKeeper.warm_up`).
When a job of a user the pool serves (its VOs; any user who may use the image when it names
none) needs an instance of that image and size and has none with room, the factory hands
it a pool instance: from then on the instance is that user's alone, like one booted for
them (one owner per VM is kept), and the pool boots a replacement once that job runs (a
boot beside it would slow the job's start on a small host; at the latest ``REFILL_DELAY``
seconds after the hand-over).  Pool instances are never ended for being idle (their lease
still applies); they count against the site's total quota, and against a user's once taken.

:class:`PoolKeeper` is the service that keeps the pools filled: every ``interval`` and
whenever a taken instance's job runs it boots what is missing (a pool whose boots fail backs off,
up to 10 minutes) and ends the instances of pools no longer configured.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.python import failure

from base.identity import Caller
from image_repo.errors import RepositoryError
from target_system.instance import InstanceFailed
from target_system.lifecycle import JobState, Transition

if TYPE_CHECKING:
    from target_system.instance import TargetSystem
    from target_system.jobs import Job
    from tsf.registry import InstanceRegistry

log = logging.getLogger(__name__)

OWNER_PREFIX = "pool:"
#: Longest pause between two boots of a pool whose instances keep failing.
MAX_BACKOFF = 600.0
#: Longest wait, after a hand-over, for the taking job to run before the pool boots anew.
REFILL_DELAY = 10.0
#: Where a pool instance's warm-up job runs (below the job directories' root).
WARM_UP_DIRECTORY = ".gridvm-warm-up"


@dataclass(frozen=True)
class PoolSpec:
    """One pool: ``idle`` instances of ``image`` (a name, name:version or id) with
    ``vcpus`` and ``memory_mib``, for users of ``vos`` (empty: anyone)."""

    name: str
    image: str
    idle: int = 1
    vcpus: int = 1
    memory_mib: int = 256
    vos: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        """The owner of the pool's instances until a job takes one."""
        return OWNER_PREFIX + self.name

    def serves(self, caller: Caller) -> bool:
        return not self.vos or bool(set(self.vos) & set(caller.vos))


def pool_name(owner: str) -> str | None:
    """The pool an instance belongs to (by its owner), or None once a user has it."""
    return owner[len(OWNER_PREFIX):] if owner.startswith(OWNER_PREFIX) else None


def check_specs(specs: Iterable[PoolSpec]) -> list[PoolSpec]:
    """The specs, or ValueError naming the first problem (names unique, sizes positive)."""
    seen: set[str] = set()
    result = []
    for spec in specs:
        if not spec.name or not spec.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"pool name must be letters, digits, - and _: {spec.name!r}")
        if spec.name in seen:
            raise ValueError(f"pool {spec.name!r} is defined twice")
        if not spec.image:
            raise ValueError(f"pool {spec.name!r} names no image")
        if spec.idle < 0 or spec.vcpus < 1 or spec.memory_mib < 64:
            raise ValueError(f"pool {spec.name!r}: idle >= 0, vcpus >= 1 and memory_mib >= 64")
        seen.add(spec.name)
        result.append(spec)
    return result


class PoolKeeper(service.Service):
    """Keeps every pool at its idle count, and hands pool instances over to users."""

    name = "pools"

    def __init__(self, registry: InstanceRegistry, reactor, specs: Iterable[PoolSpec] = (),
                 interval: float = 10.0):
        self.registry, self.reactor = registry, reactor
        self.specs = {spec.name: spec for spec in check_specs(specs)}  #: pools by name
        self.interval = interval
        self._loop = task.LoopingCall(self.fill)
        self._loop.clock = reactor
        self._backoff: dict[str, tuple[int, float]] = {}  #: failures, next boot time
        #: pool -> {job id: cancel}: jobs that took one of its instances and do not run yet
        #: (the pool boots no instance until they do)
        self._starting: dict[str, dict[str, Callable[[], None]]] = {}
        self._filling = False

    def waiting(self, spec: PoolSpec) -> list[TargetSystem]:
        """The live instances a pool keeps for jobs to take (nobody's yet)."""
        return [t for t in self.registry.live() if t.owner == spec.owner]

    def hand_over(self, target: TargetSystem, caller: Caller, job: Job | None = None) -> None:
        """The pool instance is ``caller``'s from now on; the pool boots a replacement — once
        ``job`` (the one that took it) runs or ends, or ``REFILL_DELAY`` seconds passed."""
        pool = pool_name(target.owner)
        target.owner, target.keep_idle = caller.user, False
        if self.registry.store is not None:
            self.registry.store.save_instance(target)
        log.info("pool %s: instance %s (%s) taken by %s", pool, target.instance_id,
                 target.state.name, caller.user)
        if job is None or pool is None:
            self.reactor.callLater(0, self.fill)
        else:
            self._refill_after(pool, job)

    def _refill_after(self, pool: str, job: Job) -> None:
        """Hold the pool's boots back until ``job`` runs or ends (at most REFILL_DELAY s)."""
        starting = self._starting.setdefault(pool, {})

        def job_started(transition: Transition) -> None:
            if transition.state is JobState.RUNNING or transition.state.terminal:
                refill()

        def release() -> None:
            starting.pop(job.job_id, None)
            if job_started in job.lifecycle.listeners:
                job.lifecycle.listeners.remove(job_started)
            if timer.active():
                timer.cancel()

        def refill() -> None:
            release()
            self.reactor.callLater(0, self.fill)

        timer = self.reactor.callLater(REFILL_DELAY, refill)
        job.lifecycle.listeners.append(job_started)
        starting[job.job_id] = release

    def fill(self) -> defer.Deferred | None:
        """Boot instances until every pool has its idle count (within the site's total
        quota; a pool whose boots fail backs off), and end the instances of pools no longer
        configured."""
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
        registry = self.registry
        for target in registry.live():
            name = pool_name(target.owner)
            if name is not None and name not in self.specs:
                log.info("instance %s of pool %s: the pool is no longer configured",
                         target.instance_id, name)
                target.terminate(f"pool {name} is no longer configured")
        now = self.reactor.seconds()
        for spec in self.specs.values():
            missing = spec.idle - len(self.waiting(spec))
            if (missing <= 0 or now < self._backoff.get(spec.name, (0, 0.0))[1]
                    or self._starting.get(spec.name)):
                continue
            try:
                record = await threads.deferToThread(registry.repository.get, spec.image, admin)
                image = await threads.deferToThread(registry._load_image, record.id, admin)
            except RepositoryError as err:
                log.warning("pool %s: image %s: %s", spec.name, spec.image, err)
                continue
            for _ in range(missing):
                if len(registry.live()) >= registry.quotas.total:
                    log.warning("pool %s: the site runs %d instances, its limit", spec.name,
                                len(registry.live()))
                    break
                try:
                    target = registry.boot(spec.owner, admin, image, spec.vcpus,
                                           spec.memory_mib)
                except InstanceFailed as err:
                    log.warning("pool %s: %s", spec.name, err)
                    self._failed(spec.name, failure.Failure(err))
                    break
                target.keep_idle, target.prime = True, self.warm_up
                log.info("pool %s: booting instance %s", spec.name, target.instance_id)
                target.start().addCallbacks(
                    lambda _t, name=spec.name: self._backoff.pop(name, None),
                    lambda f, name=spec.name: self._failed(name, f))

    def warm_up(self, target: TargetSystem) -> defer.Deferred:
        """One no-op job through the agent before the instance is READY: a guest's first job
        pays for starting the user's helper and for the emulator translating the shell's code
        (measured ~0.3 s in an emulated guest), so the taker's job then starts as fast as on
        a reused instance.  The instance bounds it (see ``TargetSystem.prime``)."""
        return defer.Deferred.fromCoroutine(self._warm_up(target))

    async def _warm_up(self, target: TargetSystem) -> None:
        tsi = target.tsi
        assert tsi is not None
        workdir = posixpath.join(target.settings.workdir_root, WARM_UP_DIRECTORY)
        if not tsi.submit_makes_directory:
            await tsi.make_directories([workdir])
        bssid = await tsi.submit("true\n", uspace_dir=workdir, job_name="gridvm_warm_up")
        while bssid in await tsi.get_status_listing():
            await task.deferLater(self.reactor, 0.1, lambda: None)
        tsi.forget(bssid)
        await tsi.remove_tree(workdir)

    def _failed(self, name: str, reason: failure.Failure) -> None:
        if not self.running or name not in self.specs:
            return  # ended on purpose (site shutdown, pool removed)
        failures = self._backoff.get(name, (0, 0.0))[0] + 1
        delay = min(self.interval * 2 ** failures, MAX_BACKOFF)
        self._backoff[name] = (failures, self.reactor.seconds() + delay)
        log.warning("pool %s: an instance failed (%s); next boot in %g s", name,
                    reason.getErrorMessage(), delay)

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        for starting in self._starting.values():
            for release in list(starting.values()):
                release()
