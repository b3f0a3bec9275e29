"""Fixtures for tests that boot real VMs through libvirt + QEMU."""

import json
import shutil
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from image_repo.builder import build_image
from vmm.hypervisor import Hypervisor
from vmm.manager import BootSpec, ImageFile, VirtualMachineManager

#: Below /var/tmp so that QEMU, running as libvirt-qemu, can reach the files.
TEST_ROOT = Path("/var/tmp/gridvm-test")
STANDIN_AGENT = Path(__file__).parent / "standin_agent" / "tsi_bridge"


@pytest.fixture(scope="session")
def built_images() -> dict:
    """Both image kinds, built once (and cached across runs below TEST_ROOT)."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    return {kind: build_image(kind, output_root=TEST_ROOT / "images",
                              agent_package=STANDIN_AGENT)
            for kind in ("initramfs", "qcow2")}


def boot_spec(image) -> BootSpec:
    meta = image.metadata
    files = {c["role"]: ImageFile(image.directory / c["file"], c["sha512"])
             for c in meta["origin"]["content"]}
    return BootSpec(kernel=files["kernel"], initrd=files.get("initrd"), disk=files.get("disk"),
                    cmdline=meta["origin"]["boot"]["cmdline"])


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
