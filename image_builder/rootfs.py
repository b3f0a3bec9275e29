"""Assemble a guest root directory from extracted Debian packages.

The result is small on purpose: the guest needs busybox, python3 with its standard library,
bash for UNICORE job scripts, the kernel modules it loads, and the gridvm TSI agent.
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from image_builder.errors import BuildError

#: Kernel modules the guest loads (their dependencies are added in load order).
GUEST_MODULES = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio-rng", "virtio_console", "isofs",
    "virtio_balloon",  # free page reporting: pages the guest frees go back to the host
)
#: The subset the disk loader needs to find its root disk, and for a file system of its
#: kind (ext4 is built into the cloud kernel).
LOADER_MODULES = ("virtio_pci", "virtio_blk")
ROOT_FS_MODULES = {"ext4": (), "erofs": ("erofs", "overlay")}

#: Parts of the Python standard library a TSI agent never uses.
PYTHON_PRUNE = (
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "unittest/test", "distutils/tests", "ctypes/test", "sqlite3/test",
    "config-3.11-x86_64-linux-gnu",
)
#: Debian's sitecustomize: it installs apport's exception hook, and there is no apport in the
#: guest (its stdlib link points at /etc: compiled on the build host, it would be the host's).
PYTHON_PRUNE_FILES = ("usr/lib/python3.11/sitecustomize.py", "etc/python3.11/sitecustomize.py")
PRUNE_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
              "usr/share/lintian", "usr/share/bash-completion", "usr/share/menu")
#: glibc's iconv modules for legacy character sets (8 MiB of guest RAM in an initramfs):
#: nothing in gridvm's own guest calls iconv (Python has its own codecs; UTF-8 and ASCII
#: are built into glibc), so they go unless a recipe adds packages that might.
CHARSET_MODULES = "usr/lib/x86_64-linux-gnu/gconv"


def guest_file(name: str) -> bytes:
    return resources.files("image_builder.guest").joinpath(name).read_bytes()


def module_load_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Relative module paths in an order ``insmod`` accepts (dependencies first).

    ``modules_dir`` is ``lib/modules/<version>`` with a ``modules.dep`` written by depmod.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.removesuffix(".ko").replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise BuildError(f"kernel module {name} not found in {modules_dir.name}")
        visit(path)
    return order


def run_depmod(busybox: Path, root: Path, kernel_version: str) -> None:
    subprocess.run([str(busybox), "depmod", "-b", str(root), kernel_version],
                   check=True, capture_output=True)


def install_busybox(root: Path) -> None:
    """Links for every busybox applet that no package provides as a real program."""
    busybox = root / "bin" / "busybox"
    applets = subprocess.run([str(busybox), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(busybox, link.parent))
    (root / "bin" / "sh").unlink(missing_ok=True)
    (root / "bin" / "sh").symlink_to("busybox")


def prune(root: Path, *, keep_charsets: bool = False) -> None:
    for rel in (*PRUNE_DIRS, *(() if keep_charsets else (CHARSET_MODULES,))):
        shutil.rmtree(root / rel, ignore_errors=True)
    stdlib = root / "usr/lib/python3.11"
    for rel in PYTHON_PRUNE:
        shutil.rmtree(stdlib / rel, ignore_errors=True)
    for rel in PYTHON_PRUNE_FILES:
        (root / rel).unlink(missing_ok=True)
    for codec in (stdlib / "lib-dynload").glob("_codecs_*"):  # CJK codecs
        codec.unlink()
    for cache in root.rglob("__pycache__"):
        shutil.rmtree(cache)


def install_python(root: Path) -> None:
    """``python3`` on PATH and the standard library as sourceless bytecode.

    Debian ships no bytecode; compiling in the guest would cost seconds of emulated time on
    every boot.  Any Python 3.11 writes the same bytecode format.  The sources go (9 MiB of
    guest RAM in an initramfs root): a traceback then names file and line without the
    source text, and the agent logs exceptions by type and message anyway.
    """
    (root / "usr/bin/python3").unlink(missing_ok=True)
    (root / "usr/bin/python3").symlink_to("python3.11")
    compile_sourceless(root / "usr/lib/python3.11", "the guest's Python standard library")


def compile_sourceless(directory: Path, what: str) -> None:
    """Every ``.py`` below ``directory`` replaced by its legacy ``.pyc`` beside it (what
    Python imports when no source is there)."""
    if not compileall.compile_dir(directory, quiet=2, workers=0, legacy=True):
        raise BuildError(f"compiling {what} failed")
    for source in directory.rglob("*.py"):
        if source.with_suffix(".pyc").is_file():
            source.unlink()


def install_agent(root: Path, agent_package: Path) -> None:
    """Copy the TSI agent package (stdlib-only modules) into /opt/gridvm/lib, as sourceless
    bytecode."""
    target = root / "opt/gridvm/lib" / agent_package.name
    shutil.copytree(agent_package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compile_sourceless(target, "the TSI agent")


def install_system_files(root: Path, kernel_version: str, modules: list[str]) -> None:
    etc = root / "etc"
    (etc / "gridvm").mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "gridvm:x:1000:1000:gridvm jobs:/home/gridvm:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\ngridvm:x:1000:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text("gridvm\n")
    (etc / "hosts").write_text("127.0.0.1 localhost gridvm\n")
    (etc / "inittab").write_bytes(guest_file("inittab"))
    for name in ("rcS", "agent"):
        path = etc / "gridvm" / name
        path.write_bytes(guest_file(name))
        path.chmod(0o755)
    (etc / "gridvm" / "modules").write_text("".join(f"{m}\n" for m in modules))
    (etc / "gridvm" / "kernel-version").write_text(kernel_version + "\n")
    for rel in ("proc", "sys", "dev", "run", "tmp", "root", "home/gridvm/jobs", "var/lib/gridvm"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    init = root / "init"
    init.unlink(missing_ok=True)
    init.symlink_to("bin/busybox")  # busybox init: reads /etc/inittab, reaps orphans


def build_loader(busybox: Path, modules_dir: Path, target: Path, root_fs: str = "ext4") -> None:
    """A tiny initramfs root that mounts the disk whose serial is gridvm-root: ``ext4``
    writable, or ``erofs`` read-only under a tmpfs overlay."""
    (target / "bin").mkdir(parents=True)
    shutil.copy2(busybox, target / "bin" / "busybox")
    for applet in ("sh", "mount", "umount", "insmod", "cat", "mkdir", "usleep", "switch_root",
                   "poweroff"):
        (target / "bin" / applet).symlink_to("busybox")
    for rel in ("proc", "sys", "dev", "newroot", "modules"):
        (target / rel).mkdir(exist_ok=True)
    order = module_load_order(modules_dir, (*LOADER_MODULES, *ROOT_FS_MODULES[root_fs]))
    for rel in order:
        shutil.copy2(modules_dir / rel, target / "modules" / Path(rel).name)
    (target / "rootfs").write_text(root_fs + "\n")
    (target / "modules" / "order").write_text("".join(f"{Path(r).name}\n" for r in order))
    init = target / "init"
    init.write_bytes(guest_file("loader-init"))
    init.chmod(0o755)
