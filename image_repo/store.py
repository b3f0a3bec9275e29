"""Content-addressed blob store: files named by their sha512, written atomically.

Layout below the root::

    blobs/ab/cdef…      one file per sha512 (first two hex digits as a fan-out directory)
    tmp/<pid>-<rand>/   files being copied in and hashed (staging)
    uploads/<id>/       files of a registration waiting for the rest (kept across restarts;
                        image_repo.uploads owns them)
    pending/<id>        journal of blobs placed by a registration that has not committed yet
    lock                flock: placing or removing blobs and committing happen under it

A registration stages its files (copy + hash, outside the lock), then under the lock writes
a journal of the blobs it is about to place, moves them into place, commits the catalogue
and removes the journal.  If the process dies in between, :meth:`BlobStore.recover` (run
with a predicate telling which digests the catalogue references) removes the blobs of
uncommitted registrations and stale staging directories, so nothing stray stays behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image_repo.errors import ChecksumMismatch, ImageUnavailable

CHUNK = 1 << 20


@dataclass
class StagedBlob:
    """A file copied into the store's staging area and verified, not yet in place."""

    sha512: str
    size: int
    path: Path


class BlobStore:
    """Blobs addressed by sha512 below ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.pending = self.root / "pending"
        self.uploads = self.root / "uploads"
        for directory in (self.blobs, self.tmp, self.pending, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------

    def path(self, sha512: str) -> Path:
        return self.blobs / sha512[:2] / sha512[2:]

    def has(self, sha512: str) -> bool:
        return self.path(sha512).is_file()

    def verify(self, sha512: str) -> None:
        """Re-hash a stored blob; raises if it is missing or damaged."""
        path = self.path(sha512)
        if not path.is_file():
            raise ImageUnavailable(f"blob {sha512[:16]}… is missing from the store")
        digest, _ = _hash_file(path)
        if digest != sha512:
            raise ChecksumMismatch(f"blob {sha512[:16]}… is damaged: its sha512 is now "
                                   f"{digest[:16]}…")

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private staging directory, removed when the block ends."""
        directory = self.open_staging()
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def open_staging(self) -> Path:
        """A new private staging directory that outlives a block (the caller removes it;
        :meth:`recover` removes it once this process is gone)."""
        directory = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        directory.mkdir()
        return directory

    def open_upload(self, upload_id: str) -> Path:
        """The directory of a registration waiting for files (its owner removes it)."""
        directory = self.uploads / upload_id
        directory.mkdir()
        return directory

    def _staged_here(self, source: Path) -> bool:
        resolved = source.resolve()
        return any(resolved.is_relative_to(area.resolve()) for area in (self.tmp, self.uploads))

    def stage(self, source: Path, staging: Path, expected_sha512: str, expected_size: int,
              where: str | None = None) -> StagedBlob:
        """Copy ``source`` into ``staging`` while hashing; check sha512 and size.

        ``where`` is the metadata path of the file's ref, named in a mismatch error.
        """
        target = staging / expected_sha512
        if self._staged_here(source):
            # already in a staging area of this store (a registration that arrived in
            # pieces): link it instead of copying, and hash what was linked
            os.link(source, target)
            actual, size = _hash_file(target)
        else:
            actual, size = _copy_hashed(source, target)
        if actual != expected_sha512:
            target.unlink()
            raise ChecksumMismatch(f"{source.name} has sha512 {actual[:16]}…, the metadata says "
                                   f"{expected_sha512[:16]}…", where)
        if size != expected_size:
            target.unlink()
            raise ChecksumMismatch(f"{source.name} has {size} bytes, the metadata says "
                                   f"{expected_size}", where)
        return StagedBlob(actual, size, target)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive store lock (across processes) for placing and removing blobs."""
        with (self.root / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def placing(self, staged: Iterable[StagedBlob]) -> Iterator[list[str]]:
        """Move staged blobs into place for one registration; call with the lock held.

        Yields the digests that were new.  If the block raises, those new blobs are removed
        again; if the process dies, the journal lets :meth:`recover` remove them.  The
        journal is removed when the block ends either way.
        """
        staged = [s for s in staged if not self.has(s.sha512)]
        journal = self.pending / uuid.uuid4().hex
        journal.write_text("".join(f"{s.sha512}\n" for s in staged))
        _fsync_dir(self.pending)
        placed: list[str] = []
        try:
            for blob in staged:
                target = self.path(blob.sha512)
                target.parent.mkdir(exist_ok=True)
                os.replace(blob.path, target)
                placed.append(blob.sha512)
            _fsync_dirs({self.path(d).parent for d in placed})
            yield placed
        except BaseException:
            for digest in placed:
                self.path(digest).unlink(missing_ok=True)
            raise
        finally:
            journal.unlink(missing_ok=True)

    def remove(self, digests: Iterable[str]) -> None:
        """Remove blobs (call with the lock held, after the catalogue dropped them)."""
        for digest in digests:
            self.path(digest).unlink(missing_ok=True)

    def recover(self, referenced: Callable[[str], bool]) -> list[str]:
        """Clean up after crashed registrations; returns the digests of removed blobs.

        ``referenced(sha512)`` tells whether the catalogue still needs a blob.
        """
        removed = []
        with self.locked():
            for journal in self.pending.iterdir():
                for digest in journal.read_text().split():
                    if self.has(digest) and not referenced(digest):
                        self.path(digest).unlink()
                        removed.append(digest)
                journal.unlink()
        for directory in self.tmp.iterdir():
            pid = directory.name.split("-", 1)[0]
            if not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(directory, ignore_errors=True)
        return removed

    def digests(self) -> Iterator[str]:
        """Every digest in the store (for consistency checks)."""
        for fan in self.blobs.iterdir():
            for blob in fan.iterdir():
                yield fan.name + blob.name


def _copy_hashed(source: Path, target: Path) -> tuple[str, int]:
    """Copy ``source`` to ``target`` (synced) while hashing; (sha512, size)."""
    digest = hashlib.sha512()
    size = 0
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest(), size


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha512()
    size = 0
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dirs(directories: Iterable[Path]) -> None:
    for directory in directories:
        _fsync_dir(directory)
