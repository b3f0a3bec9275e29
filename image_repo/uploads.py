"""Registrations that arrive in pieces: the metadata document first, then each file.

A creator registering over the network sends the document, then the files one by one.
:class:`Uploads` keeps each such *pending registration* with a private staging directory in
the store.  A file received is copied there while its sha512 is computed; a wrong size or
sha512 is refused (the pending registration stays, for another try).  When the last file has
verified, the registration commits through :meth:`ImageRepository.register` (atomic), and
only then is the image visible.  Nothing is visible before, whatever fails or disconnects.

Sending a document again is idempotent: an identical document (same content digest, same
metadata) finds the image registered from it, or the registration still pending for it.
Pending registrations expire (:meth:`Uploads.expire`).  They are kept in the catalogue's
database (``pending_uploads``) with the files received so far in the store's
``uploads/<id>/``, so a server restart loses none: the creator sends the missing files to
the same upload URL.  At the start, rows whose time is up or whose directory is gone, and
directories no row names, are removed.

Quota: the bytes of the distinct files of a user's images that are not deleted
(:meth:`ImageRepository.stored_bytes`), plus what their pending registrations still expect,
may not exceed ``quota_bytes`` (administrators are exempt).  A file the store holds already
costs nothing to register.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, select

from base.db import session_scope
from base.identity import Caller
from image_repo import access
from image_repo.errors import BadRequest, ChecksumMismatch, QuotaExceeded, UploadNotFound
from image_repo.models import PendingUploadRow
from image_repo.repository import KEPT_FIELDS, ImageRecord, ImageRepository
from image_repo.schema import ContentRef, ImageMetadata, validate
from image_repo.store import CHUNK
from image_repo.strict import to_json

#: origin fields computed from the content (compared through the content refs instead)
_DERIVED_ORIGIN = ("os_hash_algo", "os_hash_value", "size")


@dataclass
class PendingRegistration:
    """A validated document waiting for its files."""

    id: str
    caller: Caller
    document: dict[str, Any]  #: validated; registered as it is once the files are here
    key: str  #: digest of the comparable document: an identical re-send finds this one
    expected: dict[str, tuple[int, ContentRef]]  #: file name -> (index in content, ref)
    directory: Path
    expires: float  #: seconds since the epoch
    received: dict[str, Path] = field(default_factory=dict)
    committing: bool = False  #: every file is here; being registered now

    @property
    def missing(self) -> list[str]:
        return [name for name in self.expected if name not in self.received]

    @property
    def bytes_expected(self) -> int:
        return sum(ref.size for name, (_, ref) in self.expected.items()
                   if name not in self.received)

    @property
    def name(self) -> str:
        return self.document["general"]["name"]


@dataclass(frozen=True)
class Outcome:
    """What a step of a registration led to: the image (registered now, or found
    registered from the same document: ``existing``) or the registration still pending."""

    image: ImageRecord | None = None
    pending: PendingRegistration | None = None
    existing: bool = False


def comparable(meta: ImageMetadata, caller: Caller) -> dict[str, Any]:
    """A document as registering it would store it, without what the repository keeps:
    two documents with equal comparable forms register the same image."""
    doc = meta.to_dict()
    general = doc["general"]
    for key in KEPT_FIELDS:
        general.pop(key, None)
    general.setdefault("owner", caller.user)
    if caller.primary_group is not None:
        general.setdefault("group", caller.primary_group)
    general.setdefault("permissions", to_json(access.DEFAULT_PERMISSIONS))
    for key in _DERIVED_ORIGIN:
        doc["origin"].pop(key, None)
    return doc


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class Uploads:
    """The pending registrations of a site.  Thread-safe; the methods block (files are
    copied and hashed), so a server calls them in a thread."""

    def __init__(self, repository: ImageRepository, *, quota_bytes: int | None = None,
                 expiry_s: float = 3600.0, max_pending_per_user: int = 8,
                 clock: Callable[[], float] = time.time):
        self.repository = repository
        self.quota_bytes = quota_bytes
        self.expiry_s = expiry_s
        self.max_pending_per_user = max_pending_per_user
        self.clock = clock
        self._pending: dict[str, PendingRegistration] = {}
        self._lock = threading.Lock()  #: guards _pending
        self._registering = threading.Lock()  #: one commit or idempotence check at a time
        self._load()

    # -- starting ---------------------------------------------------------------------------

    def begin(self, document: ImageMetadata | Mapping[str, Any], caller: Caller) -> Outcome:
        """Accept a document: the image at once when the store holds every file, the image
        registered from an identical document, or a pending registration for the files."""
        self.expire()
        meta = self.repository.preview(document, caller)
        wanted = comparable(meta, caller)
        key = _digest(wanted)
        with self._registering:  # an identical document committing now is found, not redone
            found = self._registered(meta, caller, wanted)
            if found is not None:
                return Outcome(image=found, existing=True)
            expected = {ref.file: (i, ref) for i, ref in enumerate(meta.origin.content)
                        if not self.repository.store.has(ref.sha512)}
            if not expected:
                return Outcome(image=self.repository.register(meta, (), caller))
            return self._wait_for(meta, caller, key, expected)

    def _wait_for(self, meta: ImageMetadata, caller: Caller, key: str,
                  expected: dict[str, tuple[int, ContentRef]]) -> Outcome:
        """The pending registration of ``meta`` (a new one, or the one already waiting)."""
        with self._lock:
            for pending in self._pending.values():
                if pending.key == key and pending.caller.user == caller.user:
                    return Outcome(pending=pending, existing=True)
            mine = [p for p in self._pending.values() if p.caller.user == caller.user]
            if len(mine) >= self.max_pending_per_user:
                raise QuotaExceeded(f"you have {len(mine)} registrations waiting for files "
                                    f"already (the most there may be); finish or cancel one")
            self._check_quota(caller, mine, {ref.sha512: ref.size
                                             for _, ref in expected.values()})
            upload_id = uuid.uuid4().hex
            pending = PendingRegistration(
                id=upload_id, caller=caller, document=meta.to_dict(), key=key,
                expected=expected, directory=self.repository.store.open_upload(upload_id),
                expires=self.clock() + self.expiry_s)
            try:
                self._save(pending)
            except BaseException:
                shutil.rmtree(pending.directory, ignore_errors=True)
                raise
            self._pending[pending.id] = pending
        return Outcome(pending=pending)

    def _registered(self, meta: ImageMetadata, caller: Caller,
                    wanted: dict[str, Any]) -> ImageRecord | None:
        """The newest image of the name registered from a document like ``wanted``."""
        for record in reversed(self.repository.list(caller, name=meta.general.name)):
            if comparable(record.metadata, caller) == wanted:
                return record
        return None

    def check_quota(self, caller: Caller, needed: int) -> None:
        """QuotaExceeded unless ``needed`` more bytes fit in the caller's quota."""
        with self._lock:
            mine = [p for p in self._pending.values() if p.caller.user == caller.user]
        self._check_quota(caller, mine, {"": needed})

    def _check_quota(self, caller: Caller, mine: list[PendingRegistration],
                     new: dict[str, int]) -> None:
        if self.quota_bytes is None or caller.admin:
            return
        used = self.repository.stored_bytes(caller.user)
        waiting = sum(p.bytes_expected for p in mine)
        needed = sum(new.values())
        if used + waiting + needed > self.quota_bytes:
            raise QuotaExceeded(
                f"these files take {needed} bytes; with the {used} bytes of your images and "
                f"{waiting} bytes awaited by your other registrations that exceeds your image "
                f"store quota of {self.quota_bytes} bytes (limits.image_quota_mib)")

    # -- files ------------------------------------------------------------------------------

    def get(self, upload_id: str, caller: Caller) -> PendingRegistration:
        self.expire()
        with self._lock:
            pending = self._pending.get(upload_id)
        if pending is None or not (caller.admin or pending.caller.user == caller.user):
            raise UploadNotFound(f"no registration {upload_id} is waiting for files from "
                                 f"{caller.user} (finished, cancelled or expired?)")
        return pending

    def receive(self, upload_id: str, name: str, source: BinaryIO, length: int,
                caller: Caller) -> Outcome:
        """Take one file of a pending registration from ``source`` (``length`` bytes);
        when it was the last one, register the image.  A wrong size or sha512 raises
        ChecksumMismatch naming the file; the registration stays for another try."""
        pending = self.get(upload_id, caller)
        if name not in pending.expected:
            raise BadRequest(f"{name!r} is not a file this registration waits for (it waits "
                             f"for {', '.join(pending.missing) or 'nothing'})", "origin.content")
        index, ref = pending.expected[name]
        where = f"origin.content[{index}]"
        if length != ref.size:
            raise ChecksumMismatch(f"{name} has {length} bytes, the metadata says {ref.size}",
                                   where)
        part = pending.directory / f"{name}.{uuid.uuid4().hex[:8]}.part"
        digest, size = hashlib.sha512(), 0
        try:
            with part.open("wb") as writer:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    writer.write(chunk)
                    size += len(chunk)
                writer.flush()
                os.fsync(writer.fileno())
            if size != ref.size:
                raise ChecksumMismatch(f"{name} has {size} bytes, the metadata says "
                                       f"{ref.size}", where)
            if digest.hexdigest() != ref.sha512:
                raise ChecksumMismatch(f"{name} has sha512 {digest.hexdigest()[:16]}…, the "
                                       f"metadata says {ref.sha512[:16]}…", where)
            target = pending.directory / name
            part.replace(target)
        except FileNotFoundError:  # the staging directory went: expired or cancelled
            raise UploadNotFound(f"registration {upload_id} ended while {name} arrived"
                                 ) from None
        finally:
            part.unlink(missing_ok=True)
        with self._lock:
            if self._pending.get(upload_id) is not pending:  # expired or cancelled meanwhile
                raise UploadNotFound(f"registration {upload_id} ended while {name} arrived")
            pending.received[name] = target
            self._save(pending)
            if pending.missing:
                return Outcome(pending=pending)
            if pending.committing:
                raise UploadNotFound(f"registration {upload_id} is being registered by "
                                     "another request")
            pending.committing = True  # stays findable (by begin) until it is an image
        try:
            with self._registering:
                image = self.repository.register(pending.document, dict(pending.received),
                                                 pending.caller)
        finally:
            with self._lock:
                self._pending.pop(upload_id, None)
            self._forget([pending])
        return Outcome(image=image)

    # -- ending -----------------------------------------------------------------------------

    def cancel(self, upload_id: str, caller: Caller) -> None:
        pending = self.get(upload_id, caller)
        if pending.committing:
            raise BadRequest(f"registration {upload_id} has all its files and is being "
                             "registered: too late to cancel", "upload")
        self._discard([pending])

    def expire(self) -> list[str]:
        """Drop the pending registrations past their deadline; returns their ids."""
        now = self.clock()
        with self._lock:
            gone = [p for p in self._pending.values() if p.expires <= now and not p.committing]
        self._discard(gone)
        return [p.id for p in gone]

    def _discard(self, pendings: list[PendingRegistration]) -> None:
        with self._lock:
            for pending in pendings:
                self._pending.pop(pending.id, None)
        self._forget(pendings)

    def _forget(self, pendings: list[PendingRegistration]) -> None:
        """Remove the rows and directories of registrations that ended."""
        if not pendings:
            return
        with session_scope(self.repository._sessions) as session:
            session.execute(delete(PendingUploadRow).where(
                PendingUploadRow.id.in_([p.id for p in pendings])))
        for pending in pendings:
            shutil.rmtree(pending.directory, ignore_errors=True)

    # -- across restarts --------------------------------------------------------------------

    def _save(self, pending: PendingRegistration) -> None:
        caller = pending.caller
        with session_scope(self.repository._sessions) as session:
            session.merge(PendingUploadRow(
                id=pending.id, owner=caller.user,
                caller={"user": caller.user, "groups": list(caller.groups),
                        "vos": sorted(caller.vos), "admin": caller.admin},
                document=pending.document, key=pending.key,
                expected={name: index for name, (index, _ref) in pending.expected.items()},
                received=sorted(pending.received), expires=pending.expires))

    def _load(self) -> None:
        """Take back the registrations an earlier run left waiting; remove what is stale."""
        with session_scope(self.repository._sessions) as session:
            rows = list(session.scalars(select(PendingUploadRow)))
        now, stale = self.clock(), []
        for row in rows:
            pending = self._restored(row)
            if pending is None or pending.expires <= now:
                stale.append(row.id)
            else:
                self._pending[pending.id] = pending
        if stale:
            with session_scope(self.repository._sessions) as session:
                session.execute(delete(PendingUploadRow).where(PendingUploadRow.id.in_(stale)))
        for directory in self.repository.store.uploads.iterdir():
            if directory.name not in self._pending:
                shutil.rmtree(directory, ignore_errors=True)

    def _restored(self, row: PendingUploadRow) -> PendingRegistration | None:
        directory = self.repository.store.uploads / row.id
        if not directory.is_dir():
            return None
        try:
            content = validate(row.document).origin.content
            expected = {name: (index, content[index]) for name, index in row.expected.items()}
        except (BadRequest, IndexError, TypeError, ValueError):
            return None  # a document this version no longer reads: the creator starts again
        who = row.caller
        caller = Caller.of(who["user"], who["groups"], who["vos"], who["admin"])
        received = {name: directory / name for name in row.received
                    if name in expected and (directory / name).is_file()}
        return PendingRegistration(row.id, caller, row.document, row.key, expected,
                                   directory, row.expires, received)

    def pending(self) -> list[PendingRegistration]:
        with self._lock:
            return list(self._pending.values())
