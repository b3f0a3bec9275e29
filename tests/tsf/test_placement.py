"""Placement as a pure function: where a job goes, given what is live — no VM, no reactor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import task

from base.identity import Caller
from base.reasons import Reason
from image_repo.schema import validate
from target_system.instance import ImageToBoot
from target_system.jobdesc import parse_job
from target_system.jobs import Job
from target_system.lifecycle import InstanceState
from target_system.nodes import NodeIdentity
from tests.image_repo.examples import builder_document
from tsf.placement import Action, Need, Quotas, Skip, choose, choose_nodes
from tsf.pools import PoolSpec

S = InstanceState
ALICE = Caller.of("alice", vos=["demo"])
DEBIAN = ImageToBoot("img-debian", "debian", None, {})
ALPINE = ImageToBoot("img-alpine", "alpine", None, {})
QUOTAS = Quotas(per_user=2, total=4)


@dataclass
class Live:
    """What placement reads of a target system."""

    instance_id: str
    owner: str = "alice"
    image: ImageToBoot = field(default_factory=lambda: DEBIAN)
    state: InstanceState = S.READY
    vcpus: int = 1
    memory_mib: int = 256
    retiring: str | None = None
    node: NodeIdentity | None = None


def need(vcpus: int = 1, memory_mib: int = 256, caller: Caller = ALICE) -> Need:
    return Need(caller, DEBIAN.image_id, vcpus, memory_mib)


def place(live, loads=None, *, wanted=None, quotas=QUOTAS, pools=None):
    return choose(wanted or need(), live, quotas, pools or {}, loads or {})


def test_reuses_the_least_loaded_instance_with_a_free_slot():
    busy, free = Live("busy", vcpus=2), Live("free", vcpus=2)
    decision = place([busy, free], {"busy": 1})
    assert (decision.action, decision.instance) == (Action.REUSE, free)
    assert decision.note() == "reusing instance free"
    assert decision.reason is None and decision.skipped == ()


def test_draining_too_small_and_other_images_are_skipped_with_why():
    draining = Live("draining", state=S.DRAINING)
    small = Live("small", vcpus=1, memory_mib=256)
    alpine = Live("alpine", image=ALPINE)
    decision = place([draining, small, alpine], wanted=need(vcpus=2, memory_mib=1024),
                     quotas=Quotas(4, 8))
    assert decision.action is Action.BOOT
    assert (decision.vcpus, decision.memory_mib) == (2, 1024)
    assert decision.skipped == (
        Skip("draining", ("is DRAINING", "has 1 vCPU and 256 MiB, the job needs 2 vCPU and "
                                         "1024 MiB")),
        Skip("small", ("has 1 vCPU and 256 MiB, the job needs 2 vCPU and 1024 MiB",)),
        Skip("alpine", ("runs another image (alpine)", "has 1 vCPU and 256 MiB, the job "
                                                      "needs 2 vCPU and 1024 MiB")))
    # the job's log line names the instance the factory booted
    assert decision.note("new1") == "booting instance new1 (2 vCPU, 1024 MiB)"


def test_a_retiring_instance_takes_no_new_job():
    decision = place([Live("full-disk", retiring="only 10 of 100 bytes free")])
    assert decision.action is Action.BOOT
    assert decision.skipped == (Skip("full-disk", ("is retiring (only 10 of 100 bytes free)",)),)


def test_other_users_instances_are_neither_used_nor_mentioned():
    decision = place([Live("bobs", owner="bob")])
    assert decision.action is Action.BOOT and decision.skipped == ()


def test_boots_when_every_suitable_instance_is_full_and_the_quotas_allow():
    decision = place([Live("full")], {"full": 1})
    assert decision.action is Action.BOOT and decision.instance is None
    assert decision.skipped == (Skip("full", ("has no free slot (1 job(s) on 1 vCPU)",)),)


def test_takes_the_most_advanced_pool_instance_that_serves_the_caller():
    pools = {"demo": PoolSpec("demo", "debian", vos=("demo",)),
             "atlas": PoolSpec("atlas", "debian", vos=("atlas",))}
    booting = Live("booting", owner="pool:demo", state=S.BOOTING)
    ready = Live("ready", owner="pool:demo", state=S.READY)
    other_vo = Live("atlas1", owner="pool:atlas")
    gone = Live("gone", owner="pool:old")
    failed = Live("failed", owner="pool:demo", state=S.DRAINING)
    decision = place([booting, other_vo, gone, failed, ready], pools=pools)
    assert (decision.action, decision.instance, decision.pool) == (Action.TAKE, ready, "demo")
    assert decision.note() == "took instance ready from pool demo (READY, no boot of its own)"
    assert {s.instance_id: s.reasons for s in decision.skipped} == {
        "atlas1": ("pool atlas does not serve alice",),
        "gone": ("pool old is no longer configured",), "failed": ("is DRAINING",)}


def test_a_full_instance_of_ones_own_goes_before_a_pool_only_with_a_free_slot():
    pools = {"demo": PoolSpec("demo", "debian")}
    own, pooled = Live("own"), Live("pooled", owner="pool:demo")
    assert place([own, pooled], pools=pools).instance is own
    assert place([own, pooled], {"own": 1}, pools=pools).instance is pooled


def test_no_pool_instance_for_a_user_at_their_quota():
    pools = {"demo": PoolSpec("demo", "debian")}
    mine = [Live("a", image=ALPINE), Live("b", image=ALPINE)]
    decision = place([*mine, Live("pooled", owner="pool:demo")], pools=pools)
    assert decision.action is Action.REFUSE


def test_per_user_quota_shares_the_least_loaded_suitable_instance():
    one, two = Live("one"), Live("two")
    decision = place([one, two], {"one": 2, "two": 1})
    assert (decision.action, decision.instance) == (Action.SHARE, two)
    assert decision.reason is Reason.QUOTA_EXCEEDED
    assert decision.note() == ("sharing instance two (you have 2 instances, the limit per "
                               "user is 2)")


def test_per_user_quota_without_a_suitable_instance_refuses():
    decision = place([Live("a", image=ALPINE), Live("b", state=S.DRAINING)])
    assert decision.action is Action.REFUSE and decision.instance is None
    assert decision.reason is Reason.QUOTA_EXCEEDED
    assert decision.limit == "you have 2 instances, the limit per user is 2"


def test_site_wide_quota_refuses_or_shares():
    others = [Live(f"bob{i}", owner="bob") for i in range(3)]
    refused = place([*others, Live("mine", image=ALPINE)])
    assert refused.action is Action.REFUSE and refused.reason is Reason.QUOTA_EXCEEDED
    assert refused.limit == "the site runs 4 instances, its limit is 4"
    shared = place([*others, Live("mine")], {"mine": 1})
    assert (shared.action, shared.instance.instance_id) == (Action.SHARE, "mine")
    assert shared.note() == "sharing instance mine (the site runs 4 instances, its limit is 4)"


def test_a_pool_instance_is_taken_even_when_the_site_is_full():
    """Pool instances already count against the site's total: taking one boots nothing."""
    pools = {"demo": PoolSpec("demo", "debian")}
    live = [*(Live(f"bob{i}", owner="bob") for i in range(3)), Live("p", owner="pool:demo")]
    assert place(live, pools=pools).action is Action.TAKE


def test_the_need_is_the_larger_of_the_job_and_the_images_hardware():
    clock = task.Clock()
    job = Job(owner="alice", reactor=clock, storage=Path("/nonexistent"),
              description=parse_job({"Executable": "true",
                                     "Resources": {"CPUs": 2, "Memory": "100M"}}))
    doc = builder_document()
    doc["origin"]["virtual_hardware"] = {"vcpus": 1, "memory_mib": 512}
    image = ImageToBoot("img", "big", validate(doc), {})
    assert Need.of(job, ALICE, image) == Need(ALICE, "img", 2, 512)
    assert Need.of(job, ALICE, ImageToBoot("img", "bare", None, {})).memory_mib == 256


def test_a_cluster_node_is_never_reused_for_another_job():
    node = Live("node", node=NodeIdentity("c1", 1, "node1", "worker", "10.77.1.3", "02:00"))
    decision = place([node])
    assert decision.action is Action.BOOT
    assert decision.skipped == (Skip("node", ("is node node1 of cluster c1",)),)


def test_a_cluster_boots_all_its_nodes_or_none():
    mine = [Live("a")]
    assert choose_nodes(need(), 1, mine, QUOTAS).action is Action.BOOT
    refused = choose_nodes(need(), 2, mine, QUOTAS)
    assert (refused.action, refused.reason) == (Action.REFUSE, Reason.QUOTA_EXCEEDED)
    assert refused.limit == ("2 more instances would make you 3, the limit per user is 2")
    others = [Live(str(n), owner="bob") for n in range(3)]
    site_full = choose_nodes(need(), 2, others, QUOTAS)
    assert site_full.limit == ("2 more instances would make the site run 5, its limit is 4")
