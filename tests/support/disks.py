"""A changed copy of a guest's ext4 qcow2 root disk (tests and benchmarks of layered images):
the same file system with files added, flattened again, as a recipe build would leave it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def changed_disk(disk: Path, output: Path, files: dict[str, bytes]) -> Path:
    """``disk`` (qcow2 holding one ext4 file system) with ``files`` (absolute guest path →
    content, in existing directories) written into it, as a new flattened qcow2 at
    ``output``.  No mounting: ``debugfs`` writes into a raw copy."""
    raw = output.with_suffix(".raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)],
                   check=True)
    try:
        for n, (guest_path, content) in enumerate(sorted(files.items())):
            local = output.parent / f".content-{n}"
            local.write_bytes(content)
            subprocess.run(["debugfs", "-w", "-R", f"write {local} {guest_path}", str(raw)],
                           check=True, capture_output=True)
            local.unlink()
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                        str(output)], check=True)
    finally:
        raw.unlink(missing_ok=True)
    return output
