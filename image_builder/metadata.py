"""The metadata document a built image is registered with (docs/image-metadata.md)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from base.files import sha512_file
from image_builder.debian import Package
from image_builder.recipe import Recipe
from image_repo import schema
from image_repo.errors import BadRequest

#: the origin.content_type of gridvm's micro guest of each kind (erofs: a raw file system)
CONTENT_TYPES = {"initramfs": "kernel+initramfs", "qcow2": "qcow2", "erofs": "raw"}
#: Metadata keys a recipe's ``[metadata]`` may not set: the build computes them.
COMPUTED_KEYS = (("schema_version",), ("general", "name"), ("origin", "content"),
                 ("origin", "os_hash_value"), ("origin", "size"))
#: A stand-in for a file's sha512 while a recipe is checked before its build.
_PLACEHOLDER_SHA512 = "0" * 128


def write(directory: Path, doc: dict[str, Any]) -> None:
    """``directory/metadata.json`` holding ``doc``, replaced atomically and only when it
    changes."""
    text = json.dumps(doc, indent=2) + "\n"
    path = directory / "metadata.json"
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name(f".metadata-{os.getpid()}.json")
    partial.write_text(text)
    partial.replace(path)


def upstream_version(debian_version: str) -> str:
    """``1:3.11.2-6+deb12u9`` → ``3.11.2``."""
    version = debian_version.split(":", 1)[-1]
    return re.split(r"[-+~]", version, maxsplit=1)[0]


def content_refs(files: dict[str, Path]) -> list[dict[str, Any]]:
    """``origin.content``: each file's role, name, sha512 and size."""
    return [{"role": role, "file": path.name, "sha512": sha512_file(path),
             "size": path.stat().st_size} for role, path in files.items()]


def builder_metadata(*, name: str, kind: str, content: list[dict[str, Any]], cmdline: str,
                     packages: list[Package], kernel_version: str, memory_mib: int,
                     min_memory_mib: int, disk_gib: int) -> dict[str, Any]:
    """Metadata of gridvm's micro guest; owner, version and dates come at registration.

    ``content`` is :func:`content_refs` of the files (kernel, initrd and, for qcow2, disk).
    The document is checked against the repository's schema before it is returned, so a
    build never writes metadata that ``gridvm catalogue register`` would refuse.
    """
    by_name = {p.name: p for p in packages}

    def pkg(name: str, debian_name: str) -> dict[str, str]:
        return {"name": name, "version": upstream_version(by_name[debian_name].version)}

    files = {ref["role"]: ref["file"] for ref in content}
    boot: dict[str, Any] = {"kernel": files["kernel"], "cmdline": cmdline}
    if "initrd" in files:
        boot["initrd"] = files["initrd"]
    if kind == "erofs":
        boot["readonly_disk"] = True
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
            "content_type": CONTENT_TYPES[kind],
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


def apply_recipe(doc: dict[str, Any], recipe: Recipe, packages: list[Package]
                 ) -> dict[str, Any]:
    """``doc`` with the recipe's name, applications, packages and metadata fields, checked.

    ``packages`` are the Debian packages in the image (their versions give the versions of
    the recipe's packages in ``semantic.software`` and of applications naming a package).
    Raises :class:`BadRequest` naming the recipe key (``metadata.general.title``).
    """
    versions = {p.name: upstream_version(p.version) for p in packages}
    doc = schema.merge_patch(doc, {"general": {"name": recipe.name,
                                               "title": f"{recipe.name} {recipe.version}"}})
    software = doc.setdefault("semantic", {}).setdefault("software", [])
    software.extend({"name": name, "version": versions[name]}
                    for name in recipe.packages if name in versions)
    applications = doc.setdefault("idb", {}).setdefault("applications", [])
    applications.extend(app.idb_entry(versions.get(app.package or "")) for app in
                        recipe.applications)
    for keys in COMPUTED_KEYS:
        value: Any = recipe.metadata
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            raise BadRequest("computed by the build; leave it out",
                             ".".join(("metadata", *keys)))
    doc = schema.merge_patch(doc, recipe.metadata)
    try:
        schema.validate(doc)
    except BadRequest as err:
        raise BadRequest(err.message, f"metadata.{err.path}" if err.path else "metadata") \
            from None
    return doc


def placeholder_content(kind: str) -> list[dict[str, Any]]:
    """Content refs with the right names and roles for ``kind`` (sha512 and size unknown)."""
    roles = {"initramfs": {"kernel": "vmlinuz", "initrd": "initrd.img"},
             "qcow2": {"kernel": "vmlinuz", "initrd": "initrd.img", "disk": "disk.qcow2"},
             "erofs": {"kernel": "vmlinuz", "initrd": "initrd.img", "disk": "root.erofs"},
             "cloud": {"disk": "disk.qcow2"}}[kind]
    return [{"role": role, "file": file, "sha512": _PLACEHOLDER_SHA512, "size": 0}
            for role, file in roles.items()]


def preview(recipe: Recipe) -> dict[str, Any]:
    """The metadata ``recipe`` will have, with placeholder digests and versions: checks
    the recipe's metadata fields before anything is downloaded."""
    from image_builder import base_document

    names = {p for p in recipe.packages}
    for app in recipe.applications:
        if app.package:
            names.add(app.package)
    packages = [Package(name, "0") for name in names]
    return apply_recipe(base_document(recipe.kind, placeholder_content(recipe.kind)), recipe,
                        packages)
