"""Fixtures for tests that boot real VMs through libvirt + QEMU."""

import json
import shutil
import uuid
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from target_system.images import built_image_boot_spec
from tests.conftest import TEST_ROOT
from vmm.hypervisor import Hypervisor
from vmm.manager import BootSpec, VirtualMachineManager


def boot_spec(image) -> BootSpec:
    return built_image_boot_spec(image)


@pytest_twisted.async_yield_fixture
async def vmm():
    """A VM manager on qemu:///system with its own domain prefix and state directory."""
    state = TEST_ROOT / f"state-{uuid.uuid4().hex[:8]}"
    manager = VirtualMachineManager(Hypervisor("qemu:///system", reactor), state,
                                    reactor=reactor, prefix=f"gridvm-test-{state.name[6:]}-")
    await manager.start()
    try:
        yield manager
    finally:
        for name, _config, _state in await manager.hypervisor.list_domains(manager.prefix):
            await manager.hypervisor.destroy(name)
        await manager.hypervisor.close()
        shutil.rmtree(state, ignore_errors=True)


def json_file(path: Path) -> dict:
    return json.loads(path.read_text())
