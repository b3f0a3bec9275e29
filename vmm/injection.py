"""The host's end of the identity channel: a restored guest's fresh identity, sent once.

A guest restored from a snapshot is a copy of the template's memory: its agent waits on the
virtio-serial port ``org.gridvm.identity.0`` (``tsi_bridge.agent.awaiting``) for one JSON
line -- its instance id, its files (agent.conf, certificate and key, CA, peer certificate),
64 random bytes to reseed its RNGs, the time to step its clock to, its hostname -- and answers
``ok <instance id> <a 64-bit draw of its reseeded Python random>``.  The host connects to the
socket QEMU listens on as a client.  No ack within the deadline fails the restore.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmm.errors import RestoreFailed

#: the largest identity line the agent accepts (tsi_bridge.agent.awaiting.MAX_LINE)
MAX_IDENTITY_BYTES = 1 << 20
SEED_BYTES = 64


@dataclass(frozen=True)
class Identity:
    """What makes a restored guest this instance."""

    instance_id: str
    files: dict[str, bytes] = field(default_factory=dict)  #: relative path -> content
    hostname: str = "gridvm"


@dataclass(frozen=True)
class IdentityAck:
    """The guest's answer: the id it took and a draw of its reseeded Python ``random``."""

    instance_id: str
    random_draw: str


def identity_line(identity: Identity, seed: bytes, now: float) -> bytes:
    message = {
        "instance_id": identity.instance_id, "hostname": identity.hostname,
        "files": {path: base64.b64encode(data).decode() for path, data in
                  sorted(identity.files.items())},
        "seed": seed.hex(), "time": now,
    }
    line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_IDENTITY_BYTES:
        raise RestoreFailed(f"the identity is {len(line)} bytes, more than the "
                            f"{MAX_IDENTITY_BYTES} the guest takes")
    return line


def inject(socket_path: Path, identity: Identity, timeout: float) -> IdentityAck:
    """Blocking: send ``identity`` through the channel's socket, wait for the guest's ack."""
    deadline = time.monotonic() + timeout
    sock = _connect(socket_path, deadline)
    try:
        sock.sendall(identity_line(identity, os.urandom(SEED_BYTES), time.time()))
        answer = b""
        while not answer.endswith(b"\n"):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                raise RestoreFailed(f"the guest did not take its identity within "
                                    f"{timeout:g} s") from None
            if not chunk or len(answer) > 4096:
                raise RestoreFailed(f"the identity channel closed; the guest said "
                                    f"{answer[-200:]!r}")
            answer += chunk
    finally:
        sock.close()
    words = answer.decode(errors="replace").split()
    if len(words) != 3 or words[0] != "ok" or words[1] != identity.instance_id:
        raise RestoreFailed(f"the guest refused its identity: {answer[-200:]!r}")
    return IdentityAck(words[1], words[2])


def _connect(socket_path: Path, deadline: float) -> socket.socket:
    last: OSError | None = None
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(socket_path))
            return sock
        except OSError as err:
            sock.close()
            last = err
            time.sleep(0.01)
    raise RestoreFailed(f"cannot reach the identity channel {socket_path.name}: {last}")
