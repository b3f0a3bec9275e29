"""Placement: which target system runs a job — a pure function of what is live now.

:func:`choose` answers with a :class:`Decision`, trying in this order:

1. **reuse** the least loaded instance of the job's owner and image that is big enough,
   not DRAINING and not retiring, when it has a free slot (an instance runs as many jobs
   at once as it has vCPUs);
2. **take from a pool** a fitting warm-pool instance that serves the caller (the most
   advanced in its bring-up), when the owner is within their quota;
3. **boot** a new instance within the per-user and site-wide quotas;
4. **share** that least loaded instance when a quota stops the boot;
5. else **refuse** with ``QUOTA_EXCEEDED``.

Filters are Nova style: one small class per rule whose ``why_not`` says why an instance
(or a boot) does not fit, None when it does.  The decision keeps what they said about every
instance of the owner's and every waiting pool instance it passed over (``skipped``); other
users' instances are never mentioned.  Nothing here changes an instance or a job: the factory
carries the decision out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from base.identity import Caller
from base.reasons import Reason
from target_system.instance import ImageToBoot
from target_system.jobdesc import JobDescription
from target_system.jobs import Job
from target_system.lifecycle import InstanceState
from tsf.admission import SiteLimits
from tsf.pools import PoolSpec, pool_name

DEFAULT_MEMORY_MIB = 256

#: Pool instances a job may take, the most advanced in its bring-up first.
TAKE_ORDER = {InstanceState.READY: 0, InstanceState.CONNECTING: 1, InstanceState.BOOTING: 2,
              InstanceState.STAGING: 3, InstanceState.REQUESTED: 4}


@dataclass
class Quotas:
    per_user: int = 4  #: live instances one user may have
    total: int = 8  #: live instances on this site


class Instance(Protocol):
    """What placement reads of a live target system (``TargetSystem`` has it all)."""

    @property
    def instance_id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def image(self) -> ImageToBoot: ...
    @property
    def state(self) -> InstanceState: ...
    @property
    def vcpus(self) -> int: ...
    @property
    def memory_mib(self) -> int: ...
    @property
    def retiring(self) -> str | None: ...


@dataclass(frozen=True)
class Need:
    """What a job needs of an instance: its caller's, of its image, at least this big."""

    caller: Caller
    image_id: str
    vcpus: int
    memory_mib: int

    @classmethod
    def of(cls, job: Job, caller: Caller, image: ImageToBoot,
           site: SiteLimits | None = None) -> Need:
        return cls.sized(job.description, caller, image, site)

    @classmethod
    def sized(cls, description: JobDescription, caller: Caller, image: ImageToBoot,
              site: SiteLimits | None = None) -> Need:
        """The need of a description's size (a job's, or a cluster service's)."""
        vcpus, memory = _size(description, image, site or SiteLimits())
        return cls(caller, image.image_id, vcpus, memory)


def _size(description: JobDescription, image: ImageToBoot, site: SiteLimits) -> tuple[int, int]:
    """The job's size, else the image's default; never more than the site's limits (an
    image's default size may be larger)."""
    hardware = image.metadata and image.metadata.origin.virtual_hardware
    vcpus = max(description.cpus or 1, (hardware and hardware.vcpus) or 1)
    memory = max(-(-(description.memory or 0) // (1 << 20)),
                  (hardware and hardware.memory_mib) or DEFAULT_MEMORY_MIB)
    return min(vcpus, site.cpus), min(memory, site.memory_mib)


# --------------------------------------------------------------------------- filters ---------

class InstanceFilter:
    """One rule a live instance must pass to run the job."""

    def why_not(self, instance: Instance, need: Need) -> str | None:
        raise NotImplementedError


class SameImage(InstanceFilter):
    def why_not(self, instance, need):
        if instance.image.image_id == need.image_id:
            return None
        return f"runs another image ({instance.image.name})"


class NotDraining(InstanceFilter):
    def why_not(self, instance, need):
        return "is DRAINING" if instance.state is InstanceState.DRAINING else None


class NotRetiring(InstanceFilter):
    """An instance retired (e.g. its disk is nearly full) takes no new job."""

    def why_not(self, instance, need):
        return f"is retiring ({instance.retiring})" if instance.retiring else None


class NotClusterNode(InstanceFilter):
    """A node of a virtual cluster serves its cluster only."""

    def why_not(self, instance, need):
        node = getattr(instance, "node", None)
        return f"is node {node.name} of cluster {node.cluster}" if node is not None else None


class NotAwaitingHost(InstanceFilter):
    """After a server restart, an instance whose host is unreachable since the start takes
    no job until its VM is found there again."""

    def why_not(self, instance, need):
        host = getattr(instance, "awaiting_host", "")
        return f"waits for its host {host}, unreachable since the site started" if host else None


class BigEnough(InstanceFilter):
    def why_not(self, instance, need):
        if instance.vcpus >= need.vcpus and instance.memory_mib >= need.memory_mib:
            return None
        return (f"has {instance.vcpus} vCPU and {instance.memory_mib} MiB, the job needs "
                f"{need.vcpus} vCPU and {need.memory_mib} MiB")


class ServingPool(InstanceFilter):
    """A pool instance is taken only for a pool still configured that serves the caller."""

    def __init__(self, pools: Mapping[str, PoolSpec]):
        self.pools = pools

    def why_not(self, instance, need):
        name = pool_name(instance.owner)
        if name not in self.pools:
            return f"pool {name} is no longer configured"
        if not self.pools[name].serves(need.caller):
            return f"pool {name} does not serve {need.caller.user}"
        return None


class Takeable(InstanceFilter):
    def why_not(self, instance, need):
        return None if instance.state in TAKE_ORDER else f"is {instance.state.name}"


class BootQuota:
    """One limit on booting another instance."""

    def why_not(self, mine: int, live: int, quotas: Quotas) -> str | None:
        raise NotImplementedError


class PerUserQuota(BootQuota):
    def why_not(self, mine, live, quotas):
        if mine < quotas.per_user:
            return None
        return f"you have {mine} instances, the limit per user is {quotas.per_user}"


class SiteQuota(BootQuota):
    def why_not(self, mine, live, quotas):
        if live < quotas.total:
            return None
        return f"the site runs {live} instances, its limit is {quotas.total}"


OWN_FILTERS: tuple[InstanceFilter, ...] = (SameImage(), NotClusterNode(), NotDraining(),
                                           NotRetiring(), NotAwaitingHost(), BigEnough())
QUOTAS: tuple[BootQuota, ...] = (PerUserQuota(), SiteQuota())


# --------------------------------------------------------------------------- decision --------

class Action(StrEnum):
    REUSE = "reuse"
    TAKE = "take from pool"
    BOOT = "boot"
    SHARE = "share"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Skip:
    """A live instance placement passed over, and why."""

    instance_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """Where the job goes: ``instance`` for reuse, take and share; ``vcpus`` and
    ``memory_mib`` for a boot; ``reason`` and ``limit`` (the quota that stops a boot) for
    share and refuse."""

    action: Action
    vcpus: int
    memory_mib: int
    instance: Instance | None = None
    pool: str | None = None  #: the pool the instance is taken from
    limit: str = ""
    reason: Reason | None = None
    skipped: tuple[Skip, ...] = ()

    def note(self, instance_id: str = "") -> str:
        """The job's log line for the decision; ``instance_id`` names the booted one."""
        taken = self.instance.instance_id if self.instance is not None else instance_id
        if self.action is Action.REUSE:
            return f"reusing instance {taken}"
        if self.action is Action.TAKE:
            return (f"took instance {taken} from pool {self.pool} "
                    f"({self.instance.state.name}, no boot of its own)")
        if self.action is Action.SHARE:
            return f"sharing instance {taken} ({self.limit})"
        if self.action is Action.BOOT:
            return f"booting instance {taken} ({self.vcpus} vCPU, {self.memory_mib} MiB)"
        return self.limit


def choose(need: Need, live: Sequence[Instance], quotas: Quotas,
           pools: Mapping[str, PoolSpec], loads: Mapping[str, int]) -> Decision:
    """Where a job with ``need`` goes, given the ``live`` instances, the jobs each holds or
    awaits (``loads`` by instance id), the quotas and the configured pools."""
    skipped: list[Skip] = []

    def load(instance: Instance) -> int:
        return loads.get(instance.instance_id, 0)

    def decide(action: Action, instance: Instance | None = None, **more) -> Decision:
        return Decision(action, need.vcpus, need.memory_mib, instance,
                        skipped=tuple(skipped), **more)

    mine = [t for t in live if t.owner == need.caller.user]
    suitable = sorted(_passing(mine, OWN_FILTERS, need, skipped), key=load)
    if suitable and load(suitable[0]) < suitable[0].vcpus:
        return decide(Action.REUSE, suitable[0])
    if suitable:
        least = suitable[0]
        skipped.append(Skip(least.instance_id, (
            f"has no free slot ({load(least)} job(s) on {least.vcpus} vCPU)",)))
        skipped.extend(Skip(t.instance_id, (f"is busier than {least.instance_id}",))
                       for t in suitable[1:])
    if PerUserQuota().why_not(len(mine), len(live), quotas) is None:
        waiting = [t for t in live if pool_name(t.owner) is not None]
        filters = (ServingPool(pools), SameImage(), Takeable(), NotAwaitingHost(), BigEnough())
        fitting = sorted(_passing(waiting, filters, need, skipped),
                         key=lambda t: TAKE_ORDER[t.state])
        if fitting:
            return decide(Action.TAKE, fitting[0], pool=pool_name(fitting[0].owner))
    limit = next(filter(None, (q.why_not(len(mine), len(live), quotas) for q in QUOTAS)), None)
    if limit and suitable:
        return decide(Action.SHARE, suitable[0], limit=limit, reason=Reason.QUOTA_EXCEEDED)
    if limit:
        return decide(Action.REFUSE, limit=limit, reason=Reason.QUOTA_EXCEEDED)
    return decide(Action.BOOT)


def choose_nodes(need: Need, count: int, live: Sequence[Instance],
                 quotas: Quotas) -> Decision:
    """Boot ``count`` new instances of the caller's for a virtual cluster (its nodes have a
    NIC on the cluster's own switch: none is reused, shared or taken from a pool) when the
    quotas let all of them boot; else refuse with ``QUOTA_EXCEEDED``."""
    mine = sum(t.owner == need.caller.user for t in live)
    limit = ""
    if mine + count > quotas.per_user:
        limit = (f"{count} more instances would make you {mine + count}, the limit per user "
                 f"is {quotas.per_user}")
    elif len(live) + count > quotas.total:
        limit = (f"{count} more instances would make the site run {len(live) + count}, its "
                 f"limit is {quotas.total}")
    if limit:
        return Decision(Action.REFUSE, need.vcpus, need.memory_mib, limit=limit,
                        reason=Reason.QUOTA_EXCEEDED)
    return Decision(Action.BOOT, need.vcpus, need.memory_mib)


def _passing(instances: Sequence[Instance], filters: Sequence[InstanceFilter], need: Need,
             skipped: list[Skip]) -> list[Instance]:
    """The instances every filter passes; the others go to ``skipped`` with every reason."""
    passing = []
    for instance in instances:
        reasons = tuple(why for f in filters if (why := f.why_not(instance, need)))
        if reasons:
            skipped.append(Skip(instance.instance_id, reasons))
        else:
            passing.append(instance)
    return passing


# --------------------------------------------------------------------------- hosts -----------
#
# Where a new instance boots.  Each host filter answers for a whole list of hosts at once
# (Nova's ``filter_all``, one list comprehension over the hosts, no allocation per host:
# 10,000 hosts take a few milliseconds), and
# for one host with its ``why_not``; a job no host takes fails naming every host's reasons.
# The weigher then scores the survivors; the best score wins (ties: the first configured).


class Host(Protocol):
    """What host placement reads of a hypervisor host (``vmm.hosts.HostView`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def cpus(self) -> int: ...
    @property
    def memory_mib(self) -> int: ...
    @property
    def free_memory_mib(self) -> int: ...
    @property
    def cached(self) -> frozenset[str]: ...
    @property
    def message(self) -> str: ...


@dataclass(frozen=True)
class HostUsage:
    """What gridvm's own live instances hold of a host."""

    vcpus: int = 0
    memory_mib: int = 0


NO_USAGE = HostUsage()


@dataclass(frozen=True)
class HostPolicy:
    """How hosts are chosen: ``spread`` (the most free vCPUs first) or ``pack`` (the
    fewest); overcommit ratios on libvirt's CPUs and memory; how much an image already
    cached on a host counts (against at most 1 for spread or pack)."""

    strategy: str = "spread"
    cpu_ratio: float = 4.0
    memory_ratio: float = 1.0
    cached_image_weight: float = 2.0


class HostFilter:
    """One rule a host must pass to take a new instance."""

    def why_not(self, host: Host, used: HostUsage, need: Need,
                policy: HostPolicy) -> str | None:
        raise NotImplementedError

    def filter_all(self, hosts: list[Host], usage: Mapping[str, HostUsage], need: Need,
                   policy: HostPolicy) -> list[Host]:
        """The hosts that pass (a filter may do this faster than one ``why_not`` each)."""
        get = usage.get
        return [h for h in hosts if self.why_not(h, get(h.name, NO_USAGE), need, policy) is None]


class HostUp(HostFilter):
    """Only an UP host takes instances (not DRAINING, not DOWN)."""

    def why_not(self, host, used, need, policy):
        if host.state == "UP":
            return None
        return f"is {host.state}" + (f" ({host.message})" if host.message else "")

    def filter_all(self, hosts, usage, need, policy):
        return [h for h in hosts if h.state == "UP"]


class EnoughCpus(HostFilter):
    def why_not(self, host, used, need, policy):
        room = host.cpus * policy.cpu_ratio - used.vcpus
        if room >= need.vcpus:
            return None
        return (f"has {max(int(room), 0)} of {host.cpus} vCPU free (ratio {policy.cpu_ratio:g}), "
                f"the job needs {need.vcpus}")

    def filter_all(self, hosts, usage, need, policy):
        get, ratio, wanted = usage.get, policy.cpu_ratio, need.vcpus
        return [h for h in hosts if h.cpus * ratio - get(h.name, NO_USAGE).vcpus >= wanted]


class EnoughMemory(HostFilter):
    def why_not(self, host, used, need, policy):
        room = host.memory_mib * policy.memory_ratio - used.memory_mib
        if room >= need.memory_mib:
            return None
        return (f"has {max(int(room), 0)} of {host.memory_mib} MiB free for instances, the job "
                f"needs {need.memory_mib} MiB")

    def filter_all(self, hosts, usage, need, policy):
        get, ratio, wanted = usage.get, policy.memory_ratio, need.memory_mib
        return [h for h in hosts
                if h.memory_mib * ratio - get(h.name, NO_USAGE).memory_mib >= wanted]


class EnoughFreeMemory(HostFilter):
    """What the host's kernel has free now (other programs use memory too)."""

    def why_not(self, host, used, need, policy):
        if host.free_memory_mib >= need.memory_mib:
            return None
        return f"has {host.free_memory_mib} MiB free memory now, the job needs {need.memory_mib}"

    def filter_all(self, hosts, usage, need, policy):
        wanted = need.memory_mib
        return [h for h in hosts if h.free_memory_mib >= wanted]


HOST_FILTERS: tuple[HostFilter, ...] = (HostUp(), EnoughCpus(), EnoughMemory(),
                                        EnoughFreeMemory())


@dataclass(frozen=True)
class HostDecision:
    """The host a new instance boots on (None: none fits), and why the others do not."""

    host: Host | None
    #: when none fits: (host name, why not) of every host, in host order
    rejected: tuple[tuple[str, str], ...] = ()

    def why_not(self) -> str:
        """The reason a job that fits no host fails with: every host's."""
        return "no hypervisor host can take the instance: " + "; ".join(
            f"{name} {why}" for name, why in self.rejected)


def choose_host(need: Need, hosts: Sequence[Host], usage: Mapping[str, HostUsage],
                policy: HostPolicy = HostPolicy(),
                filters: Sequence[HostFilter] = HOST_FILTERS) -> HostDecision:
    """The best host for a new instance with ``need``, given what gridvm's live instances
    hold of each (``usage`` by host name).  When none fits, every host's reasons."""
    passing = list(hosts)
    for f in filters:
        passing = f.filter_all(passing, usage, need, policy)
        if not passing:
            return HostDecision(None, _every_reason(need, hosts, usage, policy, filters))
    return HostDecision(_best(passing, need, usage, policy))


def _every_reason(need: Need, hosts: Sequence[Host], usage: Mapping[str, HostUsage],
                  policy: HostPolicy, filters: Sequence[HostFilter]
                  ) -> tuple[tuple[str, str], ...]:
    """Why each host does not fit: every failing filter's reason."""
    rejected = []
    for host in hosts:
        used = usage.get(host.name, NO_USAGE)
        reasons = [why for f in filters if (why := f.why_not(host, used, need, policy))]
        rejected.append((host.name, ", ".join(reasons)))
    return tuple(rejected)


def _best(hosts: list[Host], need: Need, usage: Mapping[str, HostUsage],
          policy: HostPolicy) -> Host:
    """The weigher: a host's score is its share of free vCPUs (spread: more is better,
    pack: less), plus ``cached_image_weight`` when it has the job's image.  The first of
    equal scores wins: ties go to the first configured host."""
    sign = -1.0 if policy.strategy == "pack" else 1.0
    cached_weight, image, ratio, get = (policy.cached_image_weight, need.image_id,
                                        policy.cpu_ratio, usage.get)
    scores = [sign * (1.0 - get(h.name, NO_USAGE).vcpus / (h.cpus * ratio or 1.0))
              + (cached_weight if image in h.cached else 0.0) for h in hosts]
    return hosts[scores.index(max(scores))]
