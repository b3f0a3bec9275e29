"""Shared test configuration and the guest images every VM test boots."""

import os
import shutil
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from image_builder import build_image
from vmm.hypervisor import Hypervisor
from vmm.manager import VirtualMachineManager

#: Below /var/tmp so that QEMU, running as libvirt-qemu, can reach the files.
TEST_ROOT = Path("/var/tmp/gridvm-test")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vm`` need libvirtd with QEMU; skip them only where there is none."""
    if os.path.exists("/var/run/libvirt/libvirt-sock") or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="libvirtd is not running (run scripts/setup-host.sh)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def built_images() -> dict:
    """Both image kinds, built once (and cached across runs below TEST_ROOT)."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    return {kind: build_image(kind, output_root=TEST_ROOT / "images")
            for kind in ("initramfs", "qcow2")}


@pytest.fixture(scope="session")
def erofs_image():
    """gridvm's micro guest on a read-only shared erofs root (not the tests' default)."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    return build_image("erofs", output_root=TEST_ROOT / "images")


@pytest_twisted.async_yield_fixture
async def vmm():
    """A VM manager on qemu:///system with its own domain prefix and state directory."""
    async for manager in _manager():
        yield manager


@pytest_twisted.async_yield_fixture
async def restoring_vmm():
    """Like ``vmm``, restoring instances from snapshots of their images."""
    async for manager in _manager(restore=True):
        yield manager


async def _manager(**options):
    state = TEST_ROOT / f"state-{uuid.uuid4().hex[:8]}"
    manager = VirtualMachineManager(Hypervisor("qemu:///system", reactor), state,
                                    reactor=reactor, prefix=f"gridvm-test-{state.name[6:]}-",
                                    **options)
    await manager.start()
    try:
        yield manager
    finally:
        for name, _config, _state in await manager.hypervisor.list_domains(manager.prefix):
            await manager.hypervisor.destroy(name)
        await manager.hypervisor.close()
        shutil.rmtree(state, ignore_errors=True)
