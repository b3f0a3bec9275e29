"""The factory as a service tree: the pool keeper and the lifetimes sweep are its child
services, started and stopped with it; and the REST app's mapping of the factory's domain
errors to HTTP.  No VM boots (the VM manager is never started)."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import task
from twisted.python import failure

from base.db import sqlite_url
from base.identity import Caller
from image_repo.repository import ImageRepository
from image_repo.trust import TrustPolicy
from target_system.instance import SiteCredentials
from tsf.errors import ImportRefused, InstanceBusy, NotFound, TerminationRefused
from tsf.factory import TargetSystemFactory
from tsf.pools import PoolSpec
from tsf.rest.app import CoreResource
from vmm.hypervisor import Hypervisor
from vmm.manager import VirtualMachineManager

ALICE = Caller.of("alice")


@pytest_twisted.async_yield_fixture
async def factory(tmp_path):
    clock = task.Clock()
    repository = ImageRepository(sqlite_url(tmp_path / "catalogue.sqlite"), tmp_path / "store")
    vmm = VirtualMachineManager(Hypervisor("test:///default", clock), tmp_path / "vmm",
                                reactor=clock, prefix="gridvm-tree-")
    made = TargetSystemFactory(repository, vmm, SiteCredentials.load_or_create(tmp_path / "ca"),
                               tmp_path / "storage", clock, expiry_interval=30.0)
    try:
        yield made
    finally:
        repository.close()


@pytest_twisted.ensureDeferred
async def test_the_pool_keeper_and_the_sweep_run_while_the_factory_runs(factory):
    assert {child.name for child in factory} == {"pools", "lifetimes"}
    assert factory.getServiceNamed("pools") is factory.pool_keeper
    assert factory.fill_pools() is None  # not before the start
    factory.pools = {"demo": PoolSpec("demo", "missing-image", idle=0)}
    factory.pool_interval = 5.0
    assert factory.pool_keeper.specs == factory.pools and factory.pool_keeper.interval == 5.0
    factory.trust = TrustPolicy(require=False)
    assert factory.registry.trust is factory.trust

    factory.startService()
    assert factory.running and factory.pool_keeper.running and factory.lifetimes.sweeping
    job = factory.submit({"Executable": "true"}, ALICE, start=False)
    job.termination = factory.reactor.seconds() + 10
    factory.reactor.advance(30)  # the sweep destroys the job past its termination time
    assert job.job_id not in factory.jobs

    await factory.stopService()
    assert not factory.pool_keeper.running and not factory.lifetimes.sweeping
    assert factory.fill_pools() is None


def test_a_job_gets_its_termination_time_and_may_move_it_within_one_lifetime(factory):
    job = factory.submit({"Executable": "true"}, ALICE, start=False)
    assert job.termination == job.submitted + 30 * 86400
    for when, says in ((-1, "in the future"), (31 * 86400, "at most 30 days")):
        try:
            factory.set_termination(job.job_id, factory.reactor.seconds() + when, ALICE)
        except TerminationRefused as err:
            assert says in str(err) and isinstance(err, ValueError)
        else:
            raise AssertionError(f"{when} was accepted")
    factory.set_termination(job.job_id, 86400, ALICE)
    assert job.termination == 86400 and job.log[-1].endswith(
        "termination time set to 1970-01-02T00:00:00Z")


def error_response(err: Exception) -> tuple[int, dict]:
    response = CoreResource._error(failure.Failure(err), None)
    body, _type = response.encode()
    return response.status, json.loads(body)


def test_domain_errors_become_http_errors_naming_the_problem():
    assert error_response(NotFound("no job j1")) == (
        404, {"errorMessage": "no job j1", "status": 404, "reason": "NOT_FOUND"})
    assert error_response(InstanceBusy("instance i1 has 1 unfinished job(s)"))[0] == 409
    assert error_response(TerminationRefused("terminationTime must lie in the future")) == (
        400, {"errorMessage": "terminationTime must lie in the future", "status": 400,
              "reason": "BAD_REQUEST"})
    status, body = error_response(ImportRefused("Imports[0].From: no job j2"))
    assert (status, body["reason"]) == (400, "BAD_REQUEST")
