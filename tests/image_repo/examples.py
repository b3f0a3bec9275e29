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
    """What `gridvm image build` writes next to vmlinuz and initrd.img (docs/image-metadata.md)."""
    return {
        "schema_version": 1,
        "general": {
            "name": name,
            "title": "gridvm Debian 12 micro image (kernel + initramfs)",
            "description": "Debian 12 cloud kernel, busybox, python3 and the gridvm TSI agent.",
            "permissions": {"owner": "rw", "group": "r", "others": "r"},
            "purposes": ["batch jobs"],
        },
        "origin": {
            "runtime_technology": "vm",
            "runtime_implementation": "qemu",
            "management_layer": "libvirt",
            "image_type": "declarative",
            "content_type": "kernel+initramfs",
            "content": [
                {"file": "vmlinuz", "role": "kernel", "sha512": sha512(kernel),
                 "size": len(kernel)},
                {"file": "initrd.img", "role": "initrd", "sha512": sha512(initrd),
                 "size": len(initrd)},
            ],
            "architecture": "x86_64",
            "hypervisor_type": "qemu",
            "virtual_hardware": {"vcpus": 1, "ram_mib": 256},
            "minimal_hardware": {"ram_mib": 128},
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img",
                     "command_line": KERNEL_CMDLINE},
        },
        "semantic": {
            "execution_type": "job",
            "user_interaction": False,
            "user_interface": "none",
            "os": {"distro": "debian", "version": "12", "family": "linux"},
            "software": [
                {"name": "python3", "version": "3.11.2"},
                {"name": "bash", "version": "5.2.15"},
                {"name": "busybox", "version": "1.35.0"},
                {"name": "linux", "version": "6.1.0-13"},
            ],
        },
        "idb": {
            "applications": [
                {"name": "python3", "version": "3.11.2", "executable": "/usr/bin/python3"},
                {"name": "bash", "version": "5.2.15", "executable": "/bin/bash"},
                {"name": "sh", "executable": "/bin/sh", "arguments": ["-e"]},
            ],
        },
        "tsi": {"protocol_version": "10.1", "port": 4433, "tls_required": True,
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
