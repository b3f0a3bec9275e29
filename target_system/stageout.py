"""Stage-out: a job directory in the guest copied into its site-storage directory.

* With our agent, one ``GRIDVM_GETDIRECTORY`` tar stream (regular files, directories and
  links that stay inside; the agent skips and reports the rest) into a temporary file beside
  the storage directory, extracted member by member with tarfile's ``data`` filter (no
  absolute names, no ``..``, no links out, no devices, no set-id bits); a member the filter
  refuses is noted and the others are kept.  Asked to (``then_remove``), the agent removes
  the directory in the same exchange once the stream is complete.
* With a TSI that does not know that command (the official UNICORE TSI), file by file: LS,
  then GETFILECHUNK per regular file, several at once on idle workers; entries that are not
  regular files are skipped, a file that fails is noted.

Only a failure of the whole transfer (the TSI lost, the directory unreadable) raises; what
happened to single files comes back as notes for the job's log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from twisted.internet import defer, threads

from tsi_bridge import protocol
from tsi_bridge.errors import TSICommandFailed

#: Files copied from the guest at once on the file-by-file path (at most the idle workers).
PARALLEL = 4


@dataclass
class StageOutResult:
    """Files and bytes kept in site storage, and one note per file that was not."""

    files: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)
    streamed: bool = False
    #: the guest's free space (DF figures) once the agent removed the directory after
    #: streaming it (``then_remove``); None when the directory is still there
    removed: dict[str, int] | None = None


async def stage_out(tsi, workdir: str, storage: Path, then_remove: bool = False
                    ) -> StageOutResult:
    """Copy ``workdir`` (in the guest) into ``storage``; streamed when the TSI can, and
    then removed from the guest in the same exchange if ``then_remove`` (see
    ``StageOutResult.removed``: only when streamed)."""
    storage.mkdir(parents=True, exist_ok=True)
    if tsi.streams is not False:
        try:
            return await _streamed(tsi, workdir, storage, then_remove)
        except TSICommandFailed:
            if tsi.streams is not False:  # our agent failed it: a real failure
                raise
    return await _file_by_file(tsi, workdir, storage)


async def _streamed(tsi, workdir: str, storage: Path, then_remove: bool) -> StageOutResult:
    archive = storage.with_name(f".{storage.name}.stageout.tar")
    try:
        received = await tsi.get_directory(workdir, str(archive), then_remove=then_remove)
        result = await threads.deferToThread(extract_archive, archive, storage)
        result.removed = received.removed
    finally:
        await threads.deferToThread(_remove, archive)
    result.notes[:0] = [f"not copied: {name} ({detail})" if kind == "SKIPPED"
                        else f"{kind.lower()}: {name} ({detail})"
                        for kind, name, detail in received.problems]
    result.streamed = True
    return result


def extract_archive(archive: Path, destination: Path) -> StageOutResult:
    """Extract ``archive`` into ``destination`` with the ``data`` filter, member by member;
    whatever is in the way of a member (from an earlier run) is replaced."""
    result = StageOutResult()
    root = destination.resolve()
    with tarfile.open(archive, "r:", encoding="utf-8", errors="surrogateescape") as tar:
        for member in tar:
            name = protocol.escape_name(os.fsencode(member.name))
            try:
                _clear_way(root, member)
                tar.extract(member, root, filter="data")
            except (tarfile.TarError, OSError) as err:
                result.notes.append(f"not kept: {name} ({err})")
                continue
            if member.isfile():
                result.files += 1
                result.bytes += member.size
    return result


def _clear_way(root: Path, member: tarfile.TarInfo) -> None:
    """Remove what an earlier run left where ``member`` goes (a link is removed, never
    followed), if that place is inside ``root``; the filter judges the member itself."""
    parts = PurePosixPath(member.name.lstrip("/")).parts
    if not parts or ".." in parts:
        return
    target = root.joinpath(*parts)
    if not os.path.lexists(target):
        return
    parent = target.parent.resolve()
    if not (parent == root or parent.is_relative_to(root)):
        return
    if target.is_symlink():
        target.unlink()
    elif target.is_dir():
        if not member.isdir():
            shutil.rmtree(target)
    elif target.exists():
        target.unlink()


#: Prints (NUL-terminated) every symbolic link below the current directory that leads
#: outside it: LS shows a link as its target, so this is how the file-by-file path sees them.
_LINKS_OUT = ("root=$(pwd -P) && find . -type l -print0 | while IFS= read -r -d '' p; do "
              'r=$(readlink -f -- "$p"); case "$r" in "$root"/*) ;; *) printf "%s\\0" "$p";; '
              "esac; done")


async def _links_out(tsi, workdir: str) -> set[str]:
    """Relative paths of the links out, spelled as LS spells them (CR/LF as ``?``)."""
    try:
        output = await tsi.execute_script(f"cd {shlex.quote(workdir)} && {_LINKS_OUT}")
    except TSICommandFailed:
        return set()
    return {name.removeprefix("./").replace("\n", "?").replace("\r", "?")
            for name in output.split("\0") if name.strip()}


async def _file_by_file(tsi, workdir: str, storage: Path) -> StageOutResult:
    result = StageOutResult()
    root = storage.resolve()
    wanted = []
    links_out = await _links_out(tsi, workdir)
    for entry in await tsi.ls(workdir, "R"):
        if entry.is_dir or not entry.path.startswith(workdir + "/"):
            continue
        rel = entry.path[len(workdir) + 1:]
        if rel in links_out:
            result.notes.append(f"not copied: {rel} (symbolic link to outside the job "
                                "directory)")
            continue
        if entry.permissions and not entry.permissions.startswith("-"):
            result.notes.append(f"not copied: {rel} (not a regular file)")
            continue
        local = (storage / rel).resolve()
        if not local.is_relative_to(root):
            result.notes.append(f"not copied: {rel} (leads outside the job directory)")
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        wanted.append((entry.path, rel, local))

    async def copy(remote: str, rel: str, local: Path) -> None:
        try:
            size = await tsi.download(remote, str(local))
        except TSICommandFailed as err:
            result.notes.append(f"not copied: {rel} ({err.message})")
            return
        result.files += 1
        result.bytes += size

    # Several files at once on the workers already idle (making a worker costs more than
    # copying a small file on one): one at a time on a fresh instance.
    limit = defer.DeferredSemaphore(max(1, min(PARALLEL, tsi.idle_workers)))
    await defer.gatherResults(
        [limit.run(lambda *item: defer.Deferred.fromCoroutine(copy(*item)), *item)
         for item in wanted],
        consumeErrors=True).addErrback(lambda f: f.value.subFailure.raiseException())
    return result


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
