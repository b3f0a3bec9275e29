"""The metadata document a built image is registered with (docs/image-metadata.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from image_builder.debian import Package
from image_repo import schema


def sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upstream_version(debian_version: str) -> str:
    """``1:3.11.2-6+deb12u9`` → ``3.11.2``."""
    version = debian_version.split(":", 1)[-1]
    return re.split(r"[-+~]", version, maxsplit=1)[0]


def builder_metadata(*, name: str, kind: str, files: dict[str, Path], cmdline: str,
                     packages: list[Package], kernel_version: str, memory_mib: int,
                     min_memory_mib: int, disk_gib: int) -> dict[str, Any]:
    """Metadata for a freshly built image; owner, version and dates come at registration.

    The document is checked against the repository's schema before it is returned, so a
    build never writes metadata that ``gridvm catalogue register`` would refuse.
    """
    by_name = {p.name: p for p in packages}

    def pkg(name: str, debian_name: str) -> dict[str, str]:
        return {"name": name, "version": upstream_version(by_name[debian_name].version)}

    content = [
        {"role": role, "file": path.name, "sha512": sha512_file(path),
         "size": path.stat().st_size}
        for role, path in files.items()
    ]
    boot: dict[str, Any] = {"kernel": files["kernel"].name, "cmdline": cmdline}
    if "initrd" in files:
        boot["initrd"] = files["initrd"].name
    doc = {
        "schema_version": 1,
        "general": {
            "name": name,
            "title": f"Debian 12 micro guest ({kind}) with the gridvm TSI agent",
            "description": "Cloud kernel, busybox, bash and python3 from Debian packages; "
                           "jobs run as user gridvm through the gridvm TSI agent.",
            "permissions": {"owner": "rw", "group": "r", "others": "r"},
            "purposes": ["testing", "python jobs"],
        },
        "origin": {
            "runtime_technology": "vm",
            "runtime_implementation": "qemu",
            "management_layer": "libvirt",
            "image_type": "declarative",
            "content_type": "qcow2" if kind == "qcow2" else "kernel+initramfs",
            "content": content,
            "architecture": "x86_64",
            "hypervisor_type": "qemu",
            "virtual_hardware": {"vcpus": 1, "memory_mib": memory_mib, "disk_gib": disk_gib},
            "minimal_hardware": {"vcpus": 1, "memory_mib": min_memory_mib},
            "boot": boot,
        },
        "semantic": {
            "execution_type": "job",
            "user_interaction": "none",
            "user_interface": "none",
            "os": {"distro": "debian", "version": "12", "family": "linux"},
            "software": [
                pkg("python3", "python3.11-minimal"),
                pkg("bash", "bash"),
                pkg("busybox", "busybox-static"),
                {"name": "linux", "version": kernel_version},
            ],
        },
        "idb": {
            "applications": [
                {"name": "python3", "version": upstream_version(
                    by_name["python3.11-minimal"].version),
                 "executable": "/usr/bin/python3", "description": "Python interpreter"},
                {"name": "bash", "version": upstream_version(by_name["bash"].version),
                 "executable": "/bin/bash", "description": "GNU bash"},
                {"name": "sh", "version": upstream_version(by_name["busybox-static"].version),
                 "executable": "/bin/sh", "description": "busybox ash"},
            ],
        },
        "tsi": {
            "protocol_version": "11.2.1",
            "port": 4433,
            "tls_required": True,
            "user": "gridvm",
            "group": "gridvm",
            "workdir_root": "/home/gridvm/jobs",
        },
    }
    schema.validate(doc)
    return doc
