"""A VM on the second libvirt host (scripts/setup-second-host.sh): its files are volumes of
the host's storage pool, uploaded and checked through libvirt alone, and gone with it."""

import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.conftest import TEST_ROOT
from tests.vmm.conftest import boot_spec
from vmm import ports
from vmm.hypervisor import DomainState, Hypervisor
from vmm.manager import InstanceSpec, VirtualMachineManager
from vmm.volumes import StoragePool, base_volume

pytestmark = pytest.mark.vm

HOST2_URI_FILE = Path("/var/lib/gridvm/host2-uri")
HOST2_POOL_DIR = "/var/lib/gridvm/host2-home/pool"


def host2_uri() -> str:
    if not HOST2_URI_FILE.exists():
        pytest.skip("no second libvirt host (scripts/setup-second-host.sh)")
    return HOST2_URI_FILE.read_text().strip()


@pytest_twisted.async_yield_fixture
async def remote_vmm():
    state = TEST_ROOT / f"state-{uuid.uuid4().hex[:8]}"
    name = f"gridvm-test-{state.name[6:]}"
    manager = VirtualMachineManager(
        Hypervisor(host2_uri(), reactor), state, reactor=reactor, prefix=f"{name}-",
        storage_pool=StoragePool(name, f"{HOST2_POOL_DIR}-{state.name[6:]}"),
        address="127.0.0.2")
    await manager.start()
    try:
        yield manager
    finally:
        for instance_id in list(manager.instances):
            await manager.destroy(instance_id)

        def drop_pool(conn):
            pool = conn.storagePoolLookupByName(name)
            for vol in pool.listAllVolumes():
                vol.delete(0)
            pool.destroy()
            pool.delete(0)
            pool.undefine()

        await manager.hypervisor.run(drop_pool)
        await manager.hypervisor.close()


def volumes(manager) -> set[str]:
    def names(conn):
        pool = conn.storagePoolLookupByName(manager.storage_pool.name)
        pool.refresh(0)
        return set(pool.listVolumes())

    return manager.hypervisor.run(names)


@pytest_twisted.ensureDeferred
async def test_a_vm_on_a_remote_host_runs_from_volumes_uploaded_through_libvirt(
        remote_vmm, built_images):
    image = built_images["qcow2"]
    spec = InstanceSpec(boot=boot_spec(image), image="qcow2", callback_port=ports.free_port(),
                        context_files={"tsi/hello.txt": b"hello"})
    instance = await remote_vmm.boot(spec)
    assert instance.greeting.startswith("OK gridvm-tsi")
    assert instance.address == "127.0.0.2"
    assert ports.is_listening(instance.host_port, "127.0.0.2")
    assert not ports.is_listening(instance.host_port, "127.0.0.1")
    domain = instance.domain
    bases = {base_volume(f.sha512) for f in (spec.boot.kernel, spec.boot.initrd, spec.boot.disk)
             if f is not None}
    held = await volumes(remote_vmm)
    assert bases | {f"{domain}-root.qcow2", f"{domain}-context.iso",
                    f"{domain}-console.log"} <= held
    assert not (remote_vmm.state_dir / "cache").exists() or not any(
        (remote_vmm.state_dir / "cache").rglob("*.*"))

    await remote_vmm.destroy(instance.instance_id)
    assert await remote_vmm.state(instance.instance_id) == DomainState.GONE
    held = await volumes(remote_vmm)
    assert not any(name.startswith(domain) for name in held)
    assert bases <= held  # cached for the next instance
    kept = remote_vmm.console_text(instance.instance_id)
    assert kept and "gridvm: guest ready for the agent" in kept
