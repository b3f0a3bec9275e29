"""A standard cloud image made the way Debian makes its genericcloud images.

``build_cloud_image()`` runs ``mmdebstrap`` (Debian packages only: the cloud kernel with its
initramfs, systemd, cloud-init, python3), then lays the root out on a partitioned disk with
its own bootloader (syslinux on a small FAT boot partition, ext4 root), without loop devices
or mounts.  No gridvm file goes into the image: it becomes a target system only through the
cloud-init NoCloud medium gridvm attaches at boot (``vmm.cloudinit``).  The result is cached
under the build root keyed by its inputs, so CI builds it once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from image_builder import customize
from image_builder.metadata import apply_recipe, content_refs, upstream_version
from image_builder.progress import Progress, Step, silent
from image_builder.recipe import Recipe
from image_builder.tools import run_tool
from image_repo import schema

CLOUD_BUILDER_VERSION = "2"
SUITE = "bookworm"
MIRRORS = ("deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")
#: What a minimal genericcloud-like image needs to boot and run cloud-init and a TSI agent.
CLOUD_PACKAGES = ("systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools",
                  "cloud-init", "python3", "ifupdown", "iproute2", "bash")
ROOT_LABEL = "cloudroot"
BOOT_MIB = 64
ROOT_MIB = 1536
#: A quiet, tuned command line: under software emulation every console line and self-test
#: costs (docs/host-setup.md); the image's own bootloader passes it.
KERNEL_CMDLINE = (f"root=LABEL={ROOT_LABEL} ro console=ttyS0 quiet panic=-1 mitigations=off "
                  "cryptomgr.notests tsc=reliable no_timer_check i8042.noaux i8042.nokbd "
                  "i8042.nopnp 8250.nr_uarts=1 audit=0")
#: Settings of the image itself, as a cloud provider tunes the images it publishes: a small
#: initramfs (only the virtio drivers the root disk needs; udev in a "most" initramfs costs
#: tens of seconds under emulation) and cloud-init looking for NoCloud only.
IMAGE_SETTINGS = {
    "etc/initramfs-tools/conf.d/modules-list.conf": "MODULES=list\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\n",
    "etc/cloud/cloud.cfg.d/90-datasources.cfg": "datasource_list: [ NoCloud, None ]\n",
}
GUEST_MEMORY_MIB = 512
MIN_MEMORY_MIB = 256
#: systemd, udev and two cloud-init stages under software emulation: measured 5-7 min on a
#: loaded 2-core host (load ~8), where gridvm's micro guest takes seconds
BOOT_TIMEOUT_S = 900
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
                  "/usr/share/info/*")
_SECTOR = 512


@dataclass(frozen=True)
class CloudImage:
    """A built (or cached) cloud disk image."""

    directory: Path
    disk: Path
    key: str
    cached: bool
    seconds: float = 0.0
    kernel_version: str = ""
    python_version: str = ""
    cloud_init_version: str = ""
    #: Debian versions of the recipe's packages as installed
    package_versions: dict[str, str] = field(default_factory=dict)


def _run(cmd: list[str], timeout: float = 1800, **kwargs) -> str:
    return run_tool(cmd, timeout=timeout, **kwargs)


def cloud_key(packages: tuple[str, ...] = CLOUD_PACKAGES, recipe: Recipe | None = None) -> str:
    """The cache key: what goes onto the disk (packages, suite, layout, a recipe's users
    and files) and the builder's version (bump ``CLOUD_BUILDER_VERSION`` when the way the
    disk is made changes).  Metadata is not part of it: it is written anew on every build."""
    inputs: dict[str, Any] = {
        "version": CLOUD_BUILDER_VERSION, "suite": SUITE, "mirrors": MIRRORS,
        "packages": sorted(packages), "boot_mib": BOOT_MIB, "root_mib": ROOT_MIB,
        "cmdline": KERNEL_CMDLINE, "settings": IMAGE_SETTINGS,
    }
    if recipe is not None and (recipe.files or recipe.users):
        content = recipe.content_inputs()
        inputs["customized"] = {k: content.get(k) for k in ("files", "users", "sources")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build_cloud_image(output_root: Path | None = None, *, force: bool = False,
                      recipe: Recipe | None = None, progress: Progress = silent) -> CloudImage:
    """Build the cloud disk below ``output_root`` (default ``$GRIDVM_HOME/images``), with
    the packages, users and files of ``recipe`` (a cloud-kind recipe) if given."""
    if output_root is None:
        from base.paths import gridvm_home

        output_root = gridvm_home() / "images"
    progress(Step("resolving", what="packages"))
    extra = tuple(p for p in (recipe.packages if recipe else ()) if p not in CLOUD_PACKAGES)
    packages = CLOUD_PACKAGES + extra
    key = cloud_key(packages, recipe)
    name = recipe.name if recipe else "debian12-cloud"
    directory = Path(output_root) / f"{name}-{key[:12]}"
    if (directory / "build.json").exists() and not force:
        image = _read(directory, key, cached=True)
        write_metadata(image, recipe)  # derived from the build: this code's metadata
        return image
    started = time.monotonic()
    work = Path(output_root) / f".cloud-{key[:12]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    try:
        root = work / "root"
        progress(Step("bootstrapping", what=f"{len(packages)} packages and their "
                      "dependencies (mmdebstrap)"))
        bootstrap(root, packages)
        progress(Step("assembling", what="users and files"))
        if recipe is not None:
            customize.cloud_root(root, recipe)
        kernel_version, python_version, cloud_init_version = _versions(root)
        progress(Step("packing", what="disk.qcow2"))
        disk_image(root, out / "disk.qcow2", kernel_version)
        (out / "build.json").write_text(json.dumps(
            {"key": key, "kernel": kernel_version, "python": python_version,
             "cloud_init": cloud_init_version, "packages": list(packages),
             "versions": _package_versions(root, extra)}, indent=2) + "\n")
        progress(Step("metadata", what="(sha512, sizes)"))
        write_metadata(_read(out, key, cached=False), recipe)
        if force and directory.exists():
            shutil.rmtree(directory)
        try:
            out.rename(directory)  # atomic: a half-built image never has this name
        except OSError:
            if not (directory / "build.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return replace(_read(directory, key, cached=False), seconds=time.monotonic() - started)


def _read(directory: Path, key: str, *, cached: bool) -> CloudImage:
    info = json.loads((directory / "build.json").read_text())
    return CloudImage(directory, directory / "disk.qcow2", key, cached=cached,
                      kernel_version=info["kernel"], python_version=info["python"],
                      cloud_init_version=info["cloud_init"],
                      package_versions=info.get("versions", {}))


def _package_versions(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    if not names:
        return {}
    out = _run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package} "
                "${Version}\n", *names])
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def bootstrap(root: Path, packages: tuple[str, ...]) -> None:
    """A Debian root directory made by mmdebstrap from the archive's packages."""
    cmd = ["mmdebstrap", "--quiet", "--variant=apt", "--mode=root", "--format=directory",
           f"--include={','.join(packages)}",
           *(f"--dpkgopt=path-exclude={p}" for p in _DPKG_EXCLUDES),
           SUITE, str(root), *MIRRORS]
    _run(cmd)
    (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 rw,discard,errors=remount-ro 0 1\n")
    (root / "etc/hostname").write_text("localhost\n")
    for rel, text in IMAGE_SETTINGS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"])
    (root / "etc/machine-id").write_text("")  # a fresh one on every instance's first boot


def _versions(root: Path) -> tuple[str, str, str]:
    """The kernel release, python3's and cloud-init's upstream versions in the root."""
    kernel = next((root / "lib/modules").iterdir()).name
    python = _run(["chroot", str(root), "python3", "-c",
                   "import platform; print(platform.python_version())"]).strip()
    cloud_init = _run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                       "-f=${Version}", "cloud-init"]).strip()
    return kernel, python, upstream_version(cloud_init)


def _syslinux_cfg(kernel_version: str) -> str:
    return ("DEFAULT debian\nPROMPT 0\nTIMEOUT 1\n"
            f"LABEL debian\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {KERNEL_CMDLINE}\n")


def disk_image(root: Path, output: Path, kernel_version: str) -> None:
    """An MBR disk: a FAT boot partition with syslinux, kernel and initramfs, and the ext4
    root; written into one file at partition offsets (no loop device, no mount)."""
    boot_start = 1024 * 1024
    root_start = boot_start + BOOT_MIB * 1024 * 1024
    total = root_start + ROOT_MIB * 1024 * 1024
    raw = output.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.truncate(total)
    try:
        table = (f"label: dos\nstart={boot_start // _SECTOR}, size={BOOT_MIB * 2048}, type=e, "
                 f"bootable\nstart={root_start // _SECTOR}, type=83\n")
        _run(["sfdisk", "--quiet", str(raw)], input=table)
        with open(SYSLINUX_MBR, "rb") as f:
            mbr = f.read(440)
        with open(raw, "r+b") as f:
            f.write(mbr)
        _run(["mkfs.vfat", "-F", "16", "-n", "BOOT", f"--offset={boot_start // _SECTOR}", str(raw),
              str(BOOT_MIB * 1024)])
        cfg = output.parent / "syslinux.cfg"
        cfg.write_text(_syslinux_cfg(kernel_version))
        fat = f"{raw}@@{boot_start}"
        _run(["mcopy", "-i", fat, str(root / "boot" / f"vmlinuz-{kernel_version}"), "::vmlinuz"])
        _run(["mcopy", "-i", fat, str(root / "boot" / f"initrd.img-{kernel_version}"),
              "::initrd.img"])
        _run(["mcopy", "-i", fat, str(cfg), "::syslinux.cfg"])
        cfg.unlink()
        _run(["syslinux", "--install", f"--offset={boot_start}", str(raw)])
        _run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(root),
              "-E", f"offset={root_start}", str(raw), f"{ROOT_MIB}M"])
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(output)])
    finally:
        raw.unlink(missing_ok=True)


def cloud_metadata(image: CloudImage, *, name: str = "debian12-cloud",
                   content: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metadata to register the cloud image with: it boots with its own bootloader and takes
    cloud-init contextualization; checked against the repository's schema.  ``content``
    stands in for the disk's (a recipe is checked before its build)."""
    doc = {
        "schema_version": 1,
        "general": {
            "name": name,
            "title": "Debian 12 generic cloud image (cloud-init, python3)",
            "description": "Made by mmdebstrap from Debian packages only, booted by its own "
                           "bootloader; gridvm's TSI agent comes on the NoCloud medium.",
            "permissions": {"owner": "rw", "group": "r", "others": "r"},
            "purposes": ["testing", "cloud images"],
        },
        "origin": {
            "runtime_technology": "vm", "runtime_implementation": "qemu",
            "management_layer": "libvirt", "image_type": "implicit",
            "content_type": "qcow2",
            "content": content or content_refs({"disk": image.disk}),
            "architecture": "x86_64", "hypervisor_type": "qemu",
            "virtual_hardware": {"vcpus": 1, "memory_mib": GUEST_MEMORY_MIB,
                                 "disk_gib": (BOOT_MIB + ROOT_MIB) / 1024},
            "minimal_hardware": {"vcpus": 1, "memory_mib": MIN_MEMORY_MIB},
            "boot": {"mode": "bootloader"},
        },
        "semantic": {
            "execution_type": "job", "user_interaction": "none", "user_interface": "none",
            "os": {"distro": "debian", "version": "12", "family": "linux"},
            "software": [{"name": "python3", "version": image.python_version},
                         {"name": "cloud-init", "version": image.cloud_init_version},
                         {"name": "linux", "version": image.kernel_version}],
        },
        "idb": {"applications": [
            {"name": "python3", "version": image.python_version,
             "executable": "/usr/bin/python3", "description": "Python interpreter"},
            {"name": "cloud-init", "version": image.cloud_init_version,
             "executable": "/usr/bin/cloud-init", "description": "cloud-init"},
            {"name": "bash", "executable": "/bin/bash", "description": "GNU bash"},
        ]},
        "tsi": {"protocol_version": "11.2.1", "port": 4433, "tls_required": True,
                "user": "gridvm", "group": "gridvm", "workdir_root": "/home/gridvm/jobs",
                "contextualization": "cloud-init", "boot_timeout_s": BOOT_TIMEOUT_S},
    }
    schema.validate(doc)
    return doc


def write_metadata(image: CloudImage, recipe: Recipe | None = None) -> Path:
    """``metadata.json`` next to the disk, ready for ``gridvm catalogue register``."""
    doc = cloud_metadata(image)
    if recipe is not None:
        from image_builder.debian import Package

        doc = apply_recipe(doc, recipe, [Package(name, version) for name, version in
                                         image.package_versions.items()])
    path = image.directory / "metadata.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
