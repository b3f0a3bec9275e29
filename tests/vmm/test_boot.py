"""Real VMs through libvirt + QEMU: boot, readiness, isolation, and every way a boot fails."""

import shutil

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver

from tests.vmm.conftest import boot_spec
from vmm import ports
from vmm.hypervisor import DomainState
from vmm.manager import BootSpec, ImageFile, InstanceSpec
from vmm.readiness import line_probe

pytestmark = pytest.mark.vm


async def assert_nothing_left(vmm, instance_id: str, host_port: int | None = None):
    assert await vmm.state(instance_id) == DomainState.GONE
    assert not vmm.instance_dir(instance_id).exists()
    assert instance_id not in vmm.instances
    if host_port:
        assert not ports.is_listening(host_port)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["initramfs", "qcow2"])
async def test_boot_until_the_agent_answers_then_destroy(vmm, built_images, kind):
    spec = InstanceSpec(boot=boot_spec(built_images[kind]), image=kind,
                        callback_port=ports.free_port(), labels={"owner": "alice"},
                        context_files={"tsi/hello.txt": b"hello"})
    instance = await vmm.boot(spec)
    assert instance.greeting.startswith("OK gridvm-tsi")
    assert set(instance.timings) == {"staging", "create", "ready", "total"}
    assert await vmm.state(instance.instance_id) == DomainState.RUNNING
    assert "gridvm: guest ready for the agent" in instance.console_tail(50)
    files = {p.name for p in instance.directory.iterdir()}
    assert {"context.iso", "console.log"} <= files
    assert ("overlay.qcow2" in files) == (kind == "qcow2")
    cached = [p for p in (vmm.state_dir / "cache").rglob("*") if p.is_file()]
    images = [p for p in cached if p.suffix != ".verified"]
    assert len(images) == (3 if kind == "qcow2" else 2)  # each image file cached once
    assert sorted(p.name + ".verified" for p in images) == \
        sorted(p.name for p in cached if p.suffix == ".verified")  # and verified
    adopted = {a.instance.instance_id: a for a in await vmm.adopt() if a.instance}
    assert adopted[instance.instance_id].instance.host_port == instance.host_port
    assert adopted[instance.instance_id].instance.labels == {"owner": "alice"}

    await vmm.destroy(instance.instance_id)
    await assert_nothing_left(vmm, instance.instance_id, instance.host_port)


class _Recorder(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        self.factory.connections += 1

    def lineReceived(self, line):
        self.factory.lines.append(line)
        self.sendLine(b"pong-" + self.factory.tag + b" " + line)


def recorder(tag: bytes):
    factory = protocol.Factory.forProtocol(_Recorder)
    factory.tag, factory.connections, factory.lines = tag, 0, []
    return factory


PROBE_SCRIPT = r"""
python3 - <<'PY'
import socket
CB, REST = {cb}, {rest}
def attempt(host, port):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.sendall(b"hello\n")
        s.settimeout(2)
        data = s.recv(100).decode(errors="replace").strip()
        s.close()
        return "answer:" + (data or "-")
    except Exception as err:
        return "failed:" + type(err).__name__
for tag, host, port in [("callback", "10.0.2.100", CB), ("gateway-rest", "10.0.2.2", REST),
                        ("cbaddr-rest", "10.0.2.100", REST),
                        ("gateway-callback", "10.0.2.2", CB)]:
    print("isolation", tag, attempt(host, port), flush=True)
a = socket.create_connection(("10.0.2.100", CB), timeout=5)
b = socket.create_connection(("10.0.2.100", CB), timeout=5)
a.sendall(b"one\n"); b.sendall(b"two\n")
print("isolation concurrent", a.recv(100).strip().decode(), "/", b.recv(100).strip().decode(),
      flush=True)
PY
"""


@pytest_twisted.ensureDeferred
async def test_guest_reaches_its_callback_port_and_nothing_else(vmm, built_images):
    callback, rest = recorder(b"cb"), recorder(b"rest")
    cb_listener = reactor.listenTCP(0, callback, interface="127.0.0.1")
    rest_listener = reactor.listenTCP(0, rest, interface="127.0.0.1")
    cb_port, rest_port = cb_listener.getHost().port, rest_listener.getHost().port
    try:
        script = PROBE_SCRIPT.format(cb=cb_port, rest=rest_port).encode()
        spec = InstanceSpec(boot=boot_spec(built_images["initramfs"]), callback_port=cb_port,
                            context_files={"init.d/50-isolation": script})
        instance = await vmm.boot(spec)
        console = instance.console_tail(40)
        results = dict(line.split(" ", 2)[1:] for line in console.splitlines()
                       if line.startswith("isolation "))
        assert results["callback"] == "answer:pong-cb hello", console
        for tag in ("gateway-rest", "cbaddr-rest", "gateway-callback"):
            assert "pong" not in results[tag], (tag, console)
        assert results["concurrent"] == "pong-cb one / pong-cb two", console
        assert rest.connections == 0 and rest.lines == []
        assert sorted(callback.lines) == [b"hello", b"one", b"two"]
        await vmm.destroy(instance.instance_id)
    finally:
        await cb_listener.stopListening()
        await rest_listener.stopListening()


@pytest_twisted.ensureDeferred
async def test_agent_that_never_answers_is_boot_timeout(vmm, built_images):
    spec = InstanceSpec(boot=boot_spec(built_images["initramfs"]), boot_timeout=8,
                        probe=line_probe(reactor, expect=b"NEVER"))
    with pytest.raises(Exception) as err:
        await vmm.boot(spec)
    assert err.value.reason == "BOOT_TIMEOUT"
    assert "did not answer within 8 s" in str(err.value)
    assert "\n" not in str(err.value)
    await assert_nothing_left(vmm, spec.instance_id)


@pytest_twisted.ensureDeferred
async def test_guest_that_dies_while_booting_is_guest_crashed(vmm, built_images):
    good = boot_spec(built_images["initramfs"])
    broken = BootSpec(kernel=good.kernel, initrd=good.initrd,
                      cmdline=good.cmdline + " rdinit=/no/such/init")
    spec = InstanceSpec(boot=broken, boot_timeout=60)
    with pytest.raises(Exception) as err:
        await vmm.boot(spec)
    assert err.value.reason == "GUEST_CRASHED"
    assert "panic" in str(err.value).lower()  # the console tail names the cause
    await assert_nothing_left(vmm, spec.instance_id)


@pytest_twisted.ensureDeferred
async def test_missing_base_image_is_image_unavailable(vmm, built_images, tmp_path):
    good = boot_spec(built_images["qcow2"])
    spec = InstanceSpec(boot=BootSpec(kernel=good.kernel, initrd=good.initrd,
                                      cmdline=good.cmdline,
                                      disk=ImageFile(tmp_path / "gone.qcow2", good.disk.sha512)))
    with pytest.raises(Exception) as err:
        await vmm.boot(spec)
    assert err.value.reason == "IMAGE_UNAVAILABLE"
    assert "gone.qcow2" in str(err.value)
    await assert_nothing_left(vmm, spec.instance_id)


@pytest_twisted.ensureDeferred
async def test_corrupt_base_image_is_checksum_mismatch(vmm, built_images, tmp_path):
    good = boot_spec(built_images["qcow2"])
    corrupt = tmp_path / "disk.qcow2"
    shutil.copy(good.disk.path, corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(70000)
        byte = f.read(1)
        f.seek(70000)
        f.write(bytes([byte[0] ^ 0xFF]))
    spec = InstanceSpec(boot=BootSpec(kernel=good.kernel, initrd=good.initrd,
                                      cmdline=good.cmdline,
                                      disk=ImageFile(corrupt, good.disk.sha512)))
    with pytest.raises(Exception) as err:
        await vmm.boot(spec)
    assert err.value.reason == "IMAGE_CHECKSUM_MISMATCH"
    assert not vmm.cache.contains(good.disk.sha512)
    await assert_nothing_left(vmm, spec.instance_id)


@pytest_twisted.ensureDeferred
async def test_hypervisor_refusal_is_hypervisor_error_with_libvirts_message(vmm, built_images):
    spec = InstanceSpec(boot=boot_spec(built_images["initramfs"]), vcpus=4096)
    with pytest.raises(Exception) as err:
        await vmm.boot(spec)
    assert err.value.reason == "HYPERVISOR_ERROR"
    assert "vcpu" in str(err.value).lower() or "cpu" in str(err.value).lower()
    await assert_nothing_left(vmm, spec.instance_id)
