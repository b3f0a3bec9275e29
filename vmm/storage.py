"""Base images cached per host by checksum, and copy-on-write overlays per instance.

A base file is verified against its sha512 when it enters the cache; a stamp beside it
(``<sha512>.verified``: size, mtime and inode then) lets every later use check cheaply that
it is still the file that was verified, and a changed file is hashed again (and refused,
``IMAGE_CHECKSUM_MISMATCH``, when it no longer matches).  Cached files are world-readable and
never written again, so QEMU (running as ``libvirt-qemu``) can read them whatever libvirt
does to their owner.

A layered disk is a chain: the lowest base first, each layer naming the one below by its
place in this cache (``../<sha[:2]>/<sha>``, see ``image_repo.layers``).  :meth:`BaseImageCache.
ensure_chain` caches and verifies every member once per host and checks with ``qemu-img info
--backing-chain`` that the chain is exactly those files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from base.files import sha512_file
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
        """The cached copy of ``source``, verified against ``sha512`` on first use (and again
        whenever the cached file changed since).

        Blocking (it may hash gigabytes): call it off the reactor thread.
        """
        target = self.path_for(sha512)
        if target.is_file():
            self._check_stamp(target, sha512)
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
            self._stamp(target)
        except OSError as err:
            raise ImageUnavailable(f"cannot cache {source}: {err.strerror or err}") from err
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def ensure_chain(self, files: list[tuple[Path, str]]) -> Path:
        """Cache a layered disk: ``files`` are (source, sha512) from the lowest base to the
        layer; returns the cached layer once each member is verified and the layer's backing
        chain is exactly the cached members below it."""
        cached = [self.ensure(source, sha512) for source, sha512 in files]
        found = backing_chain(cached[-1])
        expected = [os.path.realpath(path) for path in reversed(cached)]
        if found != expected:
            names = " -> ".join(Path(p).name[:16] for p in found)
            raise ImageUnavailable(f"the layered disk's backing chain is {names}, not the "
                                   f"{len(cached)} verified files of the image")
        return cached[-1]

    def remove(self, sha512: str) -> None:
        target = self.path_for(sha512)
        target.unlink(missing_ok=True)
        _stamp_path(target).unlink(missing_ok=True)

    @staticmethod
    def _stamp(target: Path) -> None:
        _stamp_path(target).write_text(_fingerprint(target))

    def _check_stamp(self, target: Path, sha512: str) -> None:
        """Hash a cached file again unless it is unchanged since it was verified."""
        stamp = _stamp_path(target)
        if stamp.is_file() and stamp.read_text() == _fingerprint(target):
            return
        actual = sha512_file(target)
        if actual != sha512:
            self.remove(sha512)
            raise ImageChecksumMismatch(f"the cached copy of {sha512[:16]}… changed after it "
                                        f"was verified (its sha512 is now "
                                        f"{actual[:16]}…); it was removed")
        self._stamp(target)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _fingerprint(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size} {info.st_mtime_ns} {info.st_ino}\n"


def _qemu_img(args: list[str], failure: str) -> str:
    """Run qemu-img; its output, or ImageUnavailable starting with ``failure``."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise HypervisorError("qemu-img not found (install qemu-utils)")
    result = subprocess.run([qemu_img, *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()
        raise ImageUnavailable(f"{failure}: {message[-1] if message else result.returncode}")
    return result.stdout


def backing_chain(path: Path) -> list[str]:
    """The real paths of a qcow2 file and its backing files, top first."""
    found = _qemu_img(["info", "--backing-chain", "--output=json", "-U", "-f", "qcow2",
                       str(path)], f"cannot read the backing chain of {path.name}")
    return [os.path.realpath(entry["filename"]) for entry in json.loads(found)]


def create_overlay(base: Path, overlay: Path, backing_format: str = "qcow2") -> Path:
    """A qcow2 overlay on ``base`` (~10 ms, whatever the size of the base)."""
    _qemu_img(["create", "-q", "-f", "qcow2", "-b", str(base), "-F", backing_format,
               str(overlay)], f"cannot create overlay on {base.name}")
    return overlay


def name_backing(layer: Path, backing_name: str) -> Path:
    """Make the qcow2 ``layer`` name its backing file ``backing_name`` (a qcow2 beside it
    wherever the layer is placed); only the header changes, no data is read."""
    _qemu_img(["rebase", "-q", "-u", "-f", "qcow2", "-b", backing_name, "-F", "qcow2",
               str(layer)], f"cannot name the backing file of {layer.name}")
    return layer
