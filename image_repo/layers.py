"""Layered qcow2 images: a layer's disk is a qcow2 file whose backing file is a registered
base image's disk, so only the layer travels and the base is cached once per host.

The repository never trusts a path in an upload: ``qemu-img info`` tells what the layer's
header names, :func:`check_layer` accepts only a reference to the base's own disk (its file
name or sha512, with any directory ignored) and :func:`rewrite_backing` replaces it by
:func:`backing_reference`, the base's place in a host's image cache (``vmm.storage``:
``<cache>/<sha[:2]>/<sha>``), relative to the layer's own place there.  A layer is itself a
registered image, so it may be the base of another layer, up to :data:`MAX_DEPTH` deep.

:func:`make_layer` is the library call an image build uses: the difference between a
flattened disk and its base, as an upload-ready layer.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from image_repo.errors import BadRequest, ImageUnavailable

#: most layers below an image (a base without backing file is depth 0)
MAX_DEPTH = 8
QEMU_IMG_TIMEOUT = 120.0
_SHA512 = re.compile(r"[0-9a-f]{128}")
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_QCOW2_MAGIC = b"QFI\xfb"
_EXTERNAL_DATA_FILE = 1 << 2  #: qcow2 v3 incompatible feature bit


@dataclass(frozen=True)
class DiskInfo:
    """What ``qemu-img info`` says about a qcow2 file's header."""

    virtual_size: int
    backing_filename: str | None
    backing_format: str | None
    data_file: str | None


def _qemu_img() -> str:
    found = shutil.which("qemu-img")
    if found is None:
        raise ImageUnavailable("qemu-img not found (install qemu-utils)")
    return found


def _run(args: list[str], what: str, where: str | None) -> str:
    try:
        result = subprocess.run([_qemu_img(), *args], capture_output=True, text=True,
                                timeout=QEMU_IMG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ImageUnavailable(f"qemu-img {args[0]} took longer than "
                               f"{QEMU_IMG_TIMEOUT:g} s", where) from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise BadRequest(f"{what}: {lines[-1] if lines else 'qemu-img failed'}", where)
    return result.stdout


def inspect_disk(path: Path, where: str | None = None) -> DiskInfo:
    """The header of a qcow2 file (BadRequest when it is not qcow2).  Its backing file is
    not opened."""
    out = _run(["info", "--output=json", "-U", "-f", "qcow2", str(path)],
               f"{Path(path).name} is not a usable qcow2 file", where)
    info = json.loads(out)
    specific = (info.get("format-specific") or {}).get("data") or {}
    return DiskInfo(virtual_size=int(info.get("virtual-size", 0)),
                    backing_filename=info.get("backing-filename"),
                    backing_format=info.get("backing-filename-format"),
                    data_file=specific.get("data-file"))


def names_other_files(path: Path) -> bool:
    """Whether ``path`` is a qcow2 file whose header names a backing file or an external
    data file: QEMU would open that file too.  Read from the header alone (any other file
    is no qcow2 and names nothing)."""
    with open(path, "rb") as stream:
        header = stream.read(80)
    if len(header) < 16 or header[:4] != _QCOW2_MAGIC:
        return False
    if int.from_bytes(header[8:16], "big"):  # backing_file_offset
        return True
    version = int.from_bytes(header[4:8], "big")
    incompatible = int.from_bytes(header[72:80], "big") if len(header) == 80 else 0
    return version >= 3 and bool(incompatible & _EXTERNAL_DATA_FILE)


def backing_reference(base_sha512: str) -> str:
    """The backing file a layer names once registered: its base in a host's cache."""
    if not _SHA512.fullmatch(base_sha512):
        raise ValueError(f"not a sha512: {base_sha512[:20]!r}")
    return f"../{base_sha512[:2]}/{base_sha512}"


def check_layer(info: DiskInfo, base_file: str, base_sha512: str, where: str) -> bool:
    """Whether a layer's header is acceptable on the base disk ``base_file``
    (``base_sha512``); True when it already names :func:`backing_reference`.

    BadRequest for a file without backing file, with an external data file, a backing
    format other than qcow2, or a backing file naming anything but the base's disk.
    """
    name = info.backing_filename
    if info.data_file:
        raise BadRequest(f"the layer names an external data file {info.data_file!r}; a "
                         "layer must hold its own data", where)
    if not name:
        raise BadRequest("the layer has no backing file: make it on the base's disk "
                         f"({base_file}), e.g. qemu-img create -f qcow2 -b {base_file} "
                         "-F qcow2, or with image_repo.layers.make_layer", where)
    if info.backing_format not in (None, "qcow2"):
        raise BadRequest(f"the layer's backing format is {info.backing_format!r}; the base "
                         "is qcow2", where)
    if name == backing_reference(base_sha512):
        return True
    last = PurePosixPath(name).name
    if _PROTOCOL.match(name) or name.startswith("json:") or last not in (base_file,
                                                                         base_sha512):
        raise BadRequest(f"the layer's backing file is {name[:120]!r}; it must name the "
                         f"base's disk {base_file!r} (the site sets the path itself)", where)
    return False


def rewrite_backing(path: Path, base_sha512: str, where: str | None = None) -> None:
    """Make the layer at ``path`` name its base by :func:`backing_reference` (header only;
    the data is not touched)."""
    _run(["rebase", "-q", "-u", "-f", "qcow2", "-b", backing_reference(base_sha512),
          "-F", "qcow2", str(path)], "cannot set the layer's backing file", where)


def make_layer(flattened: Path, base: Path, output: Path) -> Path:
    """Write to ``output`` a qcow2 layer on ``base`` holding only the clusters where
    ``flattened`` (a qcow2 disk made from the base, e.g. by a recipe build) differs from it;
    the layer names the base by its file name alone, ready to register with
    ``origin.backing_image`` = the base image.

    An empty overlay on the flattened disk is rebased (safely, comparing contents) onto the
    base, so clusters equal in both stay out of the layer.
    """
    base, flattened, output = Path(base).resolve(), Path(flattened).resolve(), Path(output)
    _run(["create", "-q", "-f", "qcow2", "-b", str(flattened), "-F", "qcow2", str(output)],
         "cannot make the layer", None)
    try:
        _run(["rebase", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(output)],
             "cannot make the layer", None)
        _run(["rebase", "-q", "-u", "-f", "qcow2", "-b", base.name, "-F", "qcow2",
              str(output)], "cannot name the layer's base", None)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return output
