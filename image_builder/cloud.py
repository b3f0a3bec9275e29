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
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from image_builder.errors import BuildError
from image_builder.metadata import sha512_file, upstream_version
from image_repo import schema

CLOUD_BUILDER_VERSION = "2"
SUITE = "bookworm"
MIRRORS = ("deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")
#: What a minimal genericcloud-like image needs to boot and run cloud-init and a TSI agent.
CLOUD_PACKAGES = ("systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools",
                  "cloud-init", "python3", "ifupdown", "iproute2", "bash")
#: A cloud image that also runs CONTAINER jobs' OCI images with crun (rootless: the
#: job's user in a user namespace).  It becomes a recipe once recipe builds land.
CONTAINER_HOST_PACKAGES = (*CLOUD_PACKAGES, "crun")
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
    packages: tuple[str, ...] = CLOUD_PACKAGES
    crun_version: str | None = None  #: when the image has crun


def _run(cmd: list[str], timeout: float = 1800, **kwargs) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError as err:
        raise BuildError(f"{cmd[0]} not found: scripts/setup-host.sh installs it") from err
    except subprocess.TimeoutExpired as err:
        raise BuildError(f"{cmd[0]} did not finish within {timeout:g} s") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BuildError(f"{cmd[0]} failed: {detail[-1] if detail else result.returncode}")
    return result.stdout


def cloud_key(packages: tuple[str, ...] = CLOUD_PACKAGES) -> str:
    """The cache key: the recipe (packages, suite, layout) and the builder's version (bump
    ``CLOUD_BUILDER_VERSION`` when the way the disk is made changes)."""
    return hashlib.sha256(json.dumps({
        "version": CLOUD_BUILDER_VERSION, "suite": SUITE, "mirrors": MIRRORS,
        "packages": sorted(packages), "boot_mib": BOOT_MIB, "root_mib": ROOT_MIB,
        "cmdline": KERNEL_CMDLINE, "settings": IMAGE_SETTINGS,
    }, sort_keys=True).encode()).hexdigest()


def build_cloud_image(output_root: Path | None = None, *, force: bool = False,
                      packages: tuple[str, ...] = CLOUD_PACKAGES) -> CloudImage:
    """Build the cloud disk below ``output_root`` (default ``$GRIDVM_HOME/images``)."""
    if output_root is None:
        from base.paths import gridvm_home

        output_root = gridvm_home() / "images"
    key = cloud_key(packages)
    directory = Path(output_root) / f"debian12-cloud-{key[:12]}"
    if (directory / "build.json").exists() and not force:
        image = _read(directory, key, cached=True)
        write_metadata(image)  # derived from the build: this code's metadata, not the cached
        return image
    started = time.monotonic()
    work = Path(output_root) / f".cloud-{key[:12]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    try:
        root = work / "root"
        bootstrap(root, packages)
        kernel_version, python_version, cloud_init_version = _versions(root)
        crun = _package_version(root, "crun") if "crun" in packages else None
        disk_image(root, out / "disk.qcow2", kernel_version)
        (out / "build.json").write_text(json.dumps(
            {"key": key, "kernel": kernel_version, "python": python_version,
             "cloud_init": cloud_init_version, "packages": list(packages), "crun": crun},
            indent=2) + "\n")
        write_metadata(_read(out, key, cached=False))
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
                      packages=tuple(info.get("packages", CLOUD_PACKAGES)),
                      crun_version=info.get("crun"))


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
    return kernel, python, _package_version(root, "cloud-init")


def _package_version(root: Path, package: str) -> str:
    """The upstream version of an installed package in the root."""
    return upstream_version(_run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                                  "-f=${Version}", package]).strip())


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


def cloud_metadata(image: CloudImage, *, name: str | None = None) -> dict[str, Any]:
    """Metadata to register the cloud image with: it boots with its own bootloader and takes
    cloud-init contextualization (and, with crun, runs container images); checked against
    the repository's schema."""
    disk = image.disk
    crun = "crun" in image.packages
    doc = {
        "schema_version": 1,
        "general": {
            "name": name or ("debian12-cloud-crun" if crun else "debian12-cloud"),
            "title": "Debian 12 generic cloud image (cloud-init, python3"
                     + (", crun)" if crun else ")"),
            "description": "Made by mmdebstrap from Debian packages only, booted by its own "
                           "bootloader; gridvm's TSI agent comes on the NoCloud medium.",
            "permissions": {"owner": "rw", "group": "r", "others": "r"},
            "purposes": ["testing", "cloud images"],
        },
        "origin": {
            "runtime_technology": "vm", "runtime_implementation": "qemu",
            "management_layer": "libvirt", "image_type": "implicit",
            "content_type": "qcow2",
            "content": [{"role": "disk", "file": disk.name, "sha512": sha512_file(disk),
                         "size": disk.stat().st_size}],
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
    if crun:
        runtime = {"name": "crun", "executable": "/usr/bin/crun"}
        if image.crun_version:
            runtime["version"] = image.crun_version
        doc["semantic"]["container_runtime"] = runtime
        doc["semantic"]["software"].append({"name": "crun", "version": image.crun_version})
        doc["general"]["purposes"].append("containers")
    schema.validate(doc)
    return doc


def write_metadata(image: CloudImage, **kwargs) -> Path:
    """``metadata.json`` next to the disk, ready for ``gridvm catalogue register``."""
    path = image.directory / "metadata.json"
    path.write_text(json.dumps(cloud_metadata(image, **kwargs), indent=2) + "\n")
    return path
