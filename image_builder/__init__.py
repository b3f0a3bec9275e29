"""Build guest images from Debian packages and recipes, cached by their inputs.

``build_recipe(load_recipe(path))`` builds what a creator's recipe asks for
(``image_builder.recipe``, docs/creators.md), reporting its phases to a progress callback;
``build_image(kind)`` builds gridvm's own image of that kind from its recipe in
``image_builder/recipes``.  ``build_image("initramfs")`` gives a cloud kernel + a zstd
initramfs holding the whole root; ``build_image("qcow2")`` gives an ext4 root in a qcow2
disk, booted directly through the kernel with a tiny loader initramfs;
``build_image("erofs")`` a read-only erofs root, attached shared by every instance, that
the loader mounts under a tmpfs overlay (the guest's RAM holds only what it reads);
``build_image("cloud")`` a standard cloud image (``image_builder.cloud``),
``build_image("cloud-crun")`` that with crun for container images; ``build_image("container")``
a busybox OCI container image (``image_builder.oci``; no recipe).  The micro guests
start busybox init, which mounts the contextualization medium, brings up user-mode
networking, starts the TSI agent and reaps orphans.  Each build writes ``metadata.json``
ready for ``gridvm catalogue register``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tsi_bridge
from image_builder import customize, debian, metadata, pack, rootfs
from image_builder.errors import BuildError
from image_builder.progress import Progress, Step, silent
from image_builder.recipe import Recipe, default_recipe, load_recipe

__all__ = ["KINDS", "BuildError", "BuiltImage", "Recipe", "Step", "build_image",
           "build_recipe", "load_recipe"]

BUILDER_VERSION = "4"
KINDS = ("initramfs", "qcow2", "erofs", "cloud", "cloud-crun", "container")
GUEST_PACKAGES = [
    "busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libgcc-s1", "zlib1g", "libssl3", "libexpat1", "libffi8", "bash", "libtinfo6",
]
KERNEL_CMDLINE = (
    "console=ttyS0 quiet panic=-1 mitigations=off cryptomgr.notests tsc=reliable "
    "no_timer_check i8042.noaux i8042.nokbd i8042.nopnp 8250.nr_uarts=1 audit=0"
)
GUEST_MEMORY_MIB = 256
MIN_MEMORY_MIB = {"initramfs": 128, "qcow2": 96, "erofs": 96}
DISK_MIB = 1024
#: the root disk of the kinds that boot from one through the loader, and its file system
DISK_FILES = {"qcow2": "disk.qcow2", "erofs": "root.erofs"}
ROOT_FS = {"qcow2": "ext4", "erofs": "erofs"}
#: What a build found (kernel release, package versions): the metadata is made from it.
BUILD_INFO = "build.json"


@dataclass
class BuiltImage:
    """A built (or cached) image: its directory, files and metadata."""

    kind: str
    key: str
    directory: Path
    cached: bool
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    @property
    def metadata_path(self) -> Path:
        return self.directory / "metadata.json"

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(self.metadata_path.read_text())

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "directory": str(self.directory),
                "cached": self.cached, "seconds": round(self.seconds, 2),
                "metadata": str(self.metadata_path), "files": [str(p) for p in self.files]}


def _tree_digest(paths: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(paths):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _agent_sources(agent_package: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(agent_package)), p.read_bytes())
            for p in sorted(agent_package.rglob("*.py"))]


def _guest_files() -> list[tuple[str, bytes]]:
    return [(n, rootfs.guest_file(n)) for n in ("inittab", "rcS", "agent", "loader-init")]


def _image_files(kind: str) -> dict[str, str]:
    files = {"kernel": "vmlinuz", "initrd": "initrd.img"}
    if kind in DISK_FILES:
        files["disk"] = DISK_FILES[kind]
    return files


def build_image(kind: str = "initramfs", *, output_root: Path | None = None,
                force: bool = False, agent_package: Path | None = None,
                progress: Progress = silent) -> BuiltImage:
    """Build gridvm's own guest image of ``kind`` (its recipe in ``image_builder/recipes``)
    below ``output_root`` unless already built."""
    if kind not in KINDS:
        raise BuildError(f"unknown image kind {kind!r} (choose {', '.join(KINDS)})",
                         bad_input=True)
    if kind == "container":
        return _build_container(output_root, force)
    return build_recipe(default_recipe(kind), output_root=output_root, force=force,
                        agent_package=agent_package, progress=progress)


def build_recipe(recipe: Recipe, *, output_root: Path | None = None, force: bool = False,
                 agent_package: Path | None = None, progress: Progress = silent,
                 base_disk: Path | None = None) -> BuiltImage:
    """Build what ``recipe`` asks for below ``output_root`` (default
    ``$GRIDVM_HOME/images``) unless an image of the same inputs is there already; a recipe
    with a ``base`` is a layer on ``base_disk`` (``image_builder.layering``)."""
    if base_disk is not None and recipe.base is None:
        raise BuildError(f"--base-disk: recipe {recipe.name} has no base key", bad_input=True)
    if output_root is None:
        from base.paths import gridvm_home

        output_root = gridvm_home() / "images"
    output_root = Path(output_root)
    if recipe.base is not None:
        from image_builder.layering import build_layer

        return build_layer(recipe, base_disk, output_root=output_root, force=force,
                           progress=progress)
    if recipe.kind == "cloud":
        return _build_cloud(recipe, output_root, force, progress)
    kind = recipe.kind
    agent_package = Path(agent_package or Path(tsi_bridge.__file__).parent)

    progress(Step("resolving", what="packages"))
    base = debian.resolve([debian.kernel_package_name(), *GUEST_PACKAGES])
    packages = base + debian.closure(recipe.packages, base)
    key = hashlib.sha256(json.dumps({
        "builder": BUILDER_VERSION, "kind": kind, "cmdline": KERNEL_CMDLINE,
        "packages": [p.spec for p in packages], "modules": rootfs.GUEST_MODULES,
        "guest": _tree_digest(_guest_files()), "agent": _tree_digest(_agent_sources(agent_package)),
        "code": _tree_digest([(p.name, p.read_bytes())
                              for p in sorted(Path(__file__).parent.glob("*.py"))]),
        "recipe": recipe.content_inputs(),
    }, sort_keys=True).encode()).hexdigest()
    directory = output_root / f"{recipe.name}-{key[:12]}"
    files = [directory / f for f in _image_files(kind).values()]
    if (directory / BUILD_INFO).exists() and not force:
        _write_metadata(directory, recipe)  # the recipe's metadata fields may have changed
        return BuiltImage(kind, key, directory, cached=True, files=files)

    started = time.monotonic()
    output_root.mkdir(parents=True, exist_ok=True)
    debs = debian.download(packages, output_root / "debs", progress)
    work = output_root / f".build-{key[:12]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _assemble(recipe, work, packages, debs, agent_package, progress)
        if force and directory.exists():
            shutil.rmtree(directory)
        try:
            (work / "out").rename(directory)  # atomic: a half-built image never has this name
        except OSError:
            if not (directory / BUILD_INFO).exists():
                raise
            # Another process built the same inputs meanwhile: its result is as good.
            _write_metadata(directory, recipe)
            return BuiltImage(kind, key, directory, cached=True, files=files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuiltImage(kind, key, directory, cached=False, seconds=time.monotonic() - started,
                      files=files)


def _build_cloud(recipe: Recipe, output_root: Path, force: bool,
                 progress: Progress) -> BuiltImage:
    """A standard cloud image (cloud-init, python3, its own bootloader; no gridvm file)."""
    from image_builder.cloud import build_cloud_image

    image = build_cloud_image(output_root, force=force, recipe=recipe, progress=progress)
    return BuiltImage("cloud", image.key, image.directory, cached=image.cached,
                      seconds=image.seconds, files=[image.disk])


def _build_container(output_root: Path | None, force: bool) -> BuiltImage:
    """A busybox OCI container image (an OCI archive packed by umoci)."""
    from image_builder.oci import build_oci_image

    image = build_oci_image(output_root, force=force)
    return BuiltImage("container", image.key, image.directory, cached=image.cached,
                      seconds=image.seconds, files=[image.archive])


def base_document(kind: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """The metadata of an image of ``kind`` before a recipe's additions, with placeholder
    versions (what ``metadata.preview`` checks a recipe against)."""
    if kind == "cloud":
        from image_builder.cloud import CloudImage, cloud_metadata

        return cloud_metadata(CloudImage(Path("."), Path("disk.qcow2"), "", cached=False,
                                         kernel_version="0", python_version="0",
                                         cloud_init_version="0"), content=content)
    return _micro_metadata(kind, content, [debian.Package(n, "0") for n in GUEST_PACKAGES],
                           kernel_version="0")


def _micro_metadata(kind: str, content: list[dict[str, Any]], packages: list[debian.Package],
                    kernel_version: str) -> dict[str, Any]:
    return metadata.builder_metadata(
        name=f"gridvm-debian12-{kind}", kind=kind, content=content, cmdline=KERNEL_CMDLINE,
        packages=packages, kernel_version=kernel_version, memory_mib=GUEST_MEMORY_MIB,
        min_memory_mib=MIN_MEMORY_MIB[kind], disk_gib=DISK_MIB // 1024 if kind == "qcow2" else 0)


def _assemble(recipe: Recipe, work: Path, packages: list[debian.Package], debs: list[Path],
              agent_package: Path, progress: Progress) -> None:
    kind = recipe.kind
    root, kernel_root, out = work / "root", work / "kernel", work / "out"
    for d in (root, kernel_root, out):
        d.mkdir(parents=True)
    for done, deb in enumerate(debs, 1):
        progress(Step("unpacking", done, len(debs), "packages"))
        debian.extract(deb, kernel_root if done == 1 else root)
    progress(Step("assembling", what="the guest root"))
    kernel_version = next((kernel_root / "lib/modules").iterdir()).name
    busybox = root / "bin" / "busybox"
    rootfs.run_depmod(busybox, kernel_root, kernel_version)
    modules_dir = kernel_root / "lib/modules" / kernel_version
    order = rootfs.module_load_order(modules_dir, rootfs.GUEST_MODULES)
    for rel in order:
        target = root / "lib/modules" / kernel_version / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(modules_dir / rel, target)

    rootfs.prune(root, keep_charsets=bool(recipe.packages))
    rootfs.install_busybox(root)
    rootfs.install_system_files(root, kernel_version, order)
    rootfs.install_python(root)
    rootfs.install_agent(root, agent_package)
    customize.micro_guest(root, recipe)

    progress(Step("packing", what=kind))
    names = _image_files(kind)
    files = {role: out / file for role, file in names.items()}
    shutil.copy2(next((kernel_root / "boot").glob("vmlinuz-*")), files["kernel"])
    if kind == "initramfs":
        pack.initramfs(root, files["initrd"])
    else:
        loader = work / "loader"
        rootfs.build_loader(busybox, modules_dir, loader, ROOT_FS[kind])
        pack.initramfs(loader, files["initrd"])
        if kind == "erofs":
            pack.erofs_image(root, files["disk"])
        else:
            pack.qcow2_disk(root, files["disk"], DISK_MIB)
    (out / BUILD_INFO).write_text(json.dumps(
        {"kernel": kernel_version, "packages": [[p.name, p.version] for p in packages]},
        indent=2) + "\n")
    progress(Step("metadata", what="(sha512, sizes)"))
    _write_metadata(out, recipe)


def _write_metadata(directory: Path, recipe: Recipe) -> None:
    """``metadata.json`` from the build's findings and the recipe (replaced atomically, and
    only when it changes)."""
    info = json.loads((directory / BUILD_INFO).read_text())
    packages = [debian.Package(name, version) for name, version in info["packages"]]
    files = {role: directory / name for role, name in _image_files(recipe.kind).items()}
    doc = metadata.apply_recipe(
        _micro_metadata(recipe.kind, metadata.content_refs(files), packages, info["kernel"]),
        recipe, packages)
    metadata.write(directory, doc)
