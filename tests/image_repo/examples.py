"""Metadata documents used across the image repository tests."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

KERNEL_CMDLINE = "console=ttyS0 quiet gridvm.tsi=4433"


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def write_files(directory: Path, contents: dict[str, bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in contents.items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def builder_document(kernel: bytes = b"kernel-bytes", initrd: bytes = b"initrd-bytes",
                     name: str = "gridvm-debian12-initramfs") -> dict:
    """What `gridvm image build` writes next to vmlinuz and initrd.img (the structure of
    image_builder.metadata.builder_metadata; docs/image-metadata.md shows it)."""
    return {
        "general": {
            "name": name,
            "title": "Debian 12 micro guest (initramfs) with the gridvm TSI agent",
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
            "content_type": "kernel+initramfs",
            "content": [
                {"role": "kernel", "file": "vmlinuz", "sha512": sha512(kernel),
                 "size": len(kernel)},
                {"role": "initrd", "file": "initrd.img", "sha512": sha512(initrd),
                 "size": len(initrd)},
            ],
            "architecture": "x86_64",
            "hypervisor_type": "qemu",
            "virtual_hardware": {"vcpus": 1, "memory_mib": 256, "disk_gib": 0},
            "minimal_hardware": {"memory_mib": 128},
            "boot": {"kernel": "vmlinuz", "cmdline": KERNEL_CMDLINE, "initrd": "initrd.img"},
        },
        "semantic": {
            "execution_type": "job",
            "user_interaction": "none",
            "user_interface": "none",
            "os": {"distro": "debian", "version": "12"},
            "software": [
                {"name": "python3", "version": "3.11.2"},
                {"name": "bash", "version": "5.2.15"},
                {"name": "busybox", "version": "1.35.0"},
                {"name": "linux", "version": "6.1.0-13-cloud-amd64"},
            ],
        },
        "idb": {
            "applications": [
                {"name": "python3", "version": "3.11.2", "executable": "/usr/bin/python3",
                 "description": "Python interpreter"},
                {"name": "bash", "version": "5.2.15", "executable": "/bin/bash",
                 "description": "GNU bash"},
                {"name": "sh", "version": "1.35.0", "executable": "/bin/sh",
                 "description": "busybox ash"},
            ],
        },
        "tsi": {"protocol_version": "11.2.1", "port": 4433, "tls_required": True,
                "user": "gridvm", "group": "gridvm", "workdir_root": "/home/gridvm/jobs"},
    }


def variant(doc: dict, **changes) -> dict:
    """A deep copy of ``doc`` with dotted-path changes (``None`` removes the key):

    ``variant(doc, **{"semantic.os.version": "11"})``
    """
    out = copy.deepcopy(doc)
    for dotted, value in changes.items():
        node = out
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out
