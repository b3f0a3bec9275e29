"""Multi-node jobs over the fakes: every node boots with a NIC on the job's own switch and
a medium naming its peers; the job runs on node0 with the node list; all end with it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytest_twisted

from base.identity import Caller
from base.reasons import Reason
from target_system.lifecycle import InstanceState, JobState
from target_system.nodes import NETWORK_HOOK
from tests.tsf.test_factory_unit import ALICE, JOB, Site, credentials  # noqa: F401
from tsf.factory import Quotas
from vmm.switch import ClusterNetworks

ROOT = Caller.of("root", admin=True)
MULTI = {**JOB, "Resources": {**JOB["Resources"], "Nodes": 3, "CPUsPerNode": 1}}


@pytest.fixture
def site(tmp_path, credentials):  # noqa: F811
    networks = ClusterNetworks(Path(tempfile.mkdtemp(prefix="gridvm-mn-")))
    site = Site(tmp_path, credentials, Quotas(per_user=3, total=4), networks=networks)
    yield site
    for target in site.factory.list_instances(ROOT):
        target.terminate("test over")
    site.wait(1)
    site.repository.close()


@pytest_twisted.ensureDeferred
async def test_a_three_node_job_runs_on_node0_with_the_node_list_and_ends_its_nodes(site):
    job = site.factory.submit(MULTI, ALICE)
    await site.running(job)
    specs = site.vms.specs
    assert len(specs) == 3
    nics = [spec.cluster_nic for spec in specs]
    assert len({nic.mac for nic in nics}) == 3 and len({nic.switch_socket for nic in nics}) == 1
    hooks = [spec.context_files[NETWORK_HOOK].decode() for spec in specs]
    for index, hook in enumerate(hooks):
        assert f"hostname node{index}" in hook and "node0\nnode1\nnode2\n" in hook
    head = site.factory.instance(job.instance_id, ALICE)
    assert head.node.name == "node0" and head.describe()["cluster"]["role"] == "head"
    (submitted,) = site.agent(head).jobs.values()
    assert "SLURM_JOB_NODELIST=node0,node1,node2; export" in submitted.script
    switch_dir = Path(nics[0].switch_socket).parent
    assert switch_dir.is_dir()

    await site.finished(job)
    assert job.state is JobState.SUCCESSFUL, job.log
    await site.run_until(lambda: not switch_dir.exists())
    states = {t.state for t in site.factory.list_instances(ROOT)}
    assert states == {InstanceState.TERMINATED}
    assert not site.factory.clusters.clusters


@pytest_twisted.ensureDeferred
async def test_a_job_whose_nodes_exceed_the_quota_fails_without_booting_any(site):
    job = await site.finished(site.factory.submit(
        {**MULTI, "Resources": {**MULTI["Resources"], "Nodes": 4}}, ALICE))
    assert job.state is JobState.FAILED and job.lifecycle.reason == Reason.QUOTA_EXCEEDED
    assert "4 more instances would make you 4, the limit per user is 3" in job.log[-1]
    assert site.vms.specs == []


@pytest_twisted.ensureDeferred
async def test_a_node_that_fails_to_boot_fails_the_job_and_ends_the_others(site):
    from vmm.errors import GuestCrashed

    site.vms.fail_next_boot(GuestCrashed("kernel panic"))
    job = await site.finished(site.factory.submit(MULTI, ALICE))
    assert job.state is JobState.FAILED and job.lifecycle.reason == Reason.GUEST_CRASHED
    await site.run_until(lambda: not site.factory.clusters.clusters and not site.vms.instances)
    assert {t.state for t in site.factory.list_instances(ROOT)} <= {
        InstanceState.TERMINATED, InstanceState.FAILED}


@pytest_twisted.ensureDeferred
async def test_other_jobs_never_land_on_a_cluster_node(site):
    job = site.factory.submit(MULTI, ALICE)
    await site.running(job)
    single = site.factory.submit(JOB, ALICE)
    await site.run_until(lambda: single.instance_id is not None or single.state.terminal)
    nodes = {t.instance_id for t in site.factory.clusters.clusters[f"job-{job.job_id}"]
             .nodes.values()}
    assert single.instance_id not in nodes
