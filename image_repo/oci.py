"""What the repository checks of an OCI archive at registration (content type ``oci``).

An ``oci-archive`` is an OCI image layout in one tar file: ``index.json`` lists manifests,
each names its config and layers as blobs under ``blobs/<algorithm>/<hex>``.  The check
reads only the small JSON documents (bounded), so a large archive costs a walk over its tar
headers: it must be a layout, and its image's architecture must be the metadata's
``origin.architecture`` (a container for another CPU would fail on every instance).  The
guest's launcher (``target_system.container_launcher``) reads the same layout to unpack it.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from image_repo.errors import BadRequest

MAX_DOCUMENT = 4 << 20
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
#: ``origin.architecture`` (as ``uname -m``) -> the OCI name
OCI_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
                     "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def _document(tar: tarfile.TarFile, name: str, where: str) -> dict:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise BadRequest(f"not an OCI archive: it has no {name}", where) from None
    source = tar.extractfile(member) if member.isfile() else None
    data = source.read(MAX_DOCUMENT + 1) if source else b""
    try:
        doc = json.loads(data) if len(data) <= MAX_DOCUMENT else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise BadRequest(f"not an OCI archive: {name} is no JSON object of at most "
                         f"{MAX_DOCUMENT >> 20} MiB", where)
    return doc


def _blob_name(descriptor) -> str:
    digest = str(descriptor.get("digest", "")) if isinstance(descriptor, dict) else ""
    algorithm, _, hex_digest = digest.partition(":")
    return f"blobs/{algorithm}/{hex_digest}"


def image_architectures(path: Path, where: str) -> set[str]:
    """The OCI architectures of the images in the archive at ``path`` (BadRequest at
    ``where`` when it is no OCI image layout)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            found: set[str] = set()
            pending = list(_document(tar, "index.json", where).get("manifests") or [])
            for _ in range(64):  # manifests and nested indexes, bounded
                if not pending:
                    break
                doc = _document(tar, _blob_name(pending.pop()), where)
                if doc.get("mediaType") == INDEX_TYPE or "manifests" in doc:
                    pending += doc.get("manifests") or []
                    continue
                config = _document(tar, _blob_name(doc.get("config")), where)
                found.add(str(config.get("architecture")))
    except (OSError, tarfile.TarError) as err:
        raise BadRequest(f"not an OCI archive: {err}", where) from None
    if not found:
        raise BadRequest("not an OCI archive: its index lists no image", where)
    return found


def check_archive(path: Path, architecture: str | None, where: str) -> None:
    """An OCI archive whose image is for ``architecture`` (when stated)."""
    found = image_architectures(path, where)
    wanted = OCI_ARCHITECTURES.get(architecture or "", architecture)
    if architecture and wanted not in found:
        raise BadRequest(f"the archive's image is for {', '.join(sorted(found))}, not "
                         f"{wanted} ({architecture})", "origin.architecture")
