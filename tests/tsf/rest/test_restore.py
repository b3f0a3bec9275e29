"""A site restores new instances from its image's snapshot (``[fast_start] restore``), its
warm pools' instances included."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from target_system.jobdesc import parse_job
from target_system.lifecycle import JobState
from tests.e2e.conftest import ALICE, BOB
from tests.e2e.test_pools import eventually, pool_ready
from tests.tsf.rest.conftest import PUBLIC, running_site
from tsf.pools import PoolSpec

pytestmark = pytest.mark.vm


async def run(site, caller):
    job = site.factory.submit(parse_job({"Executable": "/bin/echo", "Arguments": ["hi"],
                                         "Resources": {"Image": PUBLIC}}), caller)
    await site.factory.wait(job.job_id, caller).addTimeout(300, reactor)
    assert job.state is JobState.SUCCESSFUL, job.log
    return job


@pytest_twisted.ensureDeferred
async def test_the_first_instance_boots_and_once_its_snapshot_is_built_the_next_is_restored(
        built_images):
    async with running_site(built_images, fast_start={"restore": True}) as (site, http):
        first = await run(site, ALICE)
        restorer = site.vmm.first.vmm.restorer
        for _ in range(300):  # the snapshot is built in the background after the first boot
            if restorer.store.all() and not restorer.builds:
                break
            await task.deferLater(reactor, 1.0, lambda: None)
        assert restorer.store.all(), "no snapshot was built"
        second = await run(site, BOB)  # bob has no instance to reuse: a new one
        assert second.instance_id != first.instance_id
        assert (second.storage / "stdout").read_text() == "hi\n"
        started = {}
        for job, user in ((first, "alice"), (second, "bob")):
            answer = await http("GET", f"instances/{job.instance_id}", user=user)
            assert answer.status_code == 200, answer.text
            started[user] = answer.json()["startedBy"]
        assert started == {"alice": "booted", "bob": "restored"}


@pytest_twisted.ensureDeferred
async def test_a_warm_pool_is_filled_by_restores_and_its_instance_runs_a_job(built_images):
    async with running_site(built_images, fast_start={"restore": True}) as (site, _http):
        factory = site.factory
        await run(site, ALICE)  # boots; the image's snapshot is built after it
        restorer = site.vmm.first.vmm.restorer
        await eventually(lambda: restorer.store.all() and not restorer.builds, 300,
                         "a snapshot")
        factory.pools = {"demo": PoolSpec("demo", PUBLIC, idle=1, vos=("demo",))}
        factory.pool_interval = 0.5
        factory.fill_pools()
        (warm,) = await eventually(lambda: pool_ready(factory), what="a warm pool instance")
        assert warm.describe()["startedBy"] == "restored"

        job = await run(site, BOB)  # bob has no instance of his own: he takes the pool's
        assert job.instance_id == warm.instance_id and warm.owner == "bob"
        assert (job.storage / "stdout").read_text() == "hi\n"
        (spare,) = await eventually(lambda: pool_ready(factory, {warm.instance_id}),
                                    what="the pool's replacement")
        assert spare.describe()["startedBy"] == "restored"  # restored, cheaper than a boot
