"""Run a CONTAINER job's OCI image with the guest's OCI runtime (crun or runc).

This file runs inside the guest, as the job's user, on the standard library alone: the site
stages it next to the container archive (``target_system.containers``) and the job script
calls it.  It

1. checks the archive's sha512 (the repository's), then unpacks its layers once per
   instance into ``<cache>/<sha512>/rootfs`` (whiteouts applied, every path kept inside the
   root, devices skipped; bounded in members and bytes);
2. refuses an image for another architecture;
3. writes an OCI runtime ``config.json`` (a rootless one: a user namespace mapping the job's
   uid and gid onto themselves, the shared root file system read-only, the job's working
   directory bound read-write at the same path and made the current directory, the job's
   memory as RLIMIT_AS, its CPUs as the CPU affinity) and runs the command through the
   runtime, so its exit code, stdout and stderr are the job's.

When the container cannot start, it writes why into ``UNICORE_CONTAINER_FAILED`` in the
working directory and exits with :data:`SETUP_FAILED`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import posixpath
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import uuid

SETUP_FAILED = 125
FAILURE_FILE = "UNICORE_CONTAINER_FAILED"
MAX_MEMBERS = 500_000
MAX_BYTES = 16 << 30
MAX_JSON = 4 << 20
MAX_SYMLINKS = 40
#: OCI architecture names by ``platform.machine()``
OCI_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
                     "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerFailed(Exception):
    """The container cannot run; the message says why."""


# ------------------------------------------------------------------------- the image -------

def sha512_of(path: str) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OciArchive:
    """An OCI image layout packed in one tar file (``oci-archive``)."""

    def __init__(self, path: str) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members = {posixpath.normpath(m.name.lstrip("/")): m
                            for m in self.tar.getmembers()}
        except (OSError, tarfile.TarError) as err:
            raise ContainerFailed(f"not an OCI archive: {err}") from None

    def close(self) -> None:
        self.tar.close()

    def blob(self, descriptor):
        digest = str(descriptor.get("digest", "")) if isinstance(descriptor, dict) else ""
        algorithm, _, hex_digest = digest.partition(":")
        member = self.members.get(f"blobs/{algorithm}/{hex_digest}")
        if member is None or not member.isfile() or not hex_digest.isalnum():
            raise ContainerFailed(f"the archive has no blob {digest!r}")
        return self.tar.extractfile(member)

    def json(self, name_or_descriptor) -> dict:
        if isinstance(name_or_descriptor, str):
            member = self.members.get(name_or_descriptor)
            if member is None or not member.isfile():
                raise ContainerFailed(f"the archive has no {name_or_descriptor} "
                                      f"(not an OCI image layout)")
            source = self.tar.extractfile(member)
        else:
            source = self.blob(name_or_descriptor)
        data = source.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ContainerFailed("an OCI document of the archive is too large")
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise ContainerFailed(f"an OCI document of the archive is not JSON: {err}") from None
        if not isinstance(doc, dict):
            raise ContainerFailed("an OCI document of the archive is not an object")
        return doc

    def manifest(self, architecture: str) -> dict:
        """The image manifest (from a nested index, the one for ``architecture``)."""
        doc = self.json("index.json")
        for _depth in range(4):
            descriptors = [d for d in _list(doc.get("manifests")) if isinstance(d, dict)]
            if not descriptors:
                raise ContainerFailed("the archive's index lists no manifest")
            chosen = next((d for d in descriptors if isinstance(d.get("platform"), dict)
                           and d["platform"].get("architecture") == architecture),
                          descriptors[0])
            doc = self.json(chosen)
            if chosen.get("mediaType", doc.get("mediaType")) != INDEX and "layers" in doc:
                return doc
        raise ContainerFailed("the archive's indexes nest too deep")


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _resolve(root: str, relative: str, *, follow_last: bool) -> str:
    """The host path of ``relative`` inside ``root``, its symbolic links followed as the
    container would see them (absolute ones from ``root``), never leaving ``root``."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here) and (parts or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise ContainerFailed(f"too many symbolic links in {relative}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class Unpacker:
    """Applies image layers to a root directory, in order."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.members = 0
        self.bytes = 0

    def layer(self, fileobj) -> None:
        try:
            with tarfile.open(fileobj=fileobj, mode="r|*") as layer:
                for member in layer:
                    self._count(member)
                    self._apply(layer, member)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ContainerFailed(f"a layer cannot be unpacked: {err}") from None

    def _count(self, member: tarfile.TarInfo) -> None:
        self.members += 1
        self.bytes += max(member.size, 0)
        if self.members > MAX_MEMBERS or self.bytes > MAX_BYTES:
            raise ContainerFailed(f"the image is too large (over {MAX_MEMBERS} files or "
                                  f"{MAX_BYTES >> 30} GiB)")

    def _apply(self, layer: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = posixpath.normpath("/" + member.name).lstrip("/")
        if not name or name == ".":
            return
        parent_rel, base = posixpath.split(name)
        parent = _resolve(self.root, parent_rel, follow_last=True)
        if base == ".wh..wh..opq":  # opaque directory: nothing of the lower layers
            if os.path.isdir(parent):
                for entry in os.listdir(parent):
                    _remove(os.path.join(parent, entry))
            return
        if base.startswith(".wh."):
            _remove(os.path.join(parent, base[4:]))
            return
        os.makedirs(parent, exist_ok=True)
        target = os.path.join(parent, base)
        if member.isdir():
            if not os.path.isdir(target) or os.path.islink(target):
                _remove(target)
                os.mkdir(target)
            os.chmod(target, (member.mode & 0o777) | stat.S_IRWXU)
            return
        _remove(target)
        if member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            source = _resolve(self.root, member.linkname.lstrip("/"), follow_last=False)
            if os.path.isfile(source) and not os.path.islink(source):
                os.link(source, target)
        elif member.isfile():
            source = layer.extractfile(member)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.chmod(target, (member.mode & 0o777) | stat.S_IRUSR)
        # devices and FIFOs: a rootless runtime cannot make them; /dev is the runtime's


def unpack(archive_path: str, expected_sha512: str, directory: str, architecture: str) -> dict:
    """The image unpacked into ``directory/rootfs`` (once: later calls read its config);
    returns the image's OCI config."""
    config_path = os.path.join(directory, "image-config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            return json.load(f)
    found = sha512_of(archive_path)
    if found != expected_sha512:
        raise ContainerFailed(f"the staged archive's sha512 is {found[:16]}…, the "
                              f"repository's {expected_sha512[:16]}…")
    work = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "rootfs"))
    archive = OciArchive(archive_path)
    try:
        manifest = archive.manifest(architecture)
        config = archive.json(manifest.get("config") or {})
        unpacker = Unpacker(os.path.join(work, "rootfs"))
        for descriptor in _list(manifest.get("layers")):
            unpacker.layer(archive.blob(descriptor))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        archive.close()
    with open(os.path.join(work, "image-config.json"), "w") as f:
        json.dump(config, f)
    os.rename(work, directory)  # atomic: a half-unpacked image never has this name
    return config


def check_architecture(config: dict, machine: str) -> None:
    wanted = OCI_ARCHITECTURES.get(machine, machine)
    found = config.get("architecture")
    if found and found != wanted:
        raise ContainerFailed(f"the container image is for {found}, this instance is "
                              f"{wanted} ({machine})")


# ------------------------------------------------------------------------- the run ---------

def runtime_config(*, rootfs: str, workdir: str, args: list[str], env: dict[str, str],
                   uid: int, gid: int, memory_mib: int | None,
                   binds: tuple[str, ...] = ()) -> dict:
    """A rootless OCI runtime configuration for one job; ``binds``: the instance's paths
    seen read-only at the same place inside (a cluster node's peer files, /etc/hosts)."""
    rlimits = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    if memory_mib:
        limit = memory_mib << 20
        rlimits.append({"type": "RLIMIT_AS", "hard": limit, "soft": limit})
    options = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": uid, "gid": gid}, "args": args,
            "env": [f"{k}={v}" for k, v in env.items()], "cwd": workdir,
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable",
                                              "permitted", "ambient")},
            "rlimits": rlimits, "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "container",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": [*options, "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": options},
            {"destination": "/sys", "type": "none", "source": "/sys",
             "options": ["rbind", *options, "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": workdir, "type": "none", "source": workdir,
             "options": ["rbind", "rw", "nosuid", "nodev"]},
            *({"destination": path, "type": "none", "source": path,
               "options": ["rbind", "ro", *options]} for path in binds),
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")],
            "uidMappings": [{"containerID": uid, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": gid, "hostID": gid, "size": 1}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def container_environment(config: dict, names: list[str], workdir: str) -> dict[str, str]:
    """The image's Env, then the job's variables (``names``, from this process)."""
    env = {"PATH": DEFAULT_PATH}
    image = config.get("config")
    for item in _list(image.get("Env") if isinstance(image, dict) else None):
        key, sep, value = str(item).partition("=")
        if sep:
            env[key] = value
    env.update({"HOME": workdir, "TERM": "dumb"})
    env.update({name: os.environ[name] for name in names if name in os.environ})
    return env


def limit_cpus(cpus: int | None) -> None:
    """The job's CPUs as this process's CPU affinity (the runtime and container inherit it)."""
    if not cpus:
        return
    available = sorted(os.sched_getaffinity(0))
    if cpus < len(available):
        os.sched_setaffinity(0, available[:cpus])


def run(runtime: str, state: str, bundle: str, name: str) -> int:
    """The runtime in the foreground; SIGTERM/SIGINT are passed on to it."""
    process = subprocess.Popen([runtime, "--root", state, "run", "--bundle", bundle, name])

    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = process.wait()
    subprocess.run([runtime, "--root", state, "delete", "--force", name],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return code if code >= 0 else 128 - code


def mount_points(rootfs: str, paths: list[str]) -> tuple[str, ...]:
    """The ``paths`` of the instance that exist, each with its mount point made in the
    container's root (a directory, or an empty file for a file)."""
    found = []
    for path in paths:
        if not os.path.isabs(path) or not os.path.exists(path):
            continue
        target = _resolve(rootfs, path, follow_last=True)
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "a"):
                pass
        found.append(path)
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridvm-container")
    parser.add_argument("--archive", required=True)
    parser.add_argument("--sha512", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--runtime", default="/usr/bin/crun")
    parser.add_argument("--cpus", type=int)
    parser.add_argument("--memory-mib", type=int)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--bind-ro", action="append", default=[])
    parser.add_argument("command", nargs="+")
    opts = parser.parse_args(argv)
    workdir = os.path.realpath(opts.workdir)
    try:
        os.makedirs(opts.cache, exist_ok=True)
        directory = os.path.join(opts.cache, opts.sha512[:64])
        machine = platform.machine()
        with open(f"{directory}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one unpack per image, however many jobs
            config = unpack(opts.archive, opts.sha512, directory,
                            OCI_ARCHITECTURES.get(machine, machine))
        check_architecture(config, machine)
        rootfs = os.path.join(directory, "rootfs")
        os.makedirs(_resolve(rootfs, workdir, follow_last=True), exist_ok=True)
        binds = mount_points(rootfs, opts.bind_ro)
        name = f"gridvm-{uuid.uuid4().hex[:12]}"
        bundle = os.path.join(opts.cache, "run", name)
        os.makedirs(bundle)
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(runtime_config(
                rootfs=rootfs, workdir=workdir, args=opts.command,
                env=container_environment(config, opts.env, workdir), uid=os.getuid(),
                gid=os.getgid(), memory_mib=opts.memory_mib, binds=binds), f)
    except (ContainerFailed, OSError) as err:
        message = f"the container cannot run: {err}"
        print(f"gridvm-container: {message}", file=sys.stderr)
        with contextlib.suppress(OSError), open(os.path.join(workdir, FAILURE_FILE), "w") as f:
            f.write(message + "\n")
        return SETUP_FAILED
    limit_cpus(opts.cpus)
    try:
        return run(opts.runtime, os.path.join(opts.cache, "state"), bundle, name)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
