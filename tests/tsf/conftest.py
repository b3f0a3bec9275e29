"""Fixtures of the site tests that boot no VM: the catalogue on SQLite and PostgreSQL, the
test PKI of tests/image_repo, and a VM manager on libvirt's test driver."""

import pytest_twisted
from twisted.internet import reactor

from tests.image_repo.conftest import database_url, pki  # noqa: F401  (fixtures)
from vmm.hypervisor import Hypervisor
from vmm.manager import VirtualMachineManager

NODE = "<node><cpu><mhz>2000</mhz></cpu><memory>8388608</memory></node>"


@pytest_twisted.async_yield_fixture
async def test_driver_vmm(tmp_path):
    """A VM manager on libvirt's test driver: staging is real, no domain is created."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    vmm = VirtualMachineManager(Hypervisor(f"test://{node}", reactor), tmp_path / "vmm",
                                reactor=reactor, prefix="gridvm-test-driver-")
    await vmm.start()
    try:
        yield vmm
    finally:
        await vmm.hypervisor.close()
