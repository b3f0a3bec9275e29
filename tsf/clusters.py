"""Virtual clusters: instances of one owner on a private network of their own.

A :class:`VirtualCluster` owns one switch (``vmm.switch``) and the target systems attached
to it.  Each node boots with a second NIC on that switch and a medium that brings the NIC
up with its static address and writes the node list (``target_system.nodes``); the nodes
reach one another by TCP and UDP and nothing else: no host service (their user-mode link
is ``restrict=on``) and no other cluster (another switch).  Nodes are ordinary instances
for quotas and the dashboard, but placement never gives them another job.

A multi-node job (``Resources.Nodes`` > 1, :meth:`ClusterKeeper.for_job`) is a cluster of
``node0`` (the head, which runs the job with the node list in its environment) and
``node1`` … ``nodeN-1``; the cluster ends with the job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.internet import defer

from base.identity import Caller
from base.reasons import Reason
from target_system.instance import ImageToBoot, InstanceFailed, TargetSystem
from target_system.jobs import Job
from target_system.nodes import (
    NodeIdentity,
    Peer,
    cluster_environment,
    membership_script,
    node_context_files,
)
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
                extra_context=node_context_files(identity, peers),
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
    """Creates the site's virtual clusters on their own networks."""

    def __init__(self, registry: InstanceRegistry, networks: ClusterNetworks):
        self.registry, self.networks = registry, networks
        self.clusters: dict[str, VirtualCluster] = {}

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
