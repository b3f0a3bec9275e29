"""A job's working directory as REST clients see it, wherever its files are right now.

* Before the job is staged (``job.workdir`` unset), uploads go into ``job.inputs_dir`` (site
  storage, kept across server restarts) and are copied into the guest at STAGINGIN.
* While the job's VM lives and the job is not finished, files come from the guest through
  the TSI (as the job's user).
* Once the job finished (or its files were kept and removed from the guest), or its VM is
  gone, files come from the site storage copy (``job.storage``) that stage-out made.

Every client path is confined to the job directory: ``..``, NUL, ``//`` (an absolute path
behind the storage root) are refused, and symbolic links are resolved (in the guest with
``readlink -f``, on the host with ``Path.resolve``) and refused when they lead outside.
A leading single ``/`` means the storage root, as in UNICORE's listings (``"/stdout"``).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet import threads

from base.errors import GridvmError
from base.reasons import Reason
from tsi_bridge.errors import TSICommandFailed

_MARK = "GRIDVM-FILES:"


class PathError(GridvmError, ValueError):
    """A path that leaves the job directory or is malformed (HTTP 400)."""

    reason = Reason.BAD_REQUEST


class FileMissing(GridvmError, KeyError):
    """No such file or directory (HTTP 404)."""

    reason = Reason.NOT_FOUND


class WrongKind(ValueError):
    """A directory where a file was needed, or the other way round (HTTP 406/400)."""

    reason = Reason.BAD_REQUEST


#: Linux's limits: bytes of one name in a path, and of a whole path.
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4095


def confine(path: str) -> str:
    """A client path as a relative POSIX path inside the job directory ("" = the root)."""
    if "\0" in path or "\n" in path:
        raise PathError("a path must not contain NUL or newline characters")
    if path.startswith("//"):
        raise PathError(f"absolute paths are not allowed: {path!r}")
    parts = [p for p in path.removeprefix("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"'..' is not allowed in a path: {path!r}")
    try:
        sizes = [len(part.encode()) for part in parts]
    except UnicodeEncodeError:
        raise PathError("a path must be Unicode text (no lone surrogates)") from None
    if sum(sizes) + len(sizes) > MAX_PATH_BYTES or max(sizes, default=0) > MAX_NAME_BYTES:
        raise PathError(f"a path is at most {MAX_PATH_BYTES} bytes long, each name in it at "
                        f"most {MAX_NAME_BYTES}")
    return "/".join(parts)


@dataclass(frozen=True)
class FileEntry:
    """One file or directory, ``path`` relative to the job directory."""

    path: str
    is_dir: bool
    size: int
    mtime: float
    permissions: str = ""
    owner: str = ""
    group: str = ""

    def describe(self) -> dict[str, Any]:
        return {"isDirectory": self.is_dir, "size": self.size,
                "lastAccessed": time.strftime("%Y-%m-%dT%H:%M:%S+0000",
                                              time.gmtime(self.mtime)),
                "owner": self.owner, "group": self.group, "permissions": self.permissions,
                "metadata": {}}


class FileStore:
    """The operations every location of a job directory supports (paths from confine())."""

    where = ""

    async def stat(self, rel: str) -> FileEntry: ...

    async def listdir(self, rel: str) -> list[FileEntry]: ...

    async def read(self, rel: str, offset: int, length: int) -> bytes: ...

    async def write(self, rel: str, data: bytes | BinaryIO) -> None:
        """Write a file from bytes or, streamed in chunks, from a readable binary file."""

    async def mkdir(self, rel: str) -> None: ...

    async def delete(self, rel: str) -> None: ...

    async def move(self, source: str, target: str, copy: bool) -> None: ...


class StorageFiles(FileStore):
    """After the job (or its VM): the site storage copy on this host."""

    where = "storage"

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, rel: str, must_exist: bool = True) -> Path:
        root = self.root.resolve()
        full = (self.root / rel) if rel else self.root
        probe = full
        while not probe.exists() and not probe.is_symlink() and probe != self.root:
            probe = probe.parent
        resolved = probe.resolve()
        if not (resolved == root or resolved.is_relative_to(root)):
            raise PathError(f"{rel!r} leads outside the job directory")
        if must_exist and not full.exists():
            if not rel:
                return full  # nothing copied yet: an empty directory
            raise FileMissing(f"no file {rel!r} in the job directory")
        return full

    @staticmethod
    def _entry(rel: str, path: Path) -> FileEntry:
        try:
            info = path.stat()
        except FileNotFoundError:
            return FileEntry(rel, True, 0, time.time(), "drwx------")
        return FileEntry(rel, stat.S_ISDIR(info.st_mode), info.st_size, info.st_mtime,
                         stat.filemode(info.st_mode))

    def _stat(self, rel):
        return self._entry(rel, self._path(rel))

    def _listdir(self, rel):
        path = self._path(rel)
        if not path.exists():
            return []
        if not path.is_dir():
            raise WrongKind(f"{rel} is not a directory")
        prefix = f"{rel}/" if rel else ""
        return [self._entry(prefix + child.name, child) for child in sorted(path.iterdir())
                if not child.name.endswith(".part")]

    def _read(self, rel, offset, length):
        path = self._path(rel)
        if path.is_dir() or not path.exists():
            raise WrongKind(f"{rel or '/'} is a directory")
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def _write(self, rel, data):
        if not rel:
            raise WrongKind("/ is a directory")
        path = self._path(rel, must_exist=False)
        if path.is_dir():
            raise WrongKind(f"{rel} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path(rel, must_exist=False)  # parents created: check again
        temporary = path.with_name(path.name + ".part")
        if isinstance(data, bytes | bytearray):
            temporary.write_bytes(data)
        else:
            with temporary.open("wb") as handle:
                shutil.copyfileobj(data, handle, 1 << 20)
        os.replace(temporary, path)

    def _mkdir(self, rel):
        path = self._path(rel, must_exist=False)
        if path.exists() and not path.is_dir():
            raise WrongKind(f"{rel} is a file")
        path.mkdir(parents=True, exist_ok=True)

    def _delete(self, rel):
        if not rel:
            raise PathError("the job directory itself cannot be deleted")
        path = self._path(rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    def _move(self, source, target, copy):
        src = self._path(source)
        dst = self._path(target, must_exist=False)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        else:
            os.replace(src, dst)

    async def stat(self, rel):
        return await threads.deferToThread(self._stat, rel)

    async def listdir(self, rel):
        return await threads.deferToThread(self._listdir, rel)

    async def read(self, rel, offset, length):
        return await threads.deferToThread(self._read, rel, offset, length)

    async def write(self, rel, data):
        await threads.deferToThread(self._write, rel, data)

    async def mkdir(self, rel):
        await threads.deferToThread(self._mkdir, rel)

    async def delete(self, rel):
        await threads.deferToThread(self._delete, rel)

    async def move(self, source, target, copy):
        await threads.deferToThread(self._move, source, target, copy)


class PendingFiles(StorageFiles):
    """Before stage-in: the uploaded inputs, in site storage (``job.inputs_dir``)."""

    where = "inputs"


class GuestFiles(FileStore):
    """While the job's VM lives: the job directory in the guest, through the TSI."""

    where = "guest"

    def __init__(self, tsi, workdir: str):
        self.tsi, self.workdir = tsi, workdir.rstrip("/")

    def _abs(self, rel: str) -> str:
        return f"{self.workdir}/{rel}" if rel else self.workdir

    async def _script(self, checked: list[str], then: str = "") -> None:
        """Refuse paths that resolve outside the job directory, then run ``then`` (all in
        one TSI call, as the job's user)."""
        q = shlex.quote
        lines = [f"cd {q(self.workdir)} 2>/dev/null || mkdir -p {q(self.workdir)} || exit 0",
                 f"cd {q(self.workdir)} || exit 0", "root=$(pwd -P)"]
        for rel in checked:
            lines += [
                f"p={q(rel or '.')}",
                'while [ ! -e "$p" ] && [ ! -L "$p" ] && [ "$p" != . ]; do p=$(dirname -- "$p");'
                " done",
                'r=$(readlink -f -- "$p" 2>/dev/null)',
                # removed meanwhile (the runner tidies up after stage-out): not "outside"
                f'[ -d "$root" ] || {{ echo "{_MARK}GONE"; exit 0; }}',
                f'case "$r" in "$root"|"$root"/*) ;; *) echo "{_MARK}OUTSIDE {rel}"; exit 0;;'
                " esac",
            ]
        if then:
            lines.append(f"( {then} ) 2>&1 || {{ echo \"{_MARK}ERROR\"; exit 0; }}")
        lines.append(f'echo "{_MARK}OK"')
        output = await self.tsi.execute_script("\n".join(lines) + "\n")
        for line in output.splitlines():
            if line.startswith(f"{_MARK}GONE"):
                raise FileMissing("the job directory left the guest meanwhile")
            if line.startswith(f"{_MARK}OUTSIDE"):
                raise PathError(f"{line.split(' ', 1)[1]!r} leads outside the job directory")
            if line.startswith(f"{_MARK}ERROR"):
                detail = " ".join(x for x in output.splitlines() if not x.startswith(_MARK))
                raise WrongKind(detail.strip() or "the operation failed in the guest")
        if f"{_MARK}OK" not in output:
            raise TSICommandFailed(f"unexpected answer from the guest: {output[-200:]!r}")

    def _entry(self, info) -> FileEntry:
        rel = info.path[len(self.workdir) + 1:] if info.path.startswith(
            self.workdir + "/") else ""
        return FileEntry(rel, info.is_dir, info.size, info.mtime, info.permissions,
                         info.owner, info.group)

    async def stat(self, rel):
        await self._script([rel])
        found = await self.tsi.ls(self._abs(rel), "A")
        if not found:
            if not rel:
                return FileEntry("", True, 0, time.time(), "drwx------")
            raise FileMissing(f"no file {rel!r} in the job directory")
        entry = self._entry(found[0])
        return FileEntry(rel, entry.is_dir, entry.size, entry.mtime, entry.permissions,
                         entry.owner, entry.group)

    async def listdir(self, rel):
        entry = await self.stat(rel)
        if not entry.is_dir:
            raise WrongKind(f"{rel} is not a directory")
        return [self._entry(i) for i in await self.tsi.ls(self._abs(rel), "N")]

    async def read(self, rel, offset, length):
        entry = await self.stat(rel)
        if entry.is_dir:
            raise WrongKind(f"{rel or '/'} is a directory")
        pieces, end = [], min(offset + length, entry.size)
        while offset < end:
            piece = await self.tsi.get_file_chunk(self._abs(rel), offset,
                                                  min(end - offset, 4 << 20))
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    async def write(self, rel, data):
        if not rel:
            raise WrongKind("/ is a directory")
        parent = posixpath.dirname(rel)
        await self._script([rel], f"mkdir -p -- {shlex.quote(parent or '.')}"
                                  f" && test ! -d {shlex.quote(rel)}")
        if isinstance(data, bytes | bytearray):
            await self.tsi.write_file(self._abs(rel), data)
        else:
            await self.tsi.upload(data, self._abs(rel))

    async def mkdir(self, rel):
        await self._script([rel], f"mkdir -p -- {shlex.quote(rel or '.')}")

    async def delete(self, rel):
        if not rel:
            raise PathError("the job directory itself cannot be deleted")
        await self.stat(rel)
        await self._script([rel], f"rm -rf -- {shlex.quote(rel)}")

    async def move(self, source, target, copy):
        await self.stat(source)
        q = shlex.quote
        command = "cp -R" if copy else "mv -f"
        parent = posixpath.dirname(target) or "."
        await self._script([source, target], f"mkdir -p -- {q(parent)} && "
                                             f"{command} -- {q(source)} {q(target)}")


@dataclass
class JobFiles:
    """Picks where a job's directory is right now; ``targets`` finds a live target system."""

    job: Any  # target_system.jobs.Job
    targets: Callable[[str], Any]

    def store(self) -> FileStore:
        job = self.job
        if job.workdir is None and not job.state.terminal:
            return PendingFiles(job.inputs_dir)
        target = None
        if job.instance_id:
            with contextlib.suppress(KeyError):
                target = self.targets(job.instance_id)
        if (job.workdir and target is not None and target.usable and target.tsi is not None
                and not job.finished.called and not job.kept):
            return GuestFiles(target.tsi, job.workdir)
        return StorageFiles(job.storage)
