"""The instance registry: the site's target systems, the jobs reserved on each, their
snapshots in the state store, and the images they boot.

A new instance is created here (:meth:`InstanceRegistry.boot`); on a site whose trust
policy requires endorsements it carries the pre-boot check: once its image is staged and
right before the VM is created, the site must still trust the image, or the instance and
its jobs fail ``IMAGE_UNTRUSTED`` (an endorsement may expire between the match and the
boot).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, threads

from base.identity import Caller
from base.reasons import Reason
from image_repo.errors import RepositoryError
from image_repo.repository import ImageRepository
from image_repo.trust import TrustPolicy
from target_system.drivers import Hosts, TSIConnector, VirtualMachines
from target_system.instance import (
    Deadlines,
    HealthPolicy,
    ImageToBoot,
    InstanceFailed,
    SiteCredentials,
    TargetSystem,
)
from target_system.jobdesc import JobDescription
from target_system.jobs import Job
from target_system.store import StateStore
from tsf.changes import ChangeFeed
from tsf.containers import find_container
from tsf.placement import HostDecision, HostPolicy, HostUsage, Need, Quotas, choose_host
from vmm.errors import VMMError

log = logging.getLogger(__name__)


class InstanceRegistry:
    """Every target system of this run by id, live or ended, and who waits for which."""

    def __init__(self, repository: ImageRepository, vmm: VirtualMachines,
                 credentials: SiteCredentials, reactor, *, quotas: Quotas,
                 deadlines: Deadlines, health: HealthPolicy, store: StateStore | None,
                 trust: TrustPolicy, context_hooks: Mapping[str, bytes],
                 tsi_connector: TSIConnector, hosts: Hosts | None = None,
                 host_policy: HostPolicy | None = None):
        self.repository = repository
        self.vmm = vmm
        #: every job and instance transition, as it happens (the event streams follow it)
        self.changes = ChangeFeed()
        #: the hypervisor hosts new instances are placed on (None: the vmm's one host)
        self.hosts = hosts
        self.host_policy = host_policy or HostPolicy()
        self.credentials = credentials
        self.reactor = reactor
        self.quotas = quotas
        self.deadlines = deadlines
        self.health = health
        self.store = store
        #: whom the site trusts to endorse images, and whether images must be endorsed
        self.trust = trust
        #: site start-up hooks put on every instance's medium as init.d/<name>
        self.context_hooks = dict(context_hooks)
        self.tsi_connector = tsi_connector  #: makes the TSI links to instances' agents
        self.instances: dict[str, TargetSystem] = {}
        self._reserved: dict[str, set[str]] = {}  #: instance id -> jobs waiting for it

    def live(self) -> list[TargetSystem]:
        return [t for t in self.instances.values() if not t.lifecycle.terminal]

    # -- jobs on instances -----------------------------------------------------------------
    def reserve(self, target: TargetSystem, job: Job) -> None:
        """Count a job that will run on ``target`` once it is up; the job names its instance
        from now on, so a client can follow the VM while it boots."""
        job.instance_id, job.image = target.instance_id, target.image.name
        reserved = self._reserved.setdefault(target.instance_id, set())
        reserved.add(job.job_id)
        job.finished.addBoth(lambda result: (reserved.discard(job.job_id), result)[1])
        job.lifecycle.listeners.append(
            lambda t: reserved.discard(job.job_id) if t.state.name == "STAGINGIN" else None)

    def reserved(self, instance_id: str) -> set[str]:
        """The jobs that will run on the instance once it is up."""
        return set(self._reserved.get(instance_id, ()))

    def loads(self) -> dict[str, int]:
        """Jobs each live instance runs or awaits, by instance id."""
        return {t.instance_id: len(t.jobs) + len(self._reserved.get(t.instance_id, ()))
                for t in self.live()}

    # -- new and restored instances ------------------------------------------------------
    def host_usage(self) -> dict[str, HostUsage]:
        """What the live instances hold of each host, by host name."""
        usage: dict[str, list[int]] = {}
        for target in self.live():
            held = usage.setdefault(target.host, [0, 0])
            held[0] += target.vcpus
            held[1] += target.memory_mib
        return {name: HostUsage(v, m) for name, (v, m) in usage.items()}

    def place(self, need: Need, local_only: bool = False) -> HostDecision:
        """The host a new instance with ``need`` boots on (see ``tsf.placement``);
        ``local_only``: among the hosts whose libvirt runs on the site's machine."""
        assert self.hosts is not None
        views = self.hosts.views()
        if local_only:
            views = [view for view in views if view.local]
        return choose_host(need, views, self.host_usage(), self.host_policy)

    def boot(self, owner: str, caller: Caller, image: ImageToBoot, vcpus: int,
             memory: int, **node: Any) -> TargetSystem:
        """A new instance (``caller``: who the pre-boot trust check reads the image as) on
        the host placement chooses; InstanceFailed ``NO_HOST_FITS`` (every host's reason)
        when none can take it.  ``node``: a cluster node's ``TargetSystem`` arguments
        (``node``, ``cluster_nic``, ``job_environment``, ``extra_context`` added to the
        site's hooks); a cluster node boots only on a host local to the site, where its
        switch's sockets are."""
        hooks = {f"init.d/{name}": script for name, script in self.context_hooks.items()}
        placed = {}
        if self.hosts is not None:
            decision = self.place(Need(caller, image.image_id, vcpus, memory),
                                  local_only="cluster_nic" in node)
            if decision.host is None:
                raise InstanceFailed(Reason.NO_HOST_FITS, decision.why_not())
            host = decision.host
            placed = {"host": host.name, "address": host.address,
                      "callback_address": host.site_address}
        target = TargetSystem(
            instance_id=uuid.uuid4().hex[:12], owner=owner, image=image, vmm=self.vmm,
            credentials=self.credentials, reactor=self.reactor, vcpus=vcpus, memory_mib=memory,
            deadlines=self.deadlines, health=self.health, tsi_connector=self.tsi_connector,
            extra_context={**hooks, **node.pop("extra_context", {})},
            admit=self._trust_check(image, caller) if self.trust.require else None,
            **placed, **node)
        self.add(target)
        return target

    def locate(self, target: TargetSystem) -> bool:
        """Set a restored instance's host from where its domain was found; True when its
        domain was not found because the host it ran on is unreachable since the start:
        it awaits that host (see :meth:`await_host`).  One whose domain no host has while
        a host it did not record is DOWN is lost (``HOST_LOST``), not "vanished": should
        that host come back, the domain is destroyed there."""
        if self.hosts is None:
            return False
        recorded = target.host
        target.host = self.hosts.host_of(target.instance_id) or recorded
        views = self.hosts.views()
        for view in views:
            if view.name == target.host:
                target.callback_address = view.site_address
        down = [view.name for view in views if view.state == "DOWN"]
        if target.vm is not None or not down or target.lifecycle.terminal:
            return False
        if recorded in down and target.usable:
            target.awaiting_host = recorded
            return True
        if not recorded:  # saved before rows named their host
            target.lifecycle.fail(Reason.HOST_LOST, "its VM is on no reachable host (DOWN: "
                                  f"{', '.join(down)})")
        return False

    async def await_host(self, target: TargetSystem) -> bool:
        """Wait for the host of a restored instance that :meth:`locate` found unreachable,
        then reconnect it; True when it is usable again.  It ends FAILED (``HOST_LOST``
        past the grace period) otherwise."""
        assert self.hosts is not None
        try:
            vm = await self.hosts.await_instance(target.instance_id, target.awaiting_host)
        except defer.CancelledError:  # the site stops: the instance stays as it was saved
            return False
        except VMMError as err:
            target.awaiting_host = ""
            if not target.lifecycle.terminal:
                target.lifecycle.fail(err.reason, f"after the restart: {err}")
            await target.reconnect()  # ends a failed one: its VM is removed
            return False
        target.awaiting_host = ""
        if target.lifecycle.terminal:  # ended (e.g. deleted) while it waited
            await self.vmm.destroy(target.instance_id)
            return False
        target.vm, target.address = vm, vm.address
        log.info("instance %s: its host %s is back", target.instance_id, target.host)
        await target.reconnect()
        return target.usable

    def add(self, target: TargetSystem) -> None:
        """Track ``target`` (a new or a restored one) and snapshot its every change."""
        self.instances[target.instance_id] = target
        target.listeners.append(
            lambda t, _transition: self.changes.publish("instance", t.instance_id))
        self._persist_instance(target)

    def _trust_check(self, image: ImageToBoot, caller: Caller):
        """The pre-boot check of a new instance: the site still trusts the image now."""
        async def admit() -> None:
            try:
                verdict = await threads.deferToThread(self.repository.assess, image.image_id,
                                                      caller, self.trust)
                bases = await threads.deferToThread(self.repository.assess_bases,
                                                    image.image_id, caller, self.trust)
            except RepositoryError as err:
                raise InstanceFailed(err.reason, str(err)) from None
            if not verdict.trusted:
                raise InstanceFailed(Reason.IMAGE_UNTRUSTED, f"{image.name} is no longer trusted: "
                                     f"{verdict.message}")
            for base, base_verdict in bases:
                if not base_verdict.trusted:
                    raise InstanceFailed(Reason.IMAGE_UNTRUSTED, f"{image.name} is a layer on "
                                         f"{base}, which is not trusted: {base_verdict.message}")
            log.info("image %s trusted before boot: %s", image.name, verdict.message)

        return admit

    # -- persistence -----------------------------------------------------------------------
    def persist_job(self, job: Job, caller: Caller) -> None:
        """Publish and (with a store) snapshot every change of a new or restored job."""
        job.lifecycle.listeners.append(lambda _t: self.changes.publish("job", job.job_id))
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

    # -- images ----------------------------------------------------------------------------
    async def _match(self, job: Job, caller: Caller) -> ImageToBoot | None:
        requirements = job.description.requirements
        result = await threads.deferToThread(
            lambda: self.repository.match(requirements, caller, policy=self.trust))
        if result.best is None:
            rejected = await threads.deferToThread(lambda: result.rejected)
            job.rejections = [r.to_dict() for r in rejected]
            reasons = "; ".join(f"{r.ref}: " + ", ".join(x.message for x in r.reasons)
                                for r in rejected[:10])
            detail = f" ({reasons})" if reasons else " (no image is visible to you)"
            if requirements.container_image_url:  # named no container image, no VM image
                job.fail(Reason.CONTAINER_UNKNOWN, f"IMAGE_URL {requirements.container_image_url}"
                         " names no container image you may use, and no VM image is or was "
                         "built from it" + detail)
            elif requirements.container_runtime:
                job.fail(Reason.NO_MATCHING_IMAGE, f"no VM image with a container runtime "
                         f"runs {job.description.container.ref}" + detail)
            else:
                job.fail(Reason.NO_MATCHING_IMAGE, "no image fits the job's requirements"
                         + detail)
            return None
        best = result.best
        image = self._live_image(best.id) or await threads.deferToThread(
            self._load_image, best.id, caller)
        job.note(f"matched image {best.ref}")
        return image

    def _live_image(self, image_id: str) -> ImageToBoot | None:
        """A live instance's image ``image_id`` as it loaded it (an image id names fixed
        content): a job placed beside it needs no second load from the repository."""
        for target in self.live():
            if target.image.image_id == image_id and target.image.metadata is not None:
                return target.image
        return None

    async def match_image(self, requirements, caller: Caller, what: str) -> ImageToBoot:
        """The best image for ``requirements`` (of ``what``, e.g. a cluster's service), or
        InstanceFailed NO_MATCHING_IMAGE with the reasons per image."""
        result = await threads.deferToThread(
            lambda: self.repository.match(requirements, caller, policy=self.trust))
        if result.best is None:
            rejected = await threads.deferToThread(lambda: result.rejected)
            reasons = "; ".join(f"{r.ref}: " + ", ".join(x.message for x in r.reasons)
                                for r in rejected[:10])
            raise InstanceFailed(Reason.NO_MATCHING_IMAGE, f"no image fits {what}"
                                 + (f" ({reasons})" if reasons else " (none is visible)"))
        return await threads.deferToThread(self._load_image, result.best.id, caller)

    def _load_image(self, image_id: str, caller: Caller) -> ImageToBoot:
        record = self.repository.get(image_id, caller)
        paths = self.repository.content_paths(image_id, caller)
        backing = tuple(self.repository.backing_files(image_id, caller))
        return ImageToBoot(record.id, record.name, record.metadata, paths, backing)

    async def resolve_container_image(self, desc: JobDescription, caller: Caller) -> None:
        """A CONTAINER job whose IMAGE_URL names a registered container image runs it with
        a VM image's container runtime (``tsf.containers``); one that names a visible VM
        image runs in that image; any other IMAGE_URL is matched against the VM images'
        ``origin.source_url``."""
        url = desc.requirements.container_image_url
        if desc.application != "CONTAINER" or not url:
            return
        container = await threads.deferToThread(find_container, self.repository, url,
                                                caller, self.trust)
        if container is not None:
            desc.run_container(container)
            return

        def lookup():
            try:
                return self.repository.get(url, caller)
            except (RepositoryError, ValueError):
                return None

        record = await threads.deferToThread(lookup)
        if record is not None and record.status != "deleted":
            desc.run_in_image(record.name if url == record.name else record.ref)

    def visible_images(self, caller: Caller) -> list:
        """Blocking: the caller's usable images (call in a thread) — on a site that requires
        endorsements, only those it trusts now (the others could never run a job)."""
        records = [r for r in self.repository.list(caller) if r.status != "deleted"]
        if self.trust.require:
            trusted = {c.id for c in self.repository.match(
                {}, caller, policy=self.trust).candidates}
            records = [r for r in records if r.id in trusted]
        return records
