"""Host placement as a pure function: which hypervisor host boots a new instance, and why
every other host does not (no VM, no reactor)."""

from __future__ import annotations

from base.identity import Caller
from tsf.placement import HostPolicy, HostUsage, Need, choose_host
from vmm.hosts import HostState, HostView

ALICE = Caller.of("alice")
NEED = Need(ALICE, "img-debian", vcpus=2, memory_mib=1024)


def host(name: str, state: HostState = HostState.UP, cpus: int = 4, memory: int = 8192,
         free: int = 8192, cached: frozenset[str] = frozenset(), message: str = "") -> HostView:
    return HostView(name, state, cpus, memory, free, cached, (), message)


def test_spread_takes_the_host_with_the_most_free_vcpus_and_pack_the_fewest():
    hosts = [host("a"), host("b"), host("c")]
    usage = {"a": HostUsage(4, 1024), "b": HostUsage(1, 256), "c": HostUsage(8, 2048)}
    assert choose_host(NEED, hosts, usage).host.name == "b"
    assert choose_host(NEED, hosts, usage, HostPolicy(strategy="pack")).host.name == "c"
    assert choose_host(NEED, hosts, {}).host.name == "a"  # a tie: the first configured


def test_a_host_that_has_the_image_cached_is_preferred():
    hosts = [host("a"), host("b", cached=frozenset({"img-debian"}))]
    usage = {"b": HostUsage(6, 1024)}  # busier, but its cache saves the upload
    assert choose_host(NEED, hosts, usage).host.name == "b"
    assert choose_host(NEED, hosts, usage,
                       HostPolicy(cached_image_weight=0)).host.name == "a"


def test_a_job_no_host_takes_names_every_hosts_reason():
    hosts = [host("a", HostState.DRAINING), host("b", HostState.DOWN,
                                                 message="unreachable for 60 s"),
             host("c", cpus=1), host("d", memory=2048), host("e", free=512)]
    usage = {"d": HostUsage(0, 1536)}
    decision = choose_host(NEED, hosts, usage, HostPolicy(cpu_ratio=1.0))
    assert decision.host is None
    assert dict(decision.rejected) == {
        "a": "is DRAINING",
        "b": "is DOWN (unreachable for 60 s)",
        "c": "has 1 of 1 vCPU free (ratio 1), the job needs 2",
        "d": "has 512 of 2048 MiB free for instances, the job needs 1024 MiB",
        "e": "has 512 MiB free memory now, the job needs 1024",
    }
    assert decision.why_not().startswith("no hypervisor host can take the instance: a is "
                                         "DRAINING; b is DOWN")


def test_only_the_hosts_that_fit_are_chosen_from():
    decision = choose_host(NEED, [host("a", HostState.DOWN), host("b")], {})
    assert decision.host.name == "b" and decision.rejected == ()


def test_a_host_failing_several_filters_names_each():
    decision = choose_host(NEED, [host("a", HostState.DRAINING, cpus=0, free=0)], {})
    assert decision.rejected == (("a", "is DRAINING, has 0 of 0 vCPU free (ratio 4), the job "
                                  "needs 2, has 0 MiB free memory now, the job needs 1024"),)


def test_overcommit_follows_the_cpu_ratio():
    hosts = [host("a", cpus=2)]
    assert choose_host(NEED, hosts, {"a": HostUsage(6, 0)}).host is not None  # 8 with 4.0
    assert choose_host(NEED, hosts, {"a": HostUsage(7, 0)}).host is None
