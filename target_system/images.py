"""From an image's metadata to what the VM manager needs to boot it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from base.errors import GridvmError
from base.reasons import Reason
from image_repo.repository import BackingFile
from image_repo.schema import ImageMetadata, validate
from vmm.manager import BootSpec, ImageFile


def boot_spec(metadata: ImageMetadata, paths: Mapping[str, Path],
              backing: Sequence[BackingFile] = ()) -> BootSpec:
    """The :class:`BootSpec` of an image, its content files found through ``paths``
    (file name → local path, e.g. the repository's store or a build directory);
    ``backing``: the bases below a layered image's disk, lowest first."""
    origin = metadata.origin
    files = {ref.role: ImageFile(Path(paths[ref.file]), ref.sha512)
             for ref in origin.content if ref.file in paths}
    mode = origin.boot_mode
    needed = "kernel" if mode == "kernel" else "disk"
    if needed not in files:
        raise GridvmError(f"boot mode {mode!r} needs a content file with role {needed!r}, "
                          f"and the image has none here", reason=Reason.IMAGE_UNAVAILABLE)
    return BootSpec(
        kernel=files["kernel"] if mode == "kernel" else None, initrd=files.get("initrd"),
        disk=files.get("disk"),
        cmdline=(origin.boot.cmdline if origin.boot else None) or "",
        arch=origin.architecture or "x86_64",
        disk_format="qcow2" if origin.content_type == "qcow2" else "raw",
        disk_readonly=bool(origin.boot and origin.boot.readonly_disk),
        backing=tuple(ImageFile(member.path, member.sha512) for member in backing),
    )


def built_image_boot_spec(built) -> BootSpec:
    """The boot spec of an image straight out of ``image_builder.build_image``."""
    metadata = validate(built.metadata)
    return boot_spec(metadata, {ref.file: built.directory / ref.file
                                for ref in metadata.origin.content})
