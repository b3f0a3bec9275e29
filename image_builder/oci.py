"""A small OCI container image made from Debian packages with Debian's tools.

``build_oci_image()`` lays out a busybox root (Debian's ``busybox-static``, its applets as
links, an ``/etc/os-release`` of its own so a job can tell it runs inside the container),
packs it with ``umoci`` into an OCI image layout and that into one tar file (an
``oci-archive``), and writes ``metadata.json`` to register it as a container image
(content type ``oci``, role ``container``, ``origin.source_url`` its reference).  The result
is cached below the build root keyed by its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_builder import debian, rootfs
from image_builder.metadata import sha512_file, upstream_version
from image_builder.tools import run_tool
from image_repo import schema

OCI_BUILDER_VERSION = "1"
NAME = "gridvm-busybox-container"
ARCHIVE = "busybox.oci.tar"
TAG = "latest"
#: what the container's /etc/os-release says (the VM's says Debian)
PRETTY_NAME = "gridvm busybox container"
OS_ID = "gridvm-busybox"
DIRECTORIES = ("tmp", "proc", "sys", "dev", "etc", "root", "home", "var/tmp", "run")


@dataclass(frozen=True)
class OciImage:
    """A built (or cached) OCI archive with its metadata."""

    directory: Path
    archive: Path
    key: str
    cached: bool
    seconds: float = 0.0


def _run(cmd: list[str], **kwargs) -> str:
    return run_tool(cmd, label_words=2, **kwargs)


def reference(busybox_version: str) -> str:
    return f"docker://localhost/gridvm/busybox:{upstream_version(busybox_version)}"


def build_oci_image(output_root: Path | None = None, *, force: bool = False) -> OciImage:
    """Build the busybox OCI archive below ``output_root`` (default ``$GRIDVM_HOME/images``)."""
    if output_root is None:
        from base.paths import gridvm_home

        output_root = gridvm_home() / "images"
    output_root = Path(output_root)
    [package] = debian.resolve(["busybox-static"])
    key = hashlib.sha256(json.dumps({
        "version": OCI_BUILDER_VERSION, "package": package.spec, "pretty": PRETTY_NAME,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }, sort_keys=True).encode()).hexdigest()
    directory = output_root / f"{NAME}-{key[:12]}"
    if (directory / "metadata.json").exists() and not force:
        return OciImage(directory, directory / ARCHIVE, key, cached=True)
    started = time.monotonic()
    [deb] = debian.download([package], output_root / "debs")
    work = output_root / f".oci-{key[:12]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    try:
        root = work / "rootfs"
        busybox_root(deb, root, package.version)
        pack(root, work / "layout", out / ARCHIVE)
        doc = oci_metadata(out / ARCHIVE, package.version)
        (out / "metadata.json").write_text(json.dumps(doc, indent=2) + "\n")
        if force and directory.exists():
            shutil.rmtree(directory)
        try:
            out.rename(directory)  # atomic: a half-built image never has this name
        except OSError:
            if not (directory / "metadata.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OciImage(directory, directory / ARCHIVE, key, cached=False,
                    seconds=time.monotonic() - started)


def busybox_root(deb: Path, root: Path, version: str) -> None:
    """busybox with its applets, the usual directories and an os-release of its own."""
    debian.extract(deb, root)
    rootfs.install_busybox(root)
    for rel in ("usr/share/doc", "usr/share/man"):
        shutil.rmtree(root / rel, ignore_errors=True)
    for rel in DIRECTORIES:
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/os-release").write_text(
        f'PRETTY_NAME="{PRETTY_NAME}"\nNAME="gridvm busybox"\nID={OS_ID}\n'
        f'VERSION_ID="{upstream_version(version)}"\n')
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")


def pack(root: Path, layout: Path, archive: Path) -> None:
    """``root`` as the one layer of an OCI image (umoci), the layout as one tar file."""
    image = f"{layout}:{TAG}"
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", image])
    _run(["umoci", "insert", "--image", image, str(root), "/"])
    _run(["umoci", "config", "--image", image, "--architecture", "amd64", "--os", "linux",
          "--config.cmd", "/bin/sh", "--config.env",
          "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    _run(["umoci", "gc", "--layout", str(layout)])
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=path.relative_to(layout).as_posix(), recursive=False)


def oci_metadata(archive: Path, busybox_version: str) -> dict[str, Any]:
    """Metadata to register the archive with, checked against the repository's schema."""
    version = upstream_version(busybox_version)
    doc = {
        "schema_version": 1,
        "general": {
            "name": NAME,
            "title": "busybox container image (OCI)",
            "description": "Debian's busybox-static as an OCI image packed by umoci; its "
                           "/etc/os-release names it, not Debian.",
            "permissions": {"owner": "rw", "group": "r", "others": "r"},
            "purposes": ["testing", "containers"],
        },
        "origin": {
            "runtime_technology": "container", "runtime_implementation": "oci",
            "image_type": "implicit", "content_type": "oci",
            "content": [{"role": "container", "file": archive.name,
                         "sha512": sha512_file(archive), "size": archive.stat().st_size}],
            "source_url": reference(busybox_version), "architecture": "x86_64",
        },
        "semantic": {
            "execution_type": "job", "user_interaction": "none", "user_interface": "none",
            "os": {"distro": OS_ID, "family": "linux"},
            "software": [{"name": "busybox", "version": version}],
        },
    }
    schema.validate(doc)
    return doc
