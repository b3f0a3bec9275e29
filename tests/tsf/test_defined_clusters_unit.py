"""Cluster definitions over the fakes: services start in dependency order, every node is
told its role and peers, a scalable service scales and the others hear of it, a failed node
fails or degrades the cluster, and the cluster ends in reverse order."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytest_twisted

from base.identity import Caller
from base.reasons import Reason
from target_system.jobdesc import JobDescriptionError
from target_system.lifecycle import InstanceState
from target_system.nodes import NETWORK_HOOK, SERVICE_HOOK
from tests.tsf.test_factory_unit import ALICE, Site, credentials  # noqa: F401
from tsf.admission import SiteLimits
from tsf.clusters import ClusterState
from tsf.errors import ClusterBusy, NotFound
from tsf.factory import Quotas
from vmm.errors import GuestCrashed
from vmm.switch import ClusterNetworks

BOB = Caller.of("bob", groups=["users"])
IMAGE = {"OperatingSystem": "debian"}
DEFINITION = {"Name": "htc", "Services": {
    "worker": {"Resources": IMAGE, "Min": 1, "Max": 3, "Count": 2, "DependsOn": ["head"],
               "Context": {"Environment": {"ROLE": "worker"}, "Start": ["echo up"]}},
    "head": {"Resources": IMAGE, "Context": {"Files": {"motd": "hello"}}},
}}
SITE = SiteLimits(nodes=4)


@pytest.fixture
def site(tmp_path, credentials):  # noqa: F811
    networks = ClusterNetworks(Path(tempfile.mkdtemp(prefix="gridvm-dc-")))
    site = Site(tmp_path, credentials, Quotas(per_user=4, total=5), networks=networks)
    yield site
    for target in site.factory.list_instances(Caller.of("root", admin=True)):
        target.terminate("test over")
    site.wait(1)
    site.repository.close()


async def done(site, deferred):
    """Run the clock until ``deferred`` fired."""
    await site.run_until(lambda: deferred.called)
    return deferred


async def settled(site, cluster):
    keeper = site.factory.clusters
    await site.run_until(lambda: cluster.cluster_id not in keeper._work)
    return cluster


@pytest_twisted.ensureDeferred
async def test_head_then_workers_scaled_up_and_down_then_ended_in_reverse(site):
    keeper = site.factory.clusters
    cluster = keeper.up(DEFINITION, ALICE, SITE)
    await site.run_until(lambda: len(site.vms.specs) >= 1)
    site.wait(0.5)
    assert len(site.vms.specs) == 1  # the workers wait for the head to be READY
    await settled(site, cluster)
    assert cluster.state is ClusterState.READY, cluster.log
    names = [t.node.name for t in cluster.cluster.nodes.values()]
    assert names == ["head-0", "worker-0", "worker-1"]
    head_spec = site.vms.specs[0]
    assert head_spec.context_files["service/files/motd"] == b"hello"
    worker_spec = site.vms.specs[1]
    assert b"echo up" in worker_spec.context_files["service/start.sh"]
    assert SERVICE_HOOK in worker_spec.context_files
    # the head booted before the workers existed: it is told of them once they are READY
    head = cluster.cluster.nodes["head-0"]
    assert "worker-1" in site.agent(head).scripts[-1]
    assert "head-0" in worker_spec.context_files[NETWORK_HOOK].decode()

    await done(site, keeper.scale(cluster.cluster_id, "worker", 3, ALICE))
    assert cluster.state is ClusterState.READY and cluster.counts["worker"] == 3
    doc = cluster.describe()
    assert [n["name"] for n in doc["services"]["worker"]["nodes"]] == [
        "worker-0", "worker-1", "worker-2"]
    assert "worker-2" in site.agent(head).scripts[-1]

    await done(site, keeper.scale(cluster.cluster_id, "worker", 1, ALICE))
    assert [n for n in cluster.members["worker"]] == ["worker-0"]
    assert "worker-1" not in site.agent(head).scripts[-1]
    gone = cluster.cluster.nodes["worker-2"]
    assert gone.state is InstanceState.TERMINATED

    switch_dir = cluster.cluster.switch.directory
    await done(site, keeper.down(cluster.cluster_id, ALICE))
    assert cluster.state is ClusterState.STOPPED
    assert not switch_dir.exists()
    # ended in reverse order: the workers before the head
    order = [i for i in site.vms.destroyed]
    assert order.index(head.instance_id) > order.index(
        cluster.cluster.nodes["worker-0"].instance_id)
    assert keeper.get(cluster.cluster_id, ALICE).describe()["state"] == "STOPPED"


@pytest.mark.parametrize("doc, path", [
    ({"Services": {"a": {"Resources": IMAGE, "Colour": 1}}}, "Services.a.Colour"),
    ({"Services": {"a": {"Resources": {"Imag": "x"}}}}, "Services.a.Resources.Imag"),
    ({"Services": {"a": {"DependsOn": ["b"]}}}, "Services.a.DependsOn"),
    ({"Services": {"a": {"DependsOn": ["b"]}, "b": {"DependsOn": ["a"]}}},
     "Services.a.DependsOn"),
    ({"Services": {"a": {"Min": 2, "Max": 1}}}, "Services.a.Max"),
    ({"Services": {"a": {"Min": 1, "Max": 9}}}, "Services"),
    ({"Services": {"a": {"Context": {"Files": {"../x": "y"}}}}}, "Services.a.Context.Files.../x"),
    ({"Services": {"a": {"Context": {"Start": ["a\nb"]}}}}, "Services.a.Context.Start[0]"),
    ({"Services": {"a": {"Resources": {"CPUs": 99}}}}, "Services.a.Resources.CPUs"),
    ({"Services": {"A_b": {}}}, "Services.A_b"),
    ({"Nodes": 2, "Services": {"a": {}}}, "Nodes"),
])
def test_a_bad_definition_names_the_key(site, doc, path):
    with pytest.raises(JobDescriptionError) as err:
        site.factory.clusters.up(doc, ALICE, SITE)
    assert err.value.path == path, str(err.value)
    assert site.vms.specs == [] and not site.factory.clusters.defined


@pytest_twisted.ensureDeferred
async def test_scaling_is_bounded_and_only_of_scalable_services_of_ones_own(site):
    keeper = site.factory.clusters
    cluster = await settled(site, keeper.up(DEFINITION, ALICE, SITE))
    for service, count, path in (("head", 2, "Service"), ("worker", 4, "Count"),
                                 ("worker", 0, "Count"), ("db", 1, "Service")):
        with pytest.raises(JobDescriptionError) as err:
            keeper.scale(cluster.cluster_id, service, count, ALICE)
        assert err.value.path == path
    with pytest.raises(NotFound):
        keeper.scale(cluster.cluster_id, "worker", 3, BOB)
    scaling = keeper.scale(cluster.cluster_id, "worker", 3, ALICE)
    with pytest.raises(ClusterBusy):
        keeper.scale(cluster.cluster_id, "worker", 1, ALICE)
    await done(site, scaling)


@pytest_twisted.ensureDeferred
async def test_quotas_count_a_cluster_s_nodes(site):
    keeper = site.factory.clusters
    big = {"Services": {"a": {"Resources": IMAGE, "Count": 5}}}
    with pytest.raises(Exception) as err:
        keeper.up(big, ALICE, SiteLimits(nodes=8))
    assert err.value.reason == Reason.QUOTA_EXCEEDED
    cluster = await settled(site, keeper.up(DEFINITION, ALICE, SITE))
    with pytest.raises(Exception) as err:  # 3 live + 2 = 5 > 4 per user
        keeper.up({"Services": {"a": {"Resources": IMAGE, "Count": 2}}}, ALICE, SITE)
    assert err.value.reason == Reason.QUOTA_EXCEEDED
    await done(site, keeper.down(cluster.cluster_id, ALICE))


@pytest_twisted.ensureDeferred
async def test_a_failed_worker_degrades_and_a_failed_head_fails_the_cluster(site):
    keeper = site.factory.clusters
    cluster = await settled(site, keeper.up(DEFINITION, ALICE, SITE))
    worker = cluster.cluster.nodes["worker-1"]
    site.vms.crash(worker.instance_id)
    await site.run_until(lambda: cluster.state is ClusterState.DEGRADED)
    assert cluster.reason == Reason.GUEST_CRASHED and "worker-1" in cluster.message
    assert cluster.members["worker"] == ["worker-0"]
    head = cluster.cluster.nodes["head-0"]
    await site.run_until(lambda: "worker-1" not in site.agent(head).scripts[-1])

    site.vms.crash(head.instance_id)
    await site.run_until(lambda: cluster.state is ClusterState.FAILED)
    assert cluster.reason == Reason.GUEST_CRASHED and "head-0" in cluster.message
    await site.run_until(lambda: all(t.lifecycle.terminal
                                     for t in cluster.cluster.nodes.values()))
    assert not cluster.cluster.switch.directory.exists()


@pytest_twisted.ensureDeferred
async def test_a_head_that_never_boots_fails_the_cluster_before_any_worker(site):
    site.vms.fail_next_boot(GuestCrashed("kernel panic"))
    cluster = await settled(site, site.factory.clusters.up(DEFINITION, ALICE, SITE))
    assert cluster.state is ClusterState.FAILED and cluster.reason == Reason.GUEST_CRASHED
    assert len(site.vms.specs) == 1
