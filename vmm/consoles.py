"""Console logs kept after their instance ends, so that a failed boot can be diagnosed.

When an instance's directory is removed, the last ``max_bytes`` of its serial console log are
copied to ``<state>/consoles/<instance id>.log``; at most ``max_logs`` are kept (the oldest
go first).  ``read`` answers the live log while the instance has one, else the kept copy.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def tail_bytes(path: Path, limit: int) -> bytes | None:
    """The last ``limit`` bytes of a file, None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read(limit)
    except OSError:
        return None


class ConsoleKeeper:
    def __init__(self, root: Path, max_bytes: int = 256 << 10, max_logs: int = 500):
        self.root, self.max_bytes, self.max_logs = Path(root), max_bytes, max_logs

    def _kept(self, instance_id: str) -> Path | None:
        return self.root / f"{instance_id}.log" if _ID.match(instance_id) else None

    def keep(self, instance_id: str, console: Path) -> None:
        """Copy the end of ``console`` (before its directory goes); errors are logged."""
        target = self._kept(instance_id)
        data = tail_bytes(console, self.max_bytes)
        if target is None or data is None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            kept = sorted(self.root.glob("*.log"), key=lambda p: p.stat().st_mtime)
            for old in kept[: max(0, len(kept) - self.max_logs)]:
                old.unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not keep the console log of %s: %s", instance_id, err)

    def read(self, instance_id: str, live: Path) -> bytes | None:
        """The last ``max_bytes`` of the live log, else of the kept one; None if neither."""
        data = tail_bytes(live, self.max_bytes)
        kept = self._kept(instance_id)
        if data is None and kept is not None:
            data = tail_bytes(kept, self.max_bytes)
        return data
