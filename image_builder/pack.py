"""Pack a guest root as a compressed initramfs, as an ext4 root in a qcow2 disk or as a
read-only erofs image."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from image_builder.errors import BuildError


def _check(cmd: list[str], **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, **kwargs)
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise BuildError(f"{cmd[0]} failed: {err[-1] if err else result.returncode}")


def initramfs(root: Path, output: Path) -> None:
    """A newc cpio archive compressed with zstd (the cloud kernel reads both gzip and zstd)."""
    names = sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )
    listing = "\n".join(names).encode() + b"\n"
    with open(output, "wb") as out:
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        zstd = subprocess.Popen(["zstd", "-q", "-15", "-T0", "-c"], stdin=cpio.stdout,
                                stdout=out, stderr=subprocess.PIPE)
        assert cpio.stdout is not None
        cpio.stdout.close()
        _, cpio_err = cpio.communicate(listing)
        _, zstd_err = zstd.communicate()
    if cpio.returncode or zstd.returncode:
        raise BuildError(f"packing the initramfs failed: {(cpio_err or zstd_err).decode()[:200]}")


def qcow2_disk(root: Path, output: Path, size_mib: int) -> None:
    """An ext4 file system made from ``root`` (no loop devices, no root needed), as qcow2."""
    raw = output.with_suffix(".ext4")
    with open(raw, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    try:
        _check(["mkfs.ext4", "-q", "-F", "-L", "gridvm-root", "-d", str(root),
                "-E", "root_owner=0:0", str(raw)])
        _check(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(output)])
    finally:
        raw.unlink(missing_ok=True)


def erofs_image(root: Path, output: Path) -> None:
    """A read-only erofs file system made from ``root``, every file owned by root.

    Uncompressed: a compressed image would spend emulated guest time decompressing, and the
    host's page cache of the one file is shared by every instance anyway.
    """
    _check(["mkfs.erofs", "--quiet", "--all-root", "-T0", str(output), str(root)])
