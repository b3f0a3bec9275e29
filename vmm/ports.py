"""Free TCP ports for forwards: on 127.0.0.1, or on a hypervisor host's address."""

from __future__ import annotations

import errno
import random
import socket

#: where a port is drawn from for an address of another machine (Linux's ephemeral range)
REMOTE_RANGE = (32768, 60999)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now on ``host`` (the caller retries if it loses the race
    for it).  ``host`` an address of another machine (a remote hypervisor host): a port
    drawn at random, which that host's QEMU refuses in the rare case it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as err:
            if err.errno != errno.EADDRNOTAVAIL:
                raise
            return random.randint(*REMOTE_RANGE)
        return sock.getsockname()[1]


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
