"""A cluster's private Ethernet: a learning switch over unix datagram sockets, in the site.

Every node of a virtual cluster gets a second NIC whose QEMU backend is ``-netdev dgram``
between two unix sockets: the node's own (``node-<i>.sock``, bound by QEMU) and the
switch's (``switch.sock``, bound here).  Each datagram is one Ethernet frame.  The switch
learns which port a source MAC came from and forwards a frame to that port only, floods
broadcasts and unknown destinations to the other ports, and drops frames from sockets that
are no port of its cluster.  No host interface, address or TCP/UDP port is involved: frames
never leave QEMU and this process, and each cluster has a switch (and a directory) of its
own, so no cluster reaches another.

The directory is owned by the user QEMU runs as (libvirt-qemu under qemu:///system) with
mode 0700, so only QEMU and the site reach the sockets.  A frame is at most
``MAX_FRAME`` bytes and the MAC table holds at most ``MAX_MACS`` entries per port.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import protocol

from base.reasons import Reason
from vmm.domain import ClusterNicConfig
from vmm.errors import VMMError

log = logging.getLogger(__name__)

SWITCH_SOCKET = "switch.sock"
MAX_FRAME = 65536  #: bytes of one frame (a jumbo frame with room to spare)
MAX_MACS = 8  #: source addresses learnt per port (a guest has one NIC on the switch)
UNIX_PATH_MAX = 108  #: bytes of a unix socket's path, its terminating NUL included
QEMU_USERS = ("libvirt-qemu", "qemu")  #: whom system QEMU runs as (Debian, Fedora)


class SwitchError(VMMError):
    reason = Reason.HYPERVISOR_ERROR


@dataclass
class SwitchCounters:
    """What the switch did, for tests and diagnostics."""

    forwarded: int = 0
    flooded: int = 0
    dropped: int = 0  #: frames from strangers, runts and oversized frames


@dataclass
class FrameSwitch:
    """The forwarding core: which ports a frame from ``source`` goes to (pure, no I/O)."""

    ports: set[str] = field(default_factory=set)
    table: dict[bytes, str] = field(default_factory=dict)  #: MAC -> port
    counters: SwitchCounters = field(default_factory=SwitchCounters)

    def add_port(self, port: str) -> None:
        self.ports.add(port)

    def remove_port(self, port: str) -> None:
        self.ports.discard(port)
        for mac in [mac for mac, at in self.table.items() if at == port]:
            del self.table[mac]

    def route(self, frame: bytes, source: str) -> list[str]:
        """The ports ``frame`` from port ``source`` goes to (none for a stranger's)."""
        if source not in self.ports or not 14 <= len(frame) <= MAX_FRAME:
            self.counters.dropped += 1
            return []
        destination, origin = frame[0:6], frame[6:12]
        if not origin[0] & 1 and self.table.get(origin) != source:
            learnt = sum(at == source for at in self.table.values())
            if learnt < MAX_MACS or origin in self.table:
                self.table[origin] = source
        port = None if destination[0] & 1 else self.table.get(destination)
        if port is not None:
            self.counters.forwarded += 1
            return [] if port == source else [port]
        self.counters.flooded += 1
        return sorted(self.ports - {source})


class _SwitchProtocol(protocol.DatagramProtocol):
    def __init__(self, core: FrameSwitch):
        self.core = core

    def datagramReceived(self, datagram: bytes, addr) -> None:
        source = addr.decode() if isinstance(addr, bytes) else (addr or "")
        for port in self.core.route(datagram, source):
            try:
                self.transport.write(datagram, port)
            except OSError as err:  # the node's QEMU is gone or not up yet: a lost frame
                log.debug("switch: frame to %s lost: %s", port, err)


@dataclass(frozen=True)
class NodePort:
    """One node's attachment to a cluster network."""

    index: int
    socket: Path  #: the node's own socket, bound by its QEMU
    switch: Path  #: the switch's socket
    mac: str
    address: str  #: its IPv4 address on the cluster network, without prefix

    def nic(self) -> ClusterNicConfig:
        """The node's NIC on the switch, as its domain has it."""
        return ClusterNicConfig(str(self.socket), str(self.switch), self.mac)


class ClusterSwitch:
    """The running switch of one cluster network: its directory, socket and ports."""

    def __init__(self, reactor, directory: Path, subnet: int):
        self.reactor = reactor
        self.directory = Path(directory)
        self.subnet = subnet  #: the third octet of 10.77.<subnet>.0/24
        self.core = FrameSwitch()
        self._port = None

    @property
    def socket(self) -> Path:
        return self.directory / SWITCH_SOCKET

    def start(self) -> None:
        """Create the directory and listen on the switch socket."""
        longest = self.directory / "node-249.sock"
        if len(bytes(longest)) >= UNIX_PATH_MAX:
            raise SwitchError(f"the cluster directory {self.directory} is too deep for unix "
                              f"sockets ({UNIX_PATH_MAX - 1} bytes at most)")
        self.directory.mkdir(parents=True, exist_ok=False)
        owner = _qemu_user()
        if owner is not None:
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        # a site that is not root may drive a QEMU of another user: it may create its
        # socket here by name, but not list the directory
        self.directory.chmod(0o700 if owner is not None or os.geteuid() == 0 else 0o733)
        self._port = self.reactor.listenUNIXDatagram(
            str(self.socket), _SwitchProtocol(self.core), maxPacketSize=MAX_FRAME, mode=0o666)

    def attach(self, index: int) -> NodePort:
        """A port for node ``index`` (0-based, at most 250 nodes per cluster)."""
        if not 0 <= index < 250:
            raise SwitchError(f"a cluster network has at most 250 nodes, not {index + 1}")
        node_socket = self.directory / f"node-{index}.sock"
        node_socket.unlink(missing_ok=True)  # a node of that index that ended before
        self.core.add_port(str(node_socket))
        return NodePort(index=index, socket=node_socket, switch=self.socket,
                        mac=f"02:67:76:{self.subnet:02x}:00:{index + 2:02x}",
                        address=f"10.77.{self.subnet}.{index + 2}")

    def detach(self, index: int) -> None:
        node_socket = self.directory / f"node-{index}.sock"
        self.core.remove_port(str(node_socket))
        node_socket.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop listening and remove the directory with every socket in it."""
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()
        shutil.rmtree(self.directory, ignore_errors=True)


class ClusterNetworks:
    """The site's cluster networks, one switch each, below ``root`` (``reactor``: the one
    whose sockets carry the frames, Twisted's global reactor by default — a switch keeps
    no time, so a site on a test clock still switches for real)."""

    MAX_NETWORKS = 250

    def __init__(self, root: Path, reactor=None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.root = Path(root)
        self.switches: dict[str, ClusterSwitch] = {}

    def create(self, cluster_id: str) -> ClusterSwitch:
        """Start the switch of a new cluster on the lowest free subnet."""
        if cluster_id in self.switches:
            raise SwitchError(f"cluster network {cluster_id} exists already")
        used = {s.subnet for s in self.switches.values()}
        free = next((n for n in range(1, self.MAX_NETWORKS + 1) if n not in used), None)
        if free is None:
            raise SwitchError(f"the site runs {self.MAX_NETWORKS} cluster networks already",
                              reason=Reason.QUOTA_EXCEEDED)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        switch = ClusterSwitch(self.reactor, self.root / cluster_id, free)
        shutil.rmtree(switch.directory, ignore_errors=True)  # left by an earlier run
        switch.start()
        self.switches[cluster_id] = switch
        return switch

    def remove(self, cluster_id: str) -> None:
        switch = self.switches.pop(cluster_id, None)
        if switch is not None:
            switch.stop()


def _qemu_user() -> pwd.struct_passwd | None:
    """The account system QEMU runs as, when the site runs as root and it exists."""
    if os.geteuid() != 0:
        return None
    for name in QEMU_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None
