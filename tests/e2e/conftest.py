"""A whole site in-process: image repository, VM manager, factory — real VMs."""

import shutil
import uuid

import pytest_twisted
from twisted.internet import reactor

from base.db import make_engine, sqlite_url
from base.identity import Caller
from image_repo.repository import ImageRepository
from target_system.instance import Deadlines, HealthPolicy, SiteCredentials
from tests.conftest import TEST_ROOT
from tsf.factory import Quotas, TargetSystemFactory

ALICE = Caller.of("alice", groups=["users"], vos=["demo"])
BOB = Caller.of("bob", groups=["users"], vos=["demo"])
CREATOR = Caller.of("creator", groups=["images"])


def register_built(repository: ImageRepository, built) -> str:
    files = {ref["file"]: built.directory / ref["file"]
             for ref in built.metadata["origin"]["content"]}
    record = repository.register(built.metadata, files, CREATOR)
    return record.id


def make_factory(vmm, root, repository, credentials, **options) -> TargetSystemFactory:
    options.setdefault("deadlines", Deadlines(staging=120, booting=120, connecting=60))
    options.setdefault("health", HealthPolicy(interval=5, missed_budget=3, idle_timeout=None))
    factory = TargetSystemFactory(repository, vmm, credentials, root / "storage", reactor,
                                  **options)
    factory.runner.poll_interval = 0.5
    return factory


@pytest_twisted.async_yield_fixture
async def site(vmm, built_images):
    """(factory, repository, root); every instance is terminated afterwards."""
    root = TEST_ROOT / f"site-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    engine = make_engine(sqlite_url(root / "catalogue.sqlite"))
    repository = ImageRepository(engine, root / "store")
    for built in built_images.values():
        register_built(repository, built)
    credentials = SiteCredentials.load_or_create(root / "ca")
    factory = make_factory(vmm, root, repository, credentials, quotas=Quotas(4, 8))
    try:
        yield factory, repository, root
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("test over")
        repository.close()
        shutil.rmtree(root, ignore_errors=True)
