"""Snapshots without a VM: the save file's header edit, the key, the store's invalidation,
and the identity line between host and guest."""

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tsi_bridge.agent import awaiting
from vmm import injection
from vmm.errors import RestoreFailed
from vmm.manager import BootSpec, ImageFile, InstanceSpec
from vmm.snapshots import (
    SAVE_HEADER,
    SAVE_MAGIC,
    SaveFeeder,
    SnapshotStore,
    edit_save_head,
    guest_sources_digest,
)

XML = (b"<domain type='qemu'>\n  <name>gridvm-s0123456789a</name>\n"
       b"  <uuid>2d2dd85f-0ffe-4280-bc5e-2e09ef92abba</uuid>\n</domain>\n")
COOKIE = b"<cookie><name>gridvm-s0123456789a</name></cookie>"


def save_file(xml: bytes = XML, pad: int = 64) -> bytes:
    data = xml + b"\0" * pad
    header = SAVE_HEADER.pack(SAVE_MAGIC, 2, len(data) + len(COOKIE), 1, 0, len(data),
                              *([0] * 14))
    return header + data + COOKIE + b"RAM" * 1000


RENAME = [("<name>gridvm-s0123456789a</name>", "<name>gridvm-0123456789ab</name>"),
          ("<uuid>2d2dd85f-0ffe-4280-bc5e-2e09ef92abba</uuid>",
           "<uuid>11111111-2222-3333-4444-555555555555</uuid>")]


def test_the_header_edit_replaces_same_length_values_inside_the_xml_only():
    original = save_file()
    edited = edit_save_head(original, RENAME)
    assert len(edited) == len(original)
    assert edited[:SAVE_HEADER.size] == original[:SAVE_HEADER.size]  # no offset moved
    assert b"<name>gridvm-0123456789ab</name>" in edited
    assert b"11111111-2222-3333-4444-555555555555" in edited
    assert edited.endswith(COOKIE + b"RAM" * 1000)  # the cookie's name is left alone


def test_the_header_edit_refuses_a_longer_name_and_a_name_outside_the_xml():
    with pytest.raises(RestoreFailed, match="same length"):
        edit_save_head(save_file(), [("<name>gridvm-s0123456789a</name>",
                                      "<name>gridvm-0123456789abc</name>")])
    xml_without_name = XML.replace(b"<name>gridvm-s0123456789a</name>", b"<name>x</name>")
    with pytest.raises(RestoreFailed, match="not in the save file"):  # only in the cookie
        edit_save_head(save_file(xml_without_name), RENAME[:1])


def test_the_header_edit_refuses_what_is_not_a_save_file():
    with pytest.raises(RestoreFailed, match="magic"):
        edit_save_head(b"x" * 200, RENAME)
    with pytest.raises(RestoreFailed, match="cut short"):
        edit_save_head(save_file()[:120], RENAME)


def test_the_feeder_writes_the_edited_file_into_a_fifo(tmp_path):
    source = tmp_path / "memory.save"
    source.write_bytes(save_file() + os.urandom(1 << 20))
    fifo = tmp_path / "memory.fifo"
    feeder = SaveFeeder(source, fifo, RENAME).start()
    with open(fifo, "rb") as f:
        received = f.read()
    feeder.stop()
    assert received == edit_save_head(source.read_bytes(), RENAME)
    assert feeder.error is None and not fifo.exists()


def test_a_feeder_nobody_reads_from_stops(tmp_path):
    source = tmp_path / "memory.save"
    source.write_bytes(save_file())
    feeder = SaveFeeder(source, tmp_path / "memory.fifo", RENAME, open_timeout=30).start()
    feeder.stop(timeout=5)
    assert not feeder._thread.is_alive()


def test_the_guest_sources_digest_follows_the_sources(tmp_path):
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "a.py").write_text("one")
    before = guest_sources_digest(tmp_path, ["agent"])
    (tmp_path / "agent" / "a.py").write_text("two")
    assert guest_sources_digest(tmp_path, ["agent"]) != before


def restorable_spec(tmp_path: Path, **changes) -> InstanceSpec:
    kernel = ImageFile(tmp_path / "vmlinuz", "a" * 128)
    initrd = ImageFile(tmp_path / "initrd", "b" * 128)
    spec = InstanceSpec(boot=BootSpec(kernel=kernel, initrd=initrd, cmdline="console=ttyS0"),
                        image="img", restorable=True,
                        context_files={"tsi/agent.conf": b"{}", "tsi/agent.key": b"k"})
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


@pytest.fixture
def restorer(tmp_path, test_uri):
    from vmm.hypervisor import Hypervisor
    from vmm.manager import VirtualMachineManager

    manager = VirtualMachineManager(Hypervisor(test_uri, reactor), tmp_path / "state",
                                    reactor=reactor, restore=True)
    return manager


@pytest_twisted.ensureDeferred
async def test_a_changed_key_input_drops_the_old_snapshot_and_builds_anew(restorer, tmp_path):
    vmm = restorer
    await vmm.start()
    vmm.hypervisor.uri = "qemu:///system"  # the test driver stands in for QEMU
    try:
        spec = restorable_spec(tmp_path)
        key, slot = await vmm.restorer.key(spec)
        assert key == (await vmm.restorer.key(restorable_spec(tmp_path)))[0]  # stable
        building = vmm.restorer.store.building(key.digest)
        (building / "memory.save").write_bytes(b"x")
        vmm.restorer.store.commit(building, key.digest, slot, "gridvm-s0123456789a", "u")
        builds = []
        vmm.restorer.build = lambda *args: builds.append(args) or defer.succeed(None)

        snapshot = await vmm.restorer.usable(spec)  # the key matches: restorable
        assert snapshot is not None and snapshot.key == key.digest and not builds

        changed = restorable_spec(tmp_path, memory_mib=512)
        assert (await vmm.restorer.key(changed))[1] != slot  # another slot: both kept
        for change in ({"cmdline": "console=ttyS0 quiet"}, {"tb_cache_mib": 64}):
            new = restorable_spec(tmp_path)
            if "cmdline" in change:
                new.boot = BootSpec(kernel=spec.boot.kernel, initrd=spec.boot.initrd,
                                    cmdline=change["cmdline"])
            else:
                vmm.tb_cache_mib = change["tb_cache_mib"]
            new_key, new_slot = await vmm.restorer.key(new)
            assert new_slot == slot and new_key.digest != key.digest
        assert await vmm.restorer.usable(new) is None  # out of date: boots ...
        assert vmm.restorer.store.find(key.digest) is None  # ... the old one is gone ...
        assert [args[1].digest for args in builds] == [new_key.digest]  # ... a new one builds
    finally:
        await vmm.hypervisor.close()


def test_why_an_instance_is_not_restorable(restorer, tmp_path):
    why = restorer.restorer.why_not_restorable
    assert why(restorable_spec(tmp_path)) == "its hypervisor is not QEMU"
    restorer.hypervisor.uri = "qemu:///system"
    assert why(restorable_spec(tmp_path)) == ""
    assert "cannot take an identity" in why(restorable_spec(tmp_path, restorable=False))
    spec = restorable_spec(tmp_path)
    spec.context_files["init.d/hook"] = b"echo"
    assert "init.d/hook at boot" in why(spec)
    assert "no tsi/agent.conf" in why(restorable_spec(tmp_path, context_files={}))


def test_the_identity_goes_over_the_channel_and_is_acknowledged(tmp_path, monkeypatch):
    """The host's inject() against the agent's identity_from() over a unix socket (as QEMU
    offers the channel); nothing of the test machine itself is changed."""
    for change in ("step_clock", "set_hostname", "reseed"):
        monkeypatch.setattr(awaiting, change, lambda value: None)
    path = tmp_path / "identity.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    root = tmp_path / "identity"
    result = {}
    steps = awaiting.Steps()

    def guest() -> None:
        conn, _ = server.accept()
        result["conf"], ack = awaiting.identity_from(
            conn.fileno(), str(root), settle=0, announce=lambda line: result.update(line=line),
            steps=steps)
        awaiting.acknowledge(conn.detach(), ack)  # once the agent listens

    thread = threading.Thread(target=guest)
    thread.start()
    identity = injection.Identity("abc123", {"tsi/agent.conf": b"{}", "tsi/agent.key": b"K"})
    ack = injection.inject(path, identity, timeout=10)
    thread.join(10)
    server.close()
    assert ack.instance_id == "abc123" and len(ack.random_draw) == 16
    assert result["line"] == awaiting.QUIESCENT_LINE
    assert result["conf"] == str(root / "tsi/agent.conf")
    assert (root / "tsi/agent.key").read_bytes() == b"K"
    assert (root / "tsi/agent.key").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    # timed from the identity's arrival, for the agent's log line once it acked
    assert [step for step, _seconds in steps.seconds] == ["parse", "clock", "reseed", "files"]
    assert str(steps).startswith("parse ") and str(steps).endswith(" ms")


def test_no_ack_within_the_deadline_fails_the_injection(tmp_path):
    path = tmp_path / "identity.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    with pytest.raises(RestoreFailed, match=r"did not take its identity within 0\.3 s"):
        injection.inject(path, injection.Identity("a", {}), timeout=0.3)
    server.close()


@pytest.mark.parametrize("line, error", [
    (b"not json\n", "not an identity line"),
    (b'{"instance_id": "a b", "files": {"tsi/agent.conf": ""}, "seed": "00", "time": 1}\n',
     "bad instance_id"),
    (b'{"instance_id": "a", "files": {"../x": "", "tsi/agent.conf": ""}, "seed": "00",'
     b' "time": 1}\n', "bad file name"),
    (b'{"instance_id": "a", "files": {}, "seed": "00", "time": 1}\n', "no tsi/agent.conf"),
])
def test_a_bad_identity_line_is_refused(line, error):
    with pytest.raises(awaiting.IdentityError, match=error):
        awaiting.parse_identity(line)


def test_struct_layout_matches_libvirt():
    assert SAVE_HEADER.size == 16 + 19 * 4 == struct.calcsize("<16s5I14I")


def test_the_store_keeps_at_most_its_limit_of_snapshots(tmp_path):
    store = SnapshotStore(tmp_path, limit=2)
    for n in range(3):
        building = store.building(f"k{n}")
        (building / "memory.save").write_bytes(b"x")
        store.commit(building, f"k{n}", f"slot{n}", "gridvm-s0123456789a", "u")
    assert [s.key for s in store.all()] == ["k1", "k2"]


@pytest_twisted.ensureDeferred
async def test_stopping_destroys_the_template_of_a_build_under_way(restorer):
    """A site that stops while a snapshot is being built leaves no template VM running."""
    from tests.vmm.test_hypervisor import config

    vmm = restorer
    await vmm.start()
    name = vmm.domain_name("s0123456789a")
    await vmm.hypervisor.create(config(name, "s0123456789a", site=vmm.site_id))
    vmm.restorer.building_domain = name  # as _build sets it once the template is created
    running = [n for n, _config, state in await vmm.hypervisor.list_domains(vmm.prefix)
               if state.alive]
    assert running == [name]
    destroy, destroyed, left = vmm.hypervisor.destroy, [], []

    async def destroying(domain, **options):  # what is left, seen before the close
        destroyed.append(domain)
        await destroy(domain, **options)
        left.extend(n for n, _c, _s in await vmm.hypervisor.list_domains(vmm.prefix))

    vmm.hypervisor.destroy = lambda domain, **options: defer.ensureDeferred(
        destroying(domain, **options))
    await vmm.stopService()
    assert destroyed == [name] and left == [] and not vmm.hypervisor.connected


def test_the_template_pays_the_first_identity_s_one_time_costs_before_its_snapshot():
    """What the agent imports only once it has TLS is imported before the snapshot (the
    guest's translation of it would otherwise be on every restore's critical path)."""
    code = ("import sys; from tsi_bridge.agent import awaiting; awaiting.warm_up(('root',)); "
            "print(sorted({'hashlib', 'tsi_bridge.agent.tls'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "['hashlib', 'tsi_bridge.agent.tls']"
