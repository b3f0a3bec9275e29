"""``--await-identity PORT``: wait, quiescent, for the identity of a restored instance.

In a snapshot's template guest no identity exists yet: the agent imports all it needs,
drops the kernel's caches (a smaller saved state), says ``gridvm: agent awaiting identity``
on the console and blocks reading one JSON line from the virtio-serial ``PORT``.  The host
saves the guest there.  Every instance restored from it receives its own line
(``vmm.injection``): the agent writes the files root-only below ``/run/gridvm/identity``,
steps the clock, reseeds the kernel RNG, Python's ``random`` and OpenSSL's, sets the
hostname, and runs from the ``tsi/agent.conf`` it was given: once it listens it answers
``ok <instance id> <random draw>`` (so the host's first probe finds it).  Standard library
only (it runs in guests).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import random
import ssl
import struct
import sys
import time

QUIESCENT_LINE = "gridvm: agent awaiting identity"
IDENTITY_ROOT = "/run/gridvm/identity"
CONFIG = "tsi/agent.conf"
MAX_LINE = 1 << 20
#: how long freed pages take to reach the host (the kernel reports them after ~2 s)
SETTLE_SECONDS = 3.0
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


class IdentityError(Exception):
    """The identity line is not one the agent can take."""


def quiesce(settle: float = SETTLE_SECONDS) -> None:
    """Give back what the guest can spare before its memory is saved."""
    os.sync()
    for knob, value in (("/proc/sys/vm/drop_caches", "3"), ("/proc/sys/vm/compact_memory", "1")):
        try:
            with open(knob, "w") as f:
                f.write(value)
        except OSError:
            pass  # not root (a test outside a guest), or no such knob
    time.sleep(settle)


def warm_up(users: tuple[str, ...] = ("root", "gridvm")) -> None:
    """Pay, before the snapshot, the one-time costs of the first identity's steps: the
    modules the agent imports only with TLS (hashlib fetches every digest from OpenSSL),
    the name service and the time zone.  Nothing secret and no random state is made."""
    import grp
    import hashlib  # noqa: F401
    import pwd

    from tsi_bridge.agent import tls  # noqa: F401

    for user in users:
        with contextlib.suppress(KeyError):
            grp.getgrgid(pwd.getpwnam(user).pw_gid)
    time.strftime("%Y-%m-%dT%H:%M:%S")


def read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            time.sleep(0.01)  # the host end is not connected yet
            continue
        line += chunk
        if len(line) > MAX_LINE:
            raise IdentityError(f"the identity line is longer than {MAX_LINE} bytes")
    return line


def parse_identity(line: bytes) -> dict:
    try:
        message = json.loads(line)
        instance_id = message["instance_id"]
        files = {path: base64.b64decode(data, validate=True)
                 for path, data in message["files"].items()}
        seed = bytes.fromhex(message["seed"])
        now = float(message["time"])
        hostname = str(message.get("hostname") or "gridvm")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as err:
        raise IdentityError(f"not an identity line: {err}") from None
    if not isinstance(instance_id, str) or not instance_id.isprintable() or \
            not 0 < len(instance_id) <= 64 or " " in instance_id:
        raise IdentityError("bad instance_id")
    for path in files:
        parts = path.split("/")
        if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise IdentityError(f"bad file name {path!r}")
    if CONFIG not in files:
        raise IdentityError(f"no {CONFIG} in the identity")
    return {"instance_id": instance_id, "files": files, "seed": seed, "time": now,
            "hostname": hostname}


def write_files(files: dict[str, bytes], root: str) -> None:
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    for path, data in files.items():
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def reseed(seed: bytes) -> None:
    """Mix ``seed`` into the kernel RNG (crediting it, then forcing a reseed), Python's
    ``random`` and OpenSSL's DRBG."""
    try:
        with open("/dev/urandom", "wb") as dev:
            try:
                info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
                fcntl.ioctl(dev.fileno(), RNDADDENTROPY, info)
                fcntl.ioctl(dev.fileno(), RNDRESEEDCRNG)
            except OSError:  # not root: mix it in uncredited
                dev.write(seed)
    except OSError:
        pass
    random.seed(seed + os.urandom(32))
    ssl.RAND_add(seed, len(seed))


def step_clock(now: float) -> None:
    with contextlib.suppress(OSError):  # not root
        time.clock_settime(time.CLOCK_REALTIME, now)


def set_hostname(hostname: str) -> None:
    try:
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write(hostname[:64])
    except OSError:
        pass


def open_port(port: str) -> int:
    return os.open(port, os.O_RDWR | os.O_NOCTTY)


def acknowledge(fd: int, ack: bytes) -> None:
    """Tell the host the identity is taken (the agent listens by then); closes the port."""
    try:
        os.write(fd, ack)
    finally:
        os.close(fd)


class Steps:
    """Seconds each step of taking an identity took (the agent logs them once it acked)."""

    def __init__(self) -> None:
        self.seconds: list[tuple[str, float]] = []
        self.start()

    def start(self) -> None:
        self.seconds.clear()
        self._mark = time.monotonic()

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.seconds.append((step, now - self._mark))
        self._mark = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in self.seconds)


def identity_from(fd: int, root: str = IDENTITY_ROOT, settle: float = SETTLE_SECONDS,
                  announce=print, steps: Steps | None = None) -> tuple[str, bytes]:
    """Wait on the open port ``fd`` for the identity and apply it; returns the agent.conf
    path and the ack line to :func:`acknowledge` once the agent listens.  ``steps``
    records the time of each step from the identity's arrival."""
    steps = steps or Steps()
    quiesce(settle)
    announce(QUIESCENT_LINE)
    sys.stdout.flush()
    line = read_line(fd)
    steps.start()  # a restored guest's time starts here
    identity = parse_identity(line)
    steps.done("parse")
    step_clock(identity["time"])
    steps.done("clock")
    reseed(identity["seed"])
    steps.done("reseed")
    set_hostname(identity["hostname"])
    write_files(identity["files"], root)
    steps.done("files")
    draw = f"{random.getrandbits(64):016x}"
    return os.path.join(root, CONFIG), f"ok {identity['instance_id']} {draw}\n".encode()
