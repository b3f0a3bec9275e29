"""Per-instance contextualization media: an ISO 9660 image (volume label ``cidata``).

The guest finds it as the virtio disk whose serial is ``gridvm-ctx`` and mounts it read-only
at /run/gridvm/ctx.  It carries any files: the TSI agent configuration, the instance's
certificate and key, the CA, the IDB.  Rock Ridge keeps long names and file modes; the key
files are readable by root only inside the guest.
"""

from __future__ import annotations

import io
import posixpath
import re
from pathlib import Path

import pycdlib

from vmm.errors import VMMError

SERIAL = "gridvm-ctx"
VOLUME_LABEL = "cidata"
_SAFE_PART = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _iso_name(index: int, directory: bool) -> str:
    """A short ISO 9660 name; Rock Ridge carries the real one."""
    return f"D{index:07d}" if directory else f"F{index:07d}.;1"


def build_medium(files: dict[str, bytes], output: Path, *, secret_suffixes=(".key",)) -> Path:
    """Write ``files`` (relative POSIX path → content) into an ISO image at ``output``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    directories: dict[str, str] = {"": "/"}
    counter = 0
    try:
        for rel in sorted(files):
            parts = rel.split("/")
            if rel.startswith("/") or not all(_SAFE_PART.match(p) and p not in (".", "..")
                                              for p in parts):
                raise VMMError(f"bad file name on the contextualization medium: {rel!r}")
            parent = ""
            for part in parts[:-1]:
                path = posixpath.join(parent, part) if parent else part
                if path not in directories:
                    counter += 1
                    iso_path = posixpath.join(directories[parent], _iso_name(counter, True))
                    iso.add_directory(iso_path, rr_name=part)
                    directories[path] = iso_path
                parent = path
            counter += 1
            data = files[rel]
            mode = 0o100400 if rel.endswith(secret_suffixes) else 0o100444
            iso_path = posixpath.join(directories[parent], _iso_name(counter, False))
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=parts[-1],
                       file_mode=mode)
        iso.write(str(output))
    finally:
        iso.close()
    output.chmod(0o600)
    return output


def read_medium(path: Path) -> dict[str, bytes]:
    """The files on a medium, by their Rock Ridge names (for tests and diagnostics)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    result: dict[str, bytes] = {}
    try:
        for dirname, _dirs, filenames in iso.walk(rr_path="/"):
            for name in filenames:
                rr_path = posixpath.join(dirname, name)
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=rr_path)
                result[rr_path.lstrip("/")] = out.getvalue()
    finally:
        iso.close()
    return result
