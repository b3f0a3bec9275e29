"""The cluster switch: its forwarding core, and the real one over unix datagram sockets."""

import socket
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from vmm.switch import MAX_MACS, ClusterNetworks, FrameSwitch, SwitchError

A, B, C = (bytes([2, 0, 0, 0, 0, n]) for n in (1, 2, 3))
BROADCAST = b"\xff" * 6


def frame(destination: bytes, source: bytes, payload: bytes = b"x" * 46) -> bytes:
    return destination + source + b"\x08\x00" + payload


def test_unknown_destinations_and_broadcasts_flood_learnt_ones_go_to_their_port():
    switch = FrameSwitch()
    for port in ("p1", "p2", "p3"):
        switch.add_port(port)
    assert switch.route(frame(BROADCAST, A), "p1") == ["p2", "p3"]
    assert switch.route(frame(A, B), "p2") == ["p1"]  # A was learnt on p1
    assert switch.route(frame(C, A), "p1") == ["p2", "p3"]  # C unknown yet
    assert switch.route(frame(B, A), "p1") == ["p2"]
    assert switch.counters.forwarded == 2 and switch.counters.flooded == 2


def test_strangers_runts_and_oversized_frames_are_dropped():
    switch = FrameSwitch()
    switch.add_port("p1")
    switch.add_port("p2")
    assert switch.route(frame(BROADCAST, A), "intruder") == []
    assert switch.route(b"short", "p1") == []
    assert switch.route(frame(BROADCAST, A, b"x" * 70000), "p1") == []
    assert switch.counters.dropped == 3 and not switch.table


def test_a_port_learns_a_bounded_number_of_addresses_and_forgets_them_when_removed():
    switch = FrameSwitch()
    switch.add_port("p1")
    switch.add_port("p2")
    for n in range(MAX_MACS + 5):
        switch.route(frame(BROADCAST, bytes([2, 1, 0, 0, 0, n])), "p1")
    assert len(switch.table) == MAX_MACS
    switch.remove_port("p1")
    assert not switch.table and switch.route(frame(BROADCAST, A), "p1") == []


def _client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


async def _receive(sock: socket.socket) -> bytes | None:
    for _ in range(50):
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await task.deferLater(reactor, 0.02, lambda: None)
    return None


@pytest_twisted.ensureDeferred
async def test_the_switch_carries_frames_between_its_nodes_sockets_only():
    root = Path(tempfile.mkdtemp(prefix="gridvm-sw-"))
    networks = ClusterNetworks(root / "clusters")
    switch = networks.create("c1")
    other = networks.create("c2")
    assert (switch.subnet, other.subnet) == (1, 2)
    one, two = switch.attach(0), switch.attach(1)
    assert (one.address, two.address) == ("10.77.1.2", "10.77.1.3")
    assert one.mac != two.mac and one.nic().qemu_args()[1].startswith("dgram,")
    first, second = _client(one.socket), _client(two.socket)
    stranger = _client(root / "stranger.sock")
    outsider = _client(other.directory / "node-0.sock")
    other.attach(0)
    try:
        first.sendto(frame(BROADCAST, A), str(switch.socket))
        assert await _receive(second) == frame(BROADCAST, A)
        assert await _receive(outsider) is None  # another cluster's switch
        stranger.sendto(frame(BROADCAST, C), str(switch.socket))
        assert await _receive(first) is None and await _receive(second) is None
        assert oct(switch.directory.stat().st_mode & 0o777) in ("0o700", "0o733")
    finally:
        for sock in (first, second, stranger, outsider):
            sock.close()
        networks.remove("c1")
        networks.remove("c2")
    assert not switch.directory.exists() and not other.directory.exists()


def test_a_directory_too_deep_for_unix_sockets_is_refused(tmp_path):
    networks = ClusterNetworks(tmp_path / ("d" * 120))
    with pytest.raises(SwitchError, match="too deep"):
        networks.create("c1")


def test_a_cluster_nic_round_trips_through_the_domain_xml():
    from vmm.domain import ClusterNicConfig, DomainConfig, UserNetConfig

    nic = ClusterNicConfig("/s/node-0.sock", "/s/switch.sock", "02:67:76:01:00:02")
    config = DomainConfig(name="d", network=UserNetConfig(host_port=5000),
                          extra_qemu_args=nic.qemu_args())
    again = DomainConfig.from_xml(config.to_xml())
    assert again.extra_qemu_args == nic.qemu_args() and again.network == config.network
    assert "local.path=/s/node-0.sock" in nic.qemu_args()[1]
    assert "mac=02:67:76:01:00:02" in nic.qemu_args()[3]
