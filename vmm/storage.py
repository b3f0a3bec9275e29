"""Base images cached per host by checksum, and copy-on-write overlays per instance.

A base file is verified against its sha512 once, when it enters the cache; after that the
cache trusts its own name.  Cached files are world-readable and never written again, so
QEMU (running as ``libvirt-qemu``) can read them whatever libvirt does to their owner.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from vmm.errors import HypervisorError, ImageChecksumMismatch, ImageUnavailable

_SHA512 = re.compile(r"^[0-9a-f]{128}$")


class BaseImageCache:
    """Read-only image files keyed by sha512 under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha512: str) -> Path:
        if not _SHA512.match(sha512):
            raise ImageUnavailable(f"not a sha512 checksum: {sha512[:20]!r}")
        return self.root / sha512[:2] / sha512

    def contains(self, sha512: str) -> bool:
        return self.path_for(sha512).is_file()

    def ensure(self, source: Path, sha512: str) -> Path:
        """The cached copy of ``source``, verified against ``sha512`` on first use.

        Blocking (it may hash gigabytes): call it off the reactor thread.
        """
        target = self.path_for(sha512)
        if target.is_file():
            return target
        source = Path(source)
        if not source.is_file():
            raise ImageUnavailable(f"image file {source} does not exist")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(target.parent, 0o755)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha512()
            with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                for block in iter(lambda: src.read(4 << 20), b""):
                    digest.update(block)
                    dst.write(block)
            if digest.hexdigest() != sha512:
                raise ImageChecksumMismatch(
                    f"{source.name}: sha512 is {digest.hexdigest()[:16]}…, "
                    f"metadata says {sha512[:16]}…")
            tmp.chmod(0o444)
            tmp.rename(target)
        except OSError as err:
            raise ImageUnavailable(f"cannot cache {source}: {err.strerror or err}") from err
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def remove(self, sha512: str) -> None:
        self.path_for(sha512).unlink(missing_ok=True)


def create_overlay(base: Path, overlay: Path, backing_format: str = "qcow2") -> Path:
    """A qcow2 overlay on ``base`` (~10 ms, whatever the size of the base)."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise HypervisorError("qemu-img not found (install qemu-utils)")
    result = subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", backing_format,
         str(overlay)],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()
        raise ImageUnavailable(f"cannot create overlay on {base.name}: "
                               f"{message[-1] if message else result.returncode}")
    return overlay
