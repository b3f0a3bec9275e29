"""Warm pools with real VMs: a job of a user the pool serves starts on a pre-booted instance
(no boot of its own), the instance becomes that user's, the pool boots a replacement, and a
pool that is no longer configured has its instances ended."""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from base.identity import Caller
from target_system.lifecycle import InstanceState, JobState
from tests.e2e.conftest import ALICE
from tsf.pools import PoolSpec, check_specs

pytestmark = pytest.mark.vm

IMAGE = "gridvm-debian12-initramfs"


async def eventually(condition, timeout=180.0, what="condition"):
    for _ in range(int(timeout / 0.2)):
        result = condition()
        if result:
            return result
        await task.deferLater(reactor, 0.2, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def pool_ready(factory, exclude=()):
    return [t for t in factory.instances.values()
            if t.owner == "pool:demo" and t.state is InstanceState.READY
            and t.instance_id not in exclude]


@pytest_twisted.ensureDeferred
async def test_a_pool_instance_runs_a_job_without_a_boot_and_is_replaced(site):
    factory, _repository, _root = site
    factory.pools = {"demo": PoolSpec("demo", IMAGE, idle=1, vos=("demo",))}
    factory.pool_interval = 0.5
    factory.startService()
    try:
        (warm,) = await eventually(lambda: pool_ready(factory), what="a warm pool instance")
        assert warm.keep_idle and warm.owner == "pool:demo"

        job = factory.submit({"Executable": "/bin/echo", "Arguments": ["warm start"],
                              "Resources": {"Image": IMAGE}}, ALICE)
        await factory.wait(job.job_id, ALICE).addTimeout(120, reactor)
        assert job.state is JobState.SUCCESSFUL, job.log
        assert (job.storage / "stdout").read_text() == "warm start\n"
        assert job.instance_id == warm.instance_id
        assert warm.owner == "alice" and not warm.keep_idle  # alice's alone from now on
        assert any(f"took instance {warm.instance_id} from pool demo (READY" in line
                   for line in job.log), job.log
        assert not any("booting instance" in line for line in job.log)
        assert factory.instance(warm.instance_id, ALICE) is warm

        (spare,) = await eventually(lambda: pool_ready(factory, {warm.instance_id}),
                                    what="the pool's replacement")
        with pytest.raises(Exception, match="no instance"):
            factory.instance(spare.instance_id, ALICE)  # nobody's yet: alice cannot see it

        factory.pools = {}  # the operator removes the pool: its waiting instance ends
        factory.fill_pools()
        await eventually(lambda: spare.lifecycle.terminal, what="the spare to end")
        assert spare.state is InstanceState.TERMINATED
        assert warm.state is InstanceState.READY  # a taken instance is not the pool's
    finally:
        await factory.stopService()


def test_pool_specs_are_checked_and_serve_their_vos():
    spec = PoolSpec("atlas", IMAGE, vos=("atlas",))
    assert spec.serves(Caller.of("a", vos=["atlas", "cms"]))
    assert not spec.serves(Caller.of("b", vos=["cms"]))
    assert PoolSpec("any", IMAGE).serves(Caller.of("c"))
    for bad, says in (([spec, spec], "defined twice"), ([PoolSpec("x y", IMAGE)], "letters"),
                      ([PoolSpec("p", "")], "names no image"),
                      ([PoolSpec("p", IMAGE, vcpus=0)], "vcpus >= 1")):
        with pytest.raises(ValueError, match=says):
            check_specs(bad)
