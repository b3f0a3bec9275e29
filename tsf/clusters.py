"""Virtual clusters: instances of one owner on a private network of their own.

A :class:`VirtualCluster` owns one switch (``vmm.switch``) and the target systems attached
to it.  Each node boots with a second NIC on that switch and a medium that brings the NIC
up with its static address and writes the node list (``target_system.nodes``); the nodes
reach one another by TCP and UDP and nothing else: no host service (their user-mode link
is ``restrict=on``) and no other cluster (another switch).  Nodes are ordinary instances
for quotas and the dashboard, but placement never gives them another job.

A multi-node job (``Resources.Nodes`` > 1, :meth:`ClusterKeeper.for_job`) is a cluster of
``node0`` (the head, which runs the job with the node list in its environment) and
``node1`` … ``nodeN-1``; the cluster ends with the job.  A :class:`DefinedCluster` runs a
definition (``target_system.clusterdef``): its services start in waves once those they
depend on are READY, scalable ones scale, a failed node fails or degrades it, and it ends
in reverse start order.  Clusters end when the site stops (their switches live in it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from twisted.internet import defer

from base.errors import GridvmError
from base.identity import Caller
from base.reasons import Reason
from target_system.clusterdef import ClusterDefinition, ServiceDefinition, parse_cluster
from target_system.instance import ImageToBoot, InstanceFailed, TargetSystem, TsiSettings
from target_system.jobdesc import JobDescriptionError, requirement_sources
from target_system.jobs import Job
from target_system.nodes import (
    NodeIdentity,
    Peer,
    cluster_environment,
    membership_script,
    node_context_files,
    service_context_files,
)
from tsf.admission import SiteLimits
from tsf.errors import ClusterBusy, NotFound
from tsf.placement import Action, Need, choose_nodes
from tsf.registry import InstanceRegistry
from vmm.switch import ClusterNetworks, ClusterSwitch, NodePort, SwitchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedNode:
    """A node about to boot: its name, role, size and image."""

    name: str
    role: str
    image: ImageToBoot
    vcpus: int
    memory_mib: int
    context: dict[str, bytes] = field(default_factory=dict)  #: more files for its medium


class VirtualCluster:
    """The nodes of one owner on one switch, by name in the order they were added."""

    def __init__(self, cluster_id: str, caller: Caller, registry: InstanceRegistry,
                 switch: ClusterSwitch, networks: ClusterNetworks):
        self.cluster_id, self.caller, self.registry = cluster_id, caller, registry
        self.switch, self.networks = switch, networks
        self.nodes: dict[str, TargetSystem] = {}
        self.ports: dict[str, NodePort] = {}
        self.ended = False

    @property
    def owner(self) -> str:
        return self.caller.user

    def peers(self, extra: Iterable[tuple[PlannedNode, NodePort]] = ()) -> list[Peer]:
        """Every node not ended (and ``extra`` ones about to boot), in order."""
        peers = [Peer(name, self.ports[name].address, target.node.role, target.vcpus)
                 for name, target in self.nodes.items()
                 if not target.lifecycle.terminal and target.node is not None]
        return peers + [Peer(plan.name, port.address, plan.role, plan.vcpus)
                        for plan, port in extra]

    def _free_index(self, taken: set[int]) -> int:
        used = {port.index for name, port in self.ports.items()
                if not self.nodes[name].lifecycle.terminal} | taken
        return next(i for i in range(len(used) + 1) if i not in used)

    def boot(self, plans: list[PlannedNode], head: str | None = None) -> list[TargetSystem]:
        """Boot the planned nodes, each told about every node (these included); ``head``
        names the node whose jobs get the node list in their environment."""
        taken: set[int] = set()
        attached = []
        for plan in plans:
            index = self._free_index(taken)
            taken.add(index)
            attached.append((plan, self.switch.attach(index)))
        peers = self.peers(attached)
        booted = []
        for plan, port in attached:
            identity = NodeIdentity(self.cluster_id, port.index, plan.name, plan.role,
                                    port.address, port.mac)
            target = self.registry.boot(
                self.owner, self.caller, plan.image, plan.vcpus, plan.memory_mib,
                node=identity,
                cluster_nic=port.nic(),
                extra_context={**plan.context, **node_context_files(
                    identity, peers, TsiSettings.from_metadata(plan.image.metadata).user)},
                job_environment=cluster_environment(identity, peers)
                if plan.name == head else None)
            target.keep_idle = True  # it ends with its cluster
            self.nodes[plan.name], self.ports[plan.name] = target, port
            booted.append(target)
        return booted

    async def start(self, targets: Iterable[TargetSystem]) -> None:
        """Wait until every one of ``targets`` is READY; the first failure is raised."""
        try:
            await defer.gatherResults([t.start() for t in targets], consumeErrors=True)
        except defer.FirstError as err:
            raise err.subFailure.value from None

    async def tell_peers(self) -> None:
        """Rewrite the node list on every usable node (after nodes came or went)."""
        script = membership_script(self.peers())
        for name, target in list(self.nodes.items()):
            if target.usable and target.tsi is not None:
                try:
                    await target.tsi.execute_script(script)
                except Exception as err:  # a node that is going: its health check decides
                    log.warning("cluster %s: telling %s its peers: %s", self.cluster_id,
                                name, err)

    async def remove(self, name: str, why: str) -> None:
        """End one node and free its port."""
        target = self.nodes[name]
        await target.terminate(why)
        self.switch.detach(self.ports[name].index)

    async def end(self, why: str) -> None:
        """End every node, the last added first, then the switch."""
        if self.ended:
            return
        self.ended = True
        for name in reversed(list(self.nodes)):
            try:
                await self.remove(name, why)
            except Exception:
                log.exception("cluster %s: ending %s", self.cluster_id, name)
        self.networks.remove(self.cluster_id)
        log.info("cluster %s ended: %s", self.cluster_id, why)


class ClusterKeeper:
    """Creates the site's virtual clusters on their own networks: those of multi-node jobs
    and those from definitions (``defined``, kept after they end, for their status)."""

    MAX_KEPT = 1000  #: ended defined clusters kept for their status (the oldest go first)

    def __init__(self, registry: InstanceRegistry, networks: ClusterNetworks, reactor):
        self.registry, self.networks, self.reactor = registry, networks, reactor
        self.clusters: dict[str, VirtualCluster] = {}
        self.defined: dict[str, DefinedCluster] = {}
        self._work: dict[str, defer.Deferred] = {}  #: what each defined cluster is doing

    # -- defined clusters ------------------------------------------------------------------
    def up(self, doc: Any, caller: Caller, site: SiteLimits) -> DefinedCluster:
        """Start a cluster from a definition (JobDescriptionError: 400 naming the key;
        InstanceFailed QUOTA_EXCEEDED when its nodes would not fit the quotas)."""
        definition = parse_cluster(doc, site.nodes)
        for name, service in definition.services.items():
            sources = {key: f"Services.{name}.{path}"
                       for key, path in requirement_sources(service.resources).items()}
            site.check(service.resources.requirements, sources)
        count = sum(s.count for s in definition.services.values())
        decision = choose_nodes(Need(caller, "", 1, 0), count, self.registry.live(),
                                self.registry.quotas)
        if decision.action is Action.REFUSE:
            raise InstanceFailed(Reason.QUOTA_EXCEEDED, decision.limit)
        defined = DefinedCluster(self.create(caller), definition, site, self.reactor)
        self.defined[defined.cluster_id] = defined
        self._trim()
        self._run(defined, defined.up())
        return defined

    def _run(self, defined: DefinedCluster, work) -> defer.Deferred:
        running = defer.Deferred.fromCoroutine(work)
        self._work[defined.cluster_id] = running

        def done(result):
            if self._work.get(defined.cluster_id) is running:
                del self._work[defined.cluster_id]
            if defined.state.terminal:
                self.forget(defined.cluster)
            return result

        return running.addBoth(done)

    def _trim(self) -> None:
        ended = [c for c in self.defined.values() if c.state.terminal]
        for old in ended[:max(len(self.defined) - self.MAX_KEPT, 0)]:
            del self.defined[old.cluster_id]

    def get(self, cluster_id: str, caller: Caller) -> DefinedCluster:
        found = self.defined.get(cluster_id)
        if found is None or not (caller.admin or found.owner == caller.user):
            raise NotFound(f"no cluster {cluster_id}")
        return found

    def list(self, caller: Caller) -> list[DefinedCluster]:
        return [c for c in self.defined.values() if caller.admin or c.owner == caller.user]

    def scale(self, cluster_id: str, service: str, count: int,
              caller: Caller) -> defer.Deferred:
        """Bring a scalable service to ``count`` nodes; fires once done (refused at once:
        JobDescriptionError for a bad service or count, ClusterBusy while it changes)."""
        defined = self.get(cluster_id, caller)
        definition = defined.check_scale(service, count)
        return self._run(defined, defined.scale(definition, count))

    def down(self, cluster_id: str, caller: Caller) -> defer.Deferred:
        """End a cluster now (also one starting or scaling); fires once it is STOPPED."""
        defined = self.get(cluster_id, caller)
        return self._run(defined, defined.down(f"ended by {caller.user}"))

    def wait(self, cluster_id: str, caller: Caller) -> defer.Deferred:
        """Fires with the cluster once what it does now (start, scale, stop) is done."""
        defined = self.get(cluster_id, caller)
        busy = self._work.get(cluster_id)
        if busy is None:
            return defer.succeed(defined)
        waiter: defer.Deferred = defer.Deferred()
        busy.addBoth(lambda result: (waiter.callback(defined), result)[1])
        return waiter

    # -- every cluster ---------------------------------------------------------------------
    async def end_all(self, why: str) -> None:
        """End every cluster and its network (the site stops: a switch lives in the site's
        process, so its cluster cannot outlive it)."""
        for defined in list(self.defined.values()):
            await defined.down(why)
        for cluster in list(self.clusters.values()):
            await cluster.end(why)
            self.forget(cluster)

    def create(self, caller: Caller, cluster_id: str | None = None) -> VirtualCluster:
        cluster_id = cluster_id or uuid.uuid4().hex[:12]
        try:
            switch = self.networks.create(cluster_id)
        except (SwitchError, OSError) as err:
            raise InstanceFailed(getattr(err, "reason", Reason.HYPERVISOR_ERROR),
                                 f"the cluster network: {err}") from err
        cluster = VirtualCluster(cluster_id, caller, self.registry, switch, self.networks)
        self.clusters[cluster_id] = cluster
        return cluster

    def forget(self, cluster: VirtualCluster) -> None:
        self.clusters.pop(cluster.cluster_id, None)

    def for_job(self, job: Job, caller: Caller, image: ImageToBoot,
                need: Need) -> VirtualCluster:
        """A cluster of ``Resources.Nodes`` nodes for a job, booting (QUOTA_EXCEEDED when
        the quotas do not let all of them boot); the job runs on ``node0``."""
        count = job.description.nodes or 1
        decision = choose_nodes(need, count, self.registry.live(), self.registry.quotas)
        if decision.action is Action.REFUSE:
            raise InstanceFailed(Reason.QUOTA_EXCEEDED, decision.limit)
        cluster = self.create(caller, f"job-{job.job_id}"[:24])
        plans = [PlannedNode(f"node{i}", "head" if i == 0 else "worker", image,
                             decision.vcpus, decision.memory_mib) for i in range(count)]
        targets = cluster.boot(plans, head="node0")
        self.registry.reserve(targets[0], job)
        job.note(f"booting {count} nodes on a private network ({decision.vcpus} vCPU, "
                 f"{decision.memory_mib} MiB each): "
                 + ", ".join(f"{p.name} {t.instance_id}" for p, t in zip(plans, targets,
                                                                         strict=True)))
        return cluster


class ClusterState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    DEGRADED = "DEGRADED"  #: a node of a service that degrades failed; the rest go on
    SCALING = "SCALING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (ClusterState.STOPPED, ClusterState.FAILED)


class ClusterFailed(GridvmError):
    """A defined cluster could not start (or scale); ``reason`` says why."""


class DefinedCluster:
    """A cluster from a definition: its services started in dependency order, scaled,
    watched (a failed node fails or degrades it) and ended in reverse order."""

    def __init__(self, cluster: VirtualCluster, definition: ClusterDefinition,
                 site: SiteLimits, reactor):
        self.cluster, self.definition, self.site = cluster, definition, site
        self.reactor = reactor
        self.state = ClusterState.STARTING
        self.reason: str | None = None
        self.message = ""
        self.created = reactor.seconds()
        self.counts = {name: s.count for name, s in definition.services.items()}
        self.members: dict[str, list[str]] = {name: [] for name in definition.services}
        self.images: dict[str, ImageToBoot] = {}
        self.log: list[str] = []
        self._busy: defer.Deferred | None = None

    @property
    def cluster_id(self) -> str:
        return self.cluster.cluster_id

    @property
    def owner(self) -> str:
        return self.cluster.owner

    def note(self, text: str) -> None:
        log.info("cluster %s: %s", self.cluster_id, text)
        self.log.append(text)

    def _set(self, state: ClusterState, reason: str | None = None, message: str = "") -> None:
        self.state, self.message = state, message or self.message
        self.reason = reason if reason is not None else self.reason
        self.note(f"{state.value}" + (f" ({reason}: {message})" if reason else ""))

    def describe(self) -> dict[str, Any]:
        services = {}
        for name, service in self.definition.services.items():
            nodes = [self.cluster.nodes[n] for n in self.members[name]]
            services[name] = {
                "count": self.counts[name], "min": service.minimum, "max": service.maximum,
                "scalable": service.scalable, "dependsOn": list(service.depends_on),
                "onFailure": service.on_failure, "image": (self.images.get(name).name
                                                           if name in self.images else None),
                "nodes": [{"name": t.node.name, "instance": t.instance_id,
                           "address": t.node.address, "state": t.state.name}
                          for t in nodes if t.node is not None]}
        return {"id": self.cluster_id, "name": self.definition.name, "owner": self.owner,
                "state": self.state.value, "reason": self.reason, "message": self.message,
                "created": self.created, "services": services, "log": list(self.log)}

    # -- bring-up --------------------------------------------------------------------------
    async def up(self) -> None:
        """Start the services, each wave once the services it depends on are READY."""
        started: set[str] = set()
        try:
            while len(started) < len(self.definition.services):
                wave = [s for name, s in self.definition.services.items()
                        if name not in started and set(s.depends_on) <= started]
                await defer.gatherResults(
                    [defer.Deferred.fromCoroutine(self._start_service(s)) for s in wave],
                    consumeErrors=True)
                started.update(s.name for s in wave)
                await self.cluster.tell_peers()
        except Exception as err:
            err = err.subFailure.value if isinstance(err, defer.FirstError) else err
            await self._fail(getattr(err, "reason", None) or Reason.HYPERVISOR_ERROR, str(err))
            return
        if self.state is ClusterState.STARTING:
            self._set(ClusterState.READY)

    async def _start_service(self, service: ServiceDefinition) -> None:
        image = await self.cluster.registry.match_image(
            service.resources.requirements, self.cluster.caller, f"service {service.name}")
        self.images[service.name] = image
        self.note(f"service {service.name}: image {image.name}, {service.count} node(s)")
        if service.count:
            await self._add_nodes(service, service.count)

    async def _add_nodes(self, service: ServiceDefinition, count: int) -> None:
        registry = self.cluster.registry
        image = self.images[service.name]
        need = Need.sized(service.resources, self.cluster.caller, image, self.site)
        decision = choose_nodes(need, count, registry.live(), registry.quotas)
        if decision.action is Action.REFUSE:
            raise ClusterFailed(decision.limit, reason=Reason.QUOTA_EXCEEDED)
        taken = {int(n.rsplit("-", 1)[1]) for n in self.members[service.name]}
        indexes = [i for i in range(len(taken) + count) if i not in taken][:count]
        context = service.context
        plans = [PlannedNode(f"{service.name}-{i}", service.name, image, decision.vcpus,
                             decision.memory_mib,
                             service_context_files(context.files, context.environment,
                                                   context.start)) for i in indexes]
        targets = self.cluster.boot(plans)
        for plan, target in zip(plans, targets, strict=True):
            self.members[service.name].append(plan.name)
            target.listeners.append(self._node_changed)
        self.note(f"service {service.name}: booting " + ", ".join(
            f"{p.name} {t.instance_id}" for p, t in zip(plans, targets, strict=True)))
        try:
            await self.cluster.start(targets)
        except InstanceFailed:
            ready = [t for t in targets if t.usable]
            if service.on_failure == "degrade" and (ready or service.minimum == 0):
                return  # _node_changed degraded the cluster
            raise

    # -- failures --------------------------------------------------------------------------
    def _service_of(self, target: TargetSystem) -> ServiceDefinition | None:
        node = target.node
        return self.definition.services.get(node.role) if node is not None else None

    def _node_changed(self, target: TargetSystem, transition) -> None:
        if transition.state.name != "FAILED" or self.state in (
                ClusterState.STOPPING, ClusterState.STOPPED, ClusterState.FAILED):
            return
        service = self._service_of(target)
        name = target.node.name if target.node else target.instance_id
        why = f"node {name} failed ({transition.reason}: {transition.message})"
        if service is not None and service.on_failure == "degrade":
            self._drop(service.name, name)
            self._set(ClusterState.DEGRADED if self.state is not ClusterState.SCALING
                      else self.state, transition.reason or Reason.GUEST_CRASHED, why)
            self._after(self.cluster.tell_peers)
        elif self.state is not ClusterState.STARTING:  # a start failure fails in up()
            self._after(lambda: self._fail(transition.reason or Reason.GUEST_CRASHED, why))

    def _drop(self, service: str, name: str) -> None:
        if name in self.members[service]:
            self.members[service].remove(name)
            self.counts[service] = max(self.counts[service] - 1, 0)

    def _after(self, work) -> None:
        self.reactor.callLater(0, lambda: defer.ensureDeferred(work()))

    async def _fail(self, reason: str, message: str) -> None:
        if self.state.terminal or self.state is ClusterState.STOPPING:
            return
        self._set(ClusterState.FAILED, reason, message)
        await self._end(f"cluster {self.cluster_id} failed")

    # -- scaling ---------------------------------------------------------------------------
    def check_scale(self, service_name: str, count: int) -> ServiceDefinition:
        """The scalable service to bring to ``count`` nodes; JobDescriptionError else."""
        service = self.definition.services.get(service_name)
        if service is None:
            raise JobDescriptionError("Service", f"no service {service_name!r} in cluster "
                                                 f"{self.cluster_id}")
        if not service.scalable:
            raise JobDescriptionError("Service", f"service {service_name} has a fixed count")
        if not service.minimum <= count <= service.maximum:
            raise JobDescriptionError("Count", f"{count} is not within {service.minimum}.."
                                               f"{service.maximum}")
        if self.state not in (ClusterState.READY, ClusterState.DEGRADED):
            raise ClusterBusy(f"cluster {self.cluster_id} is {self.state.value}")
        return service

    async def scale(self, service: ServiceDefinition, count: int) -> None:
        """Add or remove nodes of ``service`` (the last ones first), then tell the others."""
        before = self.state
        self._set(ClusterState.SCALING, message=f"{service.name} to {count}")
        current = len(self.members[service.name])
        try:
            if count > current:
                await self._add_nodes(service, count - current)
            for name in list(reversed(self.members[service.name]))[:max(current - count, 0)]:
                self.members[service.name].remove(name)
                await self.cluster.remove(name, f"scaled {service.name} to {count}")
            self.counts[service.name] = count
            await self.cluster.tell_peers()
        except Exception as err:
            err = err.subFailure.value if isinstance(err, defer.FirstError) else err
            self.note(f"scaling {service.name} to {count} failed: {err}")
            self.counts[service.name] = len(self.members[service.name])
            if getattr(err, "reason", None) == Reason.QUOTA_EXCEEDED:
                self._set(before)
                raise
            await self.cluster.tell_peers()
            self._set(ClusterState.DEGRADED, getattr(err, "reason", Reason.HYPERVISOR_ERROR),
                      str(err))
            return
        if self.state is ClusterState.SCALING:
            self._set(before if before is ClusterState.DEGRADED else ClusterState.READY)
        self.note(f"service {service.name} scaled to {count}")

    # -- the end ---------------------------------------------------------------------------
    async def down(self, why: str) -> None:
        if self.state.terminal:
            return
        self._set(ClusterState.STOPPING, message=why)
        await self._end(why)
        if self.state is ClusterState.STOPPING:
            self._set(ClusterState.STOPPED, message=why)

    async def _end(self, why: str) -> None:
        """End the services in reverse start order, each one's nodes last added first."""
        for name in reversed(list(self.definition.services)):
            for node in reversed(self.members[name]):
                try:
                    await self.cluster.remove(node, why)
                except Exception:
                    log.exception("cluster %s: ending %s", self.cluster_id, node)
        await self.cluster.end(why)
