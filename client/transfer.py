"""Files on their way to a site: hashing them as a registration needs, and showing upload
progress (one line redrawn on a terminal; elsewhere a line when a file is done)."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

BLOCK = 1 << 20
MIB = 1 << 20


def describe_file(path: Path) -> tuple[str, int]:
    """(sha512, size) of a file, read once in blocks."""
    digest, size = hashlib.sha512(), 0
    with path.open("rb") as stream:
        while block := stream.read(BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class ProgressReader:
    """A binary file object that reports how much of it has been read (sent)."""

    def __init__(self, stream: BinaryIO, size: int, name: str, out: TextIO | None = None,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream, self.size, self.name = stream, size, name
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.clock = clock
        self.sent = 0
        self.started = clock()
        self._drawn = 0.0

    def read(self, count: int = -1) -> bytes:
        block = self.stream.read(count)
        self.sent += len(block)
        now = self.clock()
        if self.tty and (now - self._drawn >= 0.2 or self.sent >= self.size):
            self._drawn = now
            self.out.write(f"\r{self.line()}\033[K")
            self.out.flush()
        return block

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        share = 100 * self.sent // self.size if self.size else 100
        return (f"upload {self.name}: {share:3d}%  {self.sent / MIB:.1f}/{self.size / MIB:.1f} "
                f"MiB  {self.sent / MIB / elapsed:.1f} MiB/s")

    def finish(self) -> None:
        """The last line: what was sent and how fast (after the site answered)."""
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(f"{self.line()}, verified\n")
        self.out.flush()
