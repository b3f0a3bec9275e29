"""Small OCI archives (an OCI image layout in one tar file) made in Python, for tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def tar_bytes(entries: list[tuple[str, bytes | str | None]]) -> bytes:
    """A tar of (name, bytes: a file / str: a symlink target / None: a directory)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def oci_archive(path: Path, layers: list[list], architecture: str = "amd64") -> str:
    """An OCI image layout of gzip layers in one tar file; returns its sha512."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_refs = [blob(gzip.compress(tar_bytes(entries))) for entries in layers]
    config = blob(json.dumps({"architecture": architecture, "os": "linux",
                              "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"]}}).encode())
    manifest = blob(json.dumps({"schemaVersion": 2, "config": config,
                                "layers": layer_refs}).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}]}
    entries = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
               ("index.json", json.dumps(index).encode())]
    entries += [(f"blobs/sha256/{d}", data) for d, data in blobs.items()]
    path.write_bytes(tar_bytes(entries))
    return hashlib.sha512(path.read_bytes()).hexdigest()
