"""From an image's metadata to what the VM manager needs to boot it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from base.errors import GridvmError
from base.reasons import Reason
from vmm.manager import BootSpec, ImageFile


def boot_spec(metadata: Mapping[str, Any], paths: Mapping[str, Path]) -> BootSpec:
    """The :class:`BootSpec` of an image, its content files found through ``paths``
    (file name → local path, e.g. the repository's store or a build directory)."""
    origin = metadata["origin"]
    files = {ref["role"]: ImageFile(Path(paths[ref["file"]]), ref["sha512"])
             for ref in origin["content"] if ref["file"] in paths}
    boot = origin.get("boot") or {}
    roles = {ref["role"] for ref in origin["content"]}
    mode = boot.get("mode") or ("kernel" if "kernel" in roles else "bootloader")
    needed = "kernel" if mode == "kernel" else "disk"
    if needed not in files:
        raise GridvmError(f"boot mode {mode!r} needs a content file with role {needed!r}, "
                          f"and the image has none here", reason=Reason.IMAGE_UNAVAILABLE)
    return BootSpec(
        kernel=files["kernel"] if mode == "kernel" else None, initrd=files.get("initrd"),
        disk=files.get("disk"),
        cmdline=boot.get("cmdline", ""), arch=origin.get("architecture") or "x86_64",
        disk_format="qcow2" if origin.get("content_type") == "qcow2" else "raw",
    )


def built_image_boot_spec(built) -> BootSpec:
    """The boot spec of an image straight out of ``image_repo.builder.build_image``."""
    meta = built.metadata
    return boot_spec(meta, {ref["file"]: built.directory / ref["file"]
                            for ref in meta["origin"]["content"]})
