"""The image repository: registration, versions, status, visibility, lookup and matching.

:class:`ImageRepository` ties the catalogue (SQLAlchemy, ``image_repo.models``) to the blob
store (``image_repo.store``).  Registration is atomic: files are copied and verified first,
then blobs are placed and the catalogue committed under the store lock; any failure (a wrong
checksum, a crash) leaves neither a catalogue record nor a stray blob.

Versions are immutable: only the repository-kept fields (status, updated, counters, ratings)
change after registration; anything else makes a new version that records its base.
Endorsements (``image_repo.trust``) are kept beside an image, not in its metadata: attaching
or withdrawing one changes neither the document nor the version.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session

from base.db import make_engine, migrate, session_factory, session_scope
from base.identity import Caller
from image_repo import access, layers, oci
from image_repo.errors import (
    BadRequest,
    ChecksumMismatch,
    ImageInUse,
    ImageNotFound,
    ImageUnavailable,
    NotAuthorized,
)
from image_repo.index import CatalogueIndex
from image_repo.matching import Matcher, MatchResult
from image_repo.models import (
    LAYER_BASE,
    ImageApplicationRow,
    ImageEndorsementRow,
    ImageFileRow,
    ImageLabelRow,
    ImageRatingRow,
    ImageRow,
    SequenceRow,
)
from image_repo.requirements import Requirements
from image_repo.schema import (
    NAME_PATTERN,
    ContentRef,
    Counters,
    ImageMetadata,
    Permissions,
    Rating,
    content_digest,
    merge_patch,
    validate,
)
from image_repo.store import BlobStore, StagedBlob
from image_repo.strict import to_json
from image_repo.trust import (
    Endorsement,
    ImageIdentity,
    StoredEndorsement,
    TrustPolicy,
    Verdict,
    check_endorsement,
    parse_fingerprint,
)
from image_repo.versions import image_version

#: status -> the statuses it may change to
TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"deprecated", "deleted"}),
    "deprecated": frozenset({"active", "deleted"}),
    "deleted": frozenset(),
}
#: general fields the repository keeps; a new version does not inherit them
KEPT_FIELDS = ("version", "status", "created", "updated", "counters", "ratings", "base_image")
_ID = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(NAME_PATTERN)
_CHUNK = 500

FileArg = str | Path
Files = Iterable[FileArg] | Mapping[str, FileArg]


@dataclass(frozen=True)
class ImageRecord:
    """One registered image version as the caller may see it."""

    id: str
    name: str
    version: int
    status: str
    owner: str
    group: str | None
    permissions: Permissions
    base_id: str | None
    created: datetime
    updated: datetime
    metadata: ImageMetadata
    deployments: int = 0
    exports: int = 0
    ratings: list[Rating] = field(default_factory=list)
    endorsements: list[StoredEndorsement] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``name:version``"""
        return f"{self.name}:{self.version}"

    @property
    def identity(self) -> ImageIdentity:
        """What an endorsement of this image is about: id, name, version, files' sha512."""
        return ImageIdentity(self.id, self.name, self.version,
                             {ref.file: ref.sha512 for ref in self.metadata.origin.content})

    def to_dict(self) -> dict[str, Any]:
        """The full metadata document, with the repository-kept fields filled in; beside it
        ``id`` and ``endorsements`` (not part of the document)."""
        meta = self.metadata.copy()
        general = meta.general
        general.status = self.status  # type: ignore[assignment]
        general.updated = _iso(self.updated)
        general.counters = Counters(deployments=self.deployments, exports=self.exports)
        general.ratings = list(self.ratings)
        doc = meta.to_dict()
        return {"id": self.id, **doc, "endorsements": [e.to_dict() for e in self.endorsements]}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(stamp: datetime) -> str:
    if stamp.tzinfo is None:  # SQLite hands back naive datetimes
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KeptIdentity:
    """What an imported image keeps from where it was registered first."""

    id: str
    version: int
    created: datetime
    base_id: str | None = None


@dataclass(frozen=True)
class BackingFile:
    """One base below a layered image: the base image's disk in the store."""

    image_id: str
    ref: str
    file: str
    sha512: str
    path: Path


@dataclass(frozen=True)
class _LayerBase:
    """The base a layer being registered names: its id, ``name:version``, disk, and how
    many images its chain has (1 for a base that is no layer itself)."""

    id: str
    ref: str
    disk: ContentRef
    depth: int


@dataclass
class _Prepared:
    """A validated registration waiting for its catalogue rows."""

    meta: ImageMetadata
    files: dict[str, Path]


class ImageRepository:
    """Catalogue + blob store.  Thread-safe; use one instance per process.

    ``database`` is an engine or a URL; ``store`` a :class:`BlobStore` or its root directory.
    The schema is upgraded to the newest alembic revision unless ``upgrade=False``.
    """

    def __init__(self, database: Engine | str, store: BlobStore | str | Path, *,
                 upgrade: bool = True, clock=_now):
        self.engine = make_engine(database) if isinstance(database, str) else database
        self.store = store if isinstance(store, BlobStore) else BlobStore(store)
        self._sessions = session_factory(self.engine)
        self._clock = clock
        if upgrade:
            migrate(self.engine)
        self._index = CatalogueIndex()
        self._matcher = Matcher()
        self.recover()

    def close(self) -> None:
        self.engine.dispose()

    # -- registration ------------------------------------------------------------------------

    def register(self, metadata: ImageMetadata | Mapping[str, Any], files: Files = (),
                 caller: Caller | None = None) -> ImageRecord:
        """Register one image; ``files`` are paths whose names match ``origin.content``.

        A content file may be left out when the store already holds its sha512.
        """
        if caller is None:
            raise BadRequest("a caller is needed to register an image")
        return self.register_many([(metadata, files)], caller)[0]

    def register_many(self, items: Sequence[tuple[ImageMetadata | Mapping[str, Any], Files]],
                      caller: Caller, *,
                      kept: Sequence[KeptIdentity] | None = None) -> list[ImageRecord]:
        """Register several images in one transaction: all of them or none.

        ``kept`` (one per item; bundle imports) keeps each image's id, version (above the
        newest of its name here), creation time and base (when that is here already).
        """
        prepared = [self._prepare(metadata, files) for metadata, files in items]
        bases = self._layer_bases(prepared, caller, kept)
        with self.store.staging() as staging:
            staged = self._stage(prepared, staging, bases)
            with self.store.locked(), session_scope(self._sessions) as session:
                records = self._insert(session, prepared, caller, kept)
                with self.store.placing(staged):  # new blobs go again if the commit fails
                    self._before_commit()
                    session.commit()
        return records

    @staticmethod
    def _kept_version(session: Session, keep: KeptIdentity, name: str,
                      before: dict | None) -> int:
        if not _ID.fullmatch(keep.id):
            raise BadRequest(f"expected 32 hex digits, got {keep.id!r}", "id")
        if session.get(ImageRow, keep.id) is not None:
            raise BadRequest(f"an image with id {keep.id} is in the catalogue already", "id")
        if before and keep.version <= before["version"]:
            raise BadRequest(f"{name} has version {before['version']} here already; "
                             f"{keep.version} cannot follow it", "general.version")
        return keep.version

    def _before_commit(self) -> None:
        """Hook between placing blobs and committing (tests interrupt registration here)."""

    def _prepare(self, metadata: ImageMetadata | Mapping[str, Any], files: Files, *,
                 need_files: bool = True) -> _Prepared:
        doc = metadata.to_dict() if isinstance(metadata, ImageMetadata) else metadata
        meta = validate(doc)
        general, origin = meta.general, meta.origin
        if general.status not in (None, "active"):
            raise BadRequest("a new image is 'active'; change its status after registration",
                             "general.status")
        if general.counters and (general.counters.deployments or general.counters.exports):
            raise BadRequest("is kept by the repository; leave it out", "general.counters")
        if general.ratings:
            raise BadRequest("is kept by the repository; leave it out", "general.ratings")
        given = _file_map(files)
        refs = meta.files
        for name in given:
            if name not in refs:
                listed = ", ".join(refs) or "none"
                raise BadRequest(f"file {name!r} is not listed (listed: {listed})",
                                 "origin.content")
        for i, ref in enumerate(origin.content):
            if need_files and ref.file not in given and not self.store.has(ref.sha512):
                raise BadRequest(f"no file given for {ref.file!r}, and the store does not hold "
                                 "its sha512", f"origin.content[{i}]")
        digest = content_digest(origin.content)
        size = sum(ref.size for ref in origin.content)
        if origin.os_hash_value is not None and origin.os_hash_value != digest:
            raise ChecksumMismatch(f"is {origin.os_hash_value[:16]}…, but the content refs give "
                                   f"{digest[:16]}…", "origin.os_hash_value")
        if origin.size is not None and origin.size != size:
            raise BadRequest(f"is {origin.size}, but the content files add up to {size}",
                             "origin.size")
        origin.os_hash_algo, origin.os_hash_value, origin.size = "sha512", digest, size
        return _Prepared(meta, given)

    def _stage(self, prepared: list[_Prepared], staging: Path,
               bases: Mapping[int, _LayerBase]) -> list[StagedBlob]:
        staged: dict[str, StagedBlob] = {}
        for index, item in enumerate(prepared):
            origin = item.meta.origin
            for i, ref in enumerate(origin.content):
                source = item.files.get(ref.file)
                where = f"origin.content[{i}]"
                if index in bases and ref.role == "disk":
                    blob = self._stage_layer(ref, source, bases[index], staging, where)
                    if blob is not None:
                        staged[blob.sha512] = blob
                    continue
                if source is None or ref.sha512 in staged:
                    continue
                blob = self.store.stage(source, staging, ref.sha512, ref.size, where=where)
                if ref.role == "disk" and layers.names_other_files(blob.path):
                    raise BadRequest(f"{ref.file} names a backing or data file; a layer on a "
                                     "registered image names it in origin.backing_image",
                                     where)
                if origin.content_type == "oci" and ref.role == "container":
                    oci.check_archive(blob.path, origin.architecture, where)
                staged[ref.sha512] = blob
            if index in bases:  # the layer's sha512 changed with its backing reference
                origin.os_hash_value = content_digest(origin.content)
                origin.size = sum(ref.size for ref in origin.content)
        return list(staged.values())

    # -- layered images ----------------------------------------------------------------------

    def _layer_bases(self, prepared: list[_Prepared], caller: Caller,
                     kept: Sequence[KeptIdentity] | None = None) -> dict[int, _LayerBase]:
        """The base of each layered image among ``prepared`` (by position), checked; their
        ``origin.backing_image`` becomes the base's id.  With ``kept`` (a bundle import) a
        base may be an earlier item of the same batch."""
        wanted = [(i, item) for i, item in enumerate(prepared)
                  if item.meta.origin.backing_image is not None]
        if not wanted:
            return {}
        earlier = {keep.id: i for i, keep in enumerate(kept or ())}
        bases: dict[int, _LayerBase] = {}
        with session_scope(self._sessions) as session:
            for index, item in wanted:
                named = item.meta.origin.backing_image
                if earlier.get(named, index) < index:
                    base = self._batch_base(prepared, bases, earlier[named], named)
                else:
                    base = self._layer_base(session, named, caller)
                item.meta.origin.backing_image = base.id
                bases[index] = base
        return bases

    @staticmethod
    def _batch_base(prepared: list[_Prepared], bases: dict[int, _LayerBase], position: int,
                    image_id: str) -> _LayerBase:
        """A base registered in the same batch, at ``position``."""
        meta = prepared[position].meta
        disk = _disk_ref(meta)
        label = f"{meta.general.name}:{meta.general.version}"
        if meta.origin.content_type != "qcow2" or disk is None:
            raise BadRequest(f"{label} is {meta.origin.content_type}; a layer's base is a "
                             "qcow2 disk", "origin.backing_image")
        below = bases.get(position)
        depth = below.depth + 1 if below is not None else 1
        if depth > layers.MAX_DEPTH:
            raise BadRequest(f"{label} is {depth - 1} layers deep already; at most "
                             f"{layers.MAX_DEPTH} layers may lie below an image",
                             "origin.backing_image")
        return _LayerBase(image_id, label, disk, depth)

    def _layer_base(self, session: Session, ref: str, caller: Caller) -> _LayerBase:
        """The base a layer may name: visible to ``caller``, not deleted, a qcow2 disk, and
        not so deep that a layer on it would exceed ``layers.MAX_DEPTH``."""
        where = "origin.backing_image"
        try:
            row = self._resolve_row(session, ref, caller)
        except ImageNotFound as err:
            raise BadRequest(err.message, where) from None
        label = f"{row.name}:{row.version}"
        if row.status == "deleted":
            raise BadRequest(f"{label} is deleted", where)
        record = self._record(session, row)
        disk = _disk_ref(record.metadata)
        if row.content_type != "qcow2" or disk is None:
            raise BadRequest(f"{label} is {row.content_type}; a layer's base is a qcow2 disk",
                             where)
        depth, backing = 1, record.metadata.origin.backing_image
        while backing is not None and depth <= layers.MAX_DEPTH:
            depth += 1
            below = session.get(ImageRow, backing)
            backing = below.document["origin"].get("backing_image") if below else None
        if depth > layers.MAX_DEPTH:
            raise BadRequest(f"{label} is {depth - 1} layers deep already; at most "
                             f"{layers.MAX_DEPTH} layers may lie below an image", where)
        return _LayerBase(row.id, label, disk, depth)

    def _stage_layer(self, ref: ContentRef, source: Path | None, base: _LayerBase,
                     staging: Path, where: str) -> StagedBlob | None:
        """Stage a layer's disk with its backing file rewritten to name the base's disk by
        ``layers.backing_reference``; ``ref`` takes the rewritten file's sha512 and size.
        None when the store holds the file already (then it must name the base that way)."""
        base_disk = base.disk
        if source is None:
            info = layers.inspect_disk(self.store.path(ref.sha512), where)
            if not layers.check_layer(info, base_disk.file, base_disk.sha512, where):
                raise BadRequest(f"the stored {ref.file} is not a layer on {base.ref}; "
                                 "upload the layer file", where)
            return None
        blob = self.store.stage(source, staging, ref.sha512, ref.size, where=where)
        info = layers.inspect_disk(blob.path, where)
        if layers.check_layer(info, base_disk.file, base_disk.sha512, where):
            return blob
        rewritten = staging / f"layer-{uuid.uuid4().hex}"
        shutil.copyfile(blob.path, rewritten)  # the staged blob may be a link to an upload
        blob.path.unlink()
        layers.rewrite_backing(rewritten, base_disk.sha512, where)
        fresh = ContentRef.for_file(rewritten, "disk")
        try:
            blob = self.store.stage(rewritten, staging, fresh.sha512, fresh.size, where=where)
        finally:
            rewritten.unlink()
        ref.sha512, ref.size = fresh.sha512, fresh.size
        return blob

    def backing_files(self, ref: str, caller: Caller) -> list[BackingFile]:
        """The bases below a usable layered image, the lowest first (empty for an image
        that is no layer).  Only the layer needs to be visible: its bases are part of it."""
        record = self.get(ref, caller)
        chain: list[BackingFile] = []
        backing = record.metadata.origin.backing_image
        with session_scope(self._sessions) as session:
            while backing is not None:
                row = session.get(ImageRow, backing)
                if row is None or row.status == "deleted" or len(chain) >= layers.MAX_DEPTH:
                    raise ImageUnavailable(f"{record.ref}: its base {backing} is not usable")
                meta = validate(row.document)
                disk = _disk_ref(meta)
                path = self.store.path(disk.sha512) if disk else None
                if path is None or not path.is_file():
                    raise ImageUnavailable(f"{record.ref}: the disk of its base "
                                           f"{row.name}:{row.version} is missing from the store")
                chain.append(BackingFile(row.id, f"{row.name}:{row.version}", disk.file,
                                         disk.sha512, path))
                backing = meta.origin.backing_image
        return chain[::-1]

    def _layers_on(self, session: Session, image_id: str) -> list[str]:
        """``name:version`` of the images that are not deleted and are layers on the image."""
        rows = session.execute(
            select(ImageRow.name, ImageRow.version)
            .join(ImageLabelRow, ImageLabelRow.image_id == ImageRow.id)
            .where(ImageLabelRow.kind == LAYER_BASE, ImageLabelRow.value == image_id,
                   ImageRow.status != "deleted").order_by(ImageRow.name, ImageRow.version))
        return [f"{name}:{version}" for name, version in rows]

    def _insert(self, session: Session, prepared: list[_Prepared], caller: Caller,
                kept: Sequence[KeptIdentity] | None = None) -> list[ImageRecord]:
        now = self._clock()
        names = sorted({item.meta.general.name for item in prepared})
        latest = self._latest_rows(session, names)
        seq = self._advance_sequence(session, len(prepared))
        images, files, apps, labels, records = [], [], [], [], []
        for offset, item in enumerate(prepared):
            meta, general = item.meta, item.meta.general
            before = latest.get(general.name)
            version = before["version"] + 1 if before else 1
            keep = kept[offset] if kept else None
            if keep is not None:
                version = self._kept_version(session, keep, general.name, before)
            self._check_rights(caller, general, before)
            if general.version is not None and general.version != version:
                raise BadRequest(f"the next version of {general.name} is {version}, not "
                                 f"{general.version}", "general.version")
            owner = general.owner or caller.user
            group = general.group or caller.primary_group
            if keep is not None:
                earlier = {k.id for k in kept[:offset]} if kept else set()
                base_id = keep.base_id if keep.base_id and (
                    keep.base_id in earlier or session.get(ImageRow, keep.base_id)) else None
            elif general.base_image is not None:
                base_id = self._resolve(session, general.base_image, caller).id
            else:
                base_id = before["id"] if before else None
            image_id = keep.id if keep is not None else uuid.uuid4().hex
            created = keep.created if keep is not None else now
            general.version, general.status, general.owner, general.group = (
                version, "active", owner, group)
            general.permissions = general.permissions or access.DEFAULT_PERMISSIONS
            general.created, general.updated = _iso(created), _iso(now)
            general.base_image, general.counters, general.ratings = base_id, None, []
            mode = access.mode_of(general.permissions)
            limits = meta.idb.resource_limits
            os_ = meta.semantic.os
            images.append({
                "id": image_id, "name": general.name, "version": version, "base_id": base_id,
                "status": "active", "owner": owner, "group_name": group, "mode": mode,
                "content_type": meta.origin.content_type,
                "content_digest": meta.origin.os_hash_value, "size": meta.origin.size,
                "source_url": meta.origin.source_url,
                "architecture": meta.origin.architecture,
                "os_distro": os_.distro if os_ else None,
                "os_version": os_.version if os_ else None,
                "limit_cpus": limits.cpus if limits else None,
                "limit_memory_mib": limits.memory_mib if limits else None,
                "limit_disk_gib": limits.disk_gib if limits else None,
                "limit_runtime_s": limits.runtime_s if limits else None,
                "deployments": 0, "exports": 0, "created": created, "updated": now,
                "change_seq": seq + offset, "document": meta.to_dict(),
            })
            files += [{"image_id": image_id, "file": r.file, "role": r.role, "sha512": r.sha512,
                       "size": r.size} for r in meta.origin.content]
            apps += [{"image_id": image_id, "position": i, "name": a.name,
                      "name_key": a.name.lower(), "version": a.version}
                     for i, a in enumerate(meta.idb.applications)]
            labels += [{"image_id": image_id, "kind": "vo", "value": v}
                       for v in meta.semantic.vos]
            labels += [{"image_id": image_id, "kind": "community", "value": c}
                       for c in general.communities]
            if meta.origin.backing_image is not None:
                labels.append({"image_id": image_id, "kind": LAYER_BASE,
                               "value": meta.origin.backing_image})
            if meta.semantic.container_runtime is not None:
                labels.append({"image_id": image_id, "kind": "runtime",
                               "value": meta.semantic.container_runtime.name})
            latest[general.name] = {"id": image_id, "version": version, "owner": owner,
                                    "group_name": group, "mode": mode,
                                    "vos": frozenset(meta.semantic.vos)}
            records.append(ImageRecord(
                id=image_id, name=general.name, version=version, status="active", owner=owner,
                group=group, permissions=general.permissions, base_id=base_id, created=created,
                updated=now, metadata=meta))
        for model, rows in ((ImageRow, images), (ImageFileRow, files),
                            (ImageApplicationRow, apps), (ImageLabelRow, labels)):
            if rows:
                session.execute(insert(model), rows)
        return records

    @staticmethod
    def _check_rights(caller: Caller, general, before: dict[str, Any] | None) -> None:
        """May ``caller`` register ``general`` after ``before`` (the newest of its name)?"""
        if before and not access.can_write(caller, before["owner"], before["group_name"],
                                           before["mode"], before["vos"]):
            raise NotAuthorized(f"the name {general.name!r} is taken by images you may not "
                                "change", "general.name")
        owner = general.owner or caller.user
        if owner != caller.user and not caller.admin and not (before and
                                                              owner == before["owner"]):
            raise NotAuthorized("only an administrator may register images for another "
                                "user", "general.owner")
        if general.group and not caller.admin and general.group not in caller.groups and \
                not (before and general.group == before["group_name"]):
            raise NotAuthorized(f"you are not a member of group {general.group!r}",
                                "general.group")

    def preview(self, metadata: ImageMetadata | Mapping[str, Any],
                caller: Caller) -> ImageMetadata:
        """What ``register`` would check before it needs the files: the document (with the
        content digest and size filled in) and the caller's right to register it under its
        name, owner and group.  Raises as ``register`` would; registers nothing."""
        meta = self._prepare(metadata, (), need_files=False).meta
        with session_scope(self._sessions) as session:
            before = self._latest_rows(session, [meta.general.name]).get(meta.general.name)
            self._check_rights(caller, meta.general, before)
            if meta.general.base_image is not None:
                self._resolve(session, meta.general.base_image, caller)
            if meta.origin.backing_image is not None:
                self._layer_base(session, meta.origin.backing_image, caller)
        return meta

    def stored_bytes(self, owner: str) -> int:
        """Bytes of the distinct files of ``owner``'s images that are not deleted."""
        with session_scope(self._sessions) as session:
            rows = session.execute(
                select(ImageFileRow.sha512, ImageFileRow.size)
                .join(ImageRow, ImageRow.id == ImageFileRow.image_id)
                .where(ImageRow.owner == owner, ImageRow.status != "deleted").distinct())
            return sum(dict(tuple(row) for row in rows).values())

    def _latest_rows(self, session: Session, names: list[str]) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for start in range(0, len(names), _CHUNK):
            chunk = names[start:start + _CHUNK]
            newest = (select(ImageRow.name, func.max(ImageRow.version).label("version"))
                      .where(ImageRow.name.in_(chunk)).group_by(ImageRow.name).subquery())
            rows = session.execute(
                select(ImageRow.id, ImageRow.name, ImageRow.version, ImageRow.owner,
                       ImageRow.group_name, ImageRow.mode)
                .join(newest, (ImageRow.name == newest.c.name)
                      & (ImageRow.version == newest.c.version))).all()
            vos = self._vos(session, [r.id for r in rows])
            for row in rows:
                latest[row.name] = {**row._asdict(), "vos": vos.get(row.id, frozenset())}
        return latest

    def _advance_sequence(self, session: Session, count: int) -> int:
        """Reserve ``count`` change numbers; returns the first.  Serialises writers."""
        value = session.execute(
            update(SequenceRow).where(SequenceRow.name == "catalogue")
            .values(value=SequenceRow.value + count).returning(SequenceRow.value)).scalar_one()
        return value - count + 1

    @staticmethod
    def _vos(session: Session, ids: Sequence[str]) -> dict[str, frozenset[str]]:
        found: dict[str, set[str]] = {}
        for start in range(0, len(ids), _CHUNK):
            rows = session.execute(
                select(ImageLabelRow.image_id, ImageLabelRow.value)
                .where(ImageLabelRow.kind == "vo",
                       ImageLabelRow.image_id.in_(ids[start:start + _CHUNK])))
            for image_id, value in rows:
                found.setdefault(image_id, set()).add(value)
        return {k: frozenset(v) for k, v in found.items()}

    # -- new versions and status -------------------------------------------------------------

    def new_version(self, ref: str, patch: Mapping[str, Any], caller: Caller,
                    files: Files = ()) -> ImageRecord:
        """A new version of ``ref`` with a JSON merge patch applied (RFC 7386).

        Content files that did not change need not be given again.  The new version records
        ``ref`` as its base.
        """
        return self.register(self.derive(ref, patch, caller), files, caller)

    def derive(self, ref: str, patch: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
        """The document of a new version of ``ref`` with ``patch`` applied (what
        :meth:`new_version` registers); checks the caller may change ``ref``."""
        source = self.get(ref, caller, write=True)
        doc = source.metadata.to_dict()
        for key in KEPT_FIELDS:
            doc["general"].pop(key, None)
        for key in ("os_hash_value", "size"):  # derived from the content; computed again
            doc["origin"].pop(key, None)
        if not isinstance(patch, Mapping):
            raise BadRequest("a change must be a JSON object (a merge patch)", "patch")
        changed = merge_patch(doc, patch)
        if not isinstance(changed.get("general"), Mapping):
            raise BadRequest("expected an object (a merge patch changes it key by key)",
                             "general")
        if changed["general"].get("name") != source.name:
            raise BadRequest("a new version keeps the name; register a new image instead",
                             "general.name")
        for key in KEPT_FIELDS:
            if key in patch.get("general", {}) and key != "base_image":
                raise BadRequest("is kept by the repository", f"general.{key}")
        changed["general"]["base_image"] = source.id
        return changed

    def add_application(self, ref: str, application: Mapping[str, Any],
                        caller: Caller) -> ImageRecord:
        """A new version of ``ref`` that also lists ``application`` in its IDB (the others
        stay); BadRequest when it is listed already."""
        source = self.get(ref, caller, write=True)
        if not isinstance(application, Mapping):
            raise BadRequest("expected an application object", "application")
        apps = [to_json(a) for a in source.metadata.idb.applications]
        return self.new_version(source.id, {"idb": {"applications": [*apps, application]}},
                                caller)

    def remove_application(self, ref: str, name: str, version: str | None,
                           caller: Caller) -> ImageRecord:
        """A new version of ``ref`` without the IDB application ``name`` (of ``version``;
        without one, the only application of that name); the others stay."""
        source = self.get(ref, caller, write=True)
        apps = source.metadata.idb.applications
        hits = [a for a in apps if a.name.lower() == name.lower()
                and (version is None or a.version == version)]
        label = f"{name} {version}" if version else name
        if not hits:
            listed = ", ".join(f"{a.name} {a.version or ''}".strip() for a in apps) or "none"
            raise BadRequest(f"{source.ref} lists no application {label} (listed: {listed})",
                             "idb.applications")
        if len(hits) > 1:
            raise BadRequest(f"{source.ref} lists {name} in versions "
                             f"{', '.join(str(a.version) for a in hits)}: name the version",
                             "idb.applications")
        kept = [to_json(a) for a in apps if a is not hits[0]]
        return self.new_version(source.id, {"idb": {"applications": kept}}, caller)

    def set_status(self, ref: str, status: str, caller: Caller) -> ImageRecord:
        """Move an image along ``TRANSITIONS`` (deleting keeps the record, frees the blobs)."""
        if status not in TRANSITIONS:
            raise BadRequest(f"expected one of {', '.join(TRANSITIONS)}, got {status!r}",
                             "general.status")
        with self.store.locked(), session_scope(self._sessions) as session:
            row = self._resolve_row(session, ref, caller, write=True)
            if status == row.status:
                raise BadRequest(f"{row.name}:{row.version} is already {status}", "general.status")
            if status not in TRANSITIONS[row.status]:
                raise BadRequest(f"{row.name}:{row.version} is {row.status} and cannot become "
                                 f"{status}", "general.status")
            if status == "deleted" and (above := self._layers_on(session, row.id)):
                raise ImageInUse(f"{row.name}:{row.version} is the base of "
                                 f"{', '.join(above[:10])}{' …' if len(above) > 10 else ''}; "
                                 "delete those layers first", "general.status")
            row.status = status
            row.updated = self._clock()
            row.change_seq = self._advance_sequence(session, 1)
            orphans: list[str] = []
            if status == "deleted":
                session.flush()
                orphans = self._unreferenced(session, row.id)
            record = self._record(session, row)
            session.commit()
            self.store.remove(orphans)
        return record

    def deprecate(self, ref: str, caller: Caller) -> ImageRecord:
        return self.set_status(ref, "deprecated", caller)

    def delete(self, ref: str, caller: Caller) -> ImageRecord:
        return self.set_status(ref, "deleted", caller)

    def _unreferenced(self, session: Session, image_id: str) -> list[str]:
        """Digests of ``image_id`` that no image other than deleted ones still uses."""
        digests = session.scalars(select(ImageFileRow.sha512)
                                  .where(ImageFileRow.image_id == image_id)).all()
        return [d for d in set(digests) if not self._referenced(session, d)]

    @staticmethod
    def _referenced(session: Session, digest: str) -> bool:
        return session.execute(
            select(ImageFileRow.image_id).join(ImageRow, ImageRow.id == ImageFileRow.image_id)
            .where(ImageFileRow.sha512 == digest, ImageRow.status != "deleted").limit(1)
        ).first() is not None

    def record_deployment(self, image_id: str) -> None:
        """Count one more instance booted from the image (the factory calls this)."""
        with session_scope(self._sessions) as session:
            session.execute(update(ImageRow).where(ImageRow.id == image_id)
                            .values(deployments=ImageRow.deployments + 1))

    def rate(self, ref: str, score: int, caller: Caller, comment: str | None = None) -> None:
        """Record (or replace) the caller's rating 1-5 of a visible image."""
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise BadRequest(f"must be an integer from 1 to 5, got {score!r}", "score")
        with session_scope(self._sessions) as session:
            row = self._resolve_row(session, ref, caller)
            existing = session.get(ImageRatingRow, (row.id, caller.user))
            if existing is None:
                session.add(ImageRatingRow(image_id=row.id, user=caller.user, score=score,
                                           comment=comment, rated=self._clock()))
            else:
                existing.score, existing.comment, existing.rated = score, comment, self._clock()

    # -- endorsements --------------------------------------------------------------------------

    def endorse(self, ref: str, endorsement: Endorsement | Mapping[str, Any],
                caller: Caller) -> StoredEndorsement:
        """Attach an endorsement to a visible image; it replaces an earlier one by the same
        certificate.  Anyone who may read the image may attach one: trust comes from the
        key (the site's policy decides whom it trusts), not from who uploads it.

        BadRequest for a malformed endorsement; ImageUntrusted when its signature does not
        verify, it is about another image or other files, or it has expired.
        """
        if not isinstance(endorsement, Endorsement):
            endorsement = Endorsement.from_dict(endorsement)
        with session_scope(self._sessions) as session:
            row = self._resolve_row(session, ref, caller)
            if row.status == "deleted":
                raise ImageUnavailable(f"{row.name}:{row.version} is deleted")
            record = self._record(session, row)
            checked = check_endorsement(endorsement, record.identity, self._clock())
            statement = checked.statement
            row.change_seq = self._advance_sequence(session, 1)  # serialises endorsers too
            session.execute(delete(ImageEndorsementRow).where(
                ImageEndorsementRow.image_id == row.id,
                ImageEndorsementRow.fingerprint == checked.fingerprint))
            stored = StoredEndorsement(
                endorser=statement.endorser, fingerprint=checked.fingerprint,
                certificate=endorsement.certificate.decode("ascii"),
                statement=endorsement.statement.decode("ascii"),
                signature=endorsement.signature, signed=statement.signed,
                expires=statement.expires, attached_by=caller.user)
            session.add(ImageEndorsementRow(image_id=row.id, **vars(stored)))
        return stored

    def withdraw(self, ref: str, fingerprint: str, caller: Caller) -> StoredEndorsement:
        """Remove the endorsement of an image by the certificate with this fingerprint (or
        a unique prefix of it, at least 8 hex digits).  The user who attached it, the
        image's owner and administrators may."""
        wanted = parse_fingerprint(fingerprint)
        with session_scope(self._sessions) as session:
            row = self._resolve_row(session, ref, caller)
            found = [e for e in self._endorsements(session, [row.id]).get(row.id, [])
                     if e.fingerprint.startswith(wanted)]
            if len(found) != 1:
                what = "no endorsement" if not found else f"{len(found)} endorsements"
                raise BadRequest(f"{row.name}:{row.version} has {what} by a certificate "
                                 f"{wanted}…", "fingerprint")
            [stored] = found
            if not (caller.admin or caller.user in (row.owner, stored.attached_by)):
                raise NotAuthorized(f"only {stored.attached_by} (who attached it), the owner "
                                    f"of {row.name}:{row.version} or an administrator may "
                                    f"withdraw the endorsement by {stored.endorser}")
            row.change_seq = self._advance_sequence(session, 1)
            session.execute(delete(ImageEndorsementRow).where(
                ImageEndorsementRow.image_id == row.id,
                ImageEndorsementRow.fingerprint == stored.fingerprint))
        return stored

    def assess(self, ref: str, caller: Caller, policy: TrustPolicy) -> Verdict:
        """The policy's verdict on a visible image now, every signature verified again."""
        record = self.get(ref, caller)
        return policy.assess(record.endorsements, record.identity)

    def assess_bases(self, ref: str, caller: Caller,
                     policy: TrustPolicy) -> list[tuple[str, Verdict]]:
        """The policy's verdict on each base below a layered image, the lowest first, as
        ``(name:version, verdict)``: a layer's bases are part of what boots."""
        bases = self.backing_files(ref, caller)
        with session_scope(self._sessions) as session:
            records = [self._record(session, session.get(ImageRow, base.image_id),
                                    with_ratings=True) for base in bases]
        return [(r.ref, policy.assess(r.endorsements, r.identity)) for r in records]

    @staticmethod
    def _endorsements(session: Session,
                      ids: Sequence[str]) -> dict[str, list[StoredEndorsement]]:
        found: dict[str, list[StoredEndorsement]] = {}
        for start in range(0, len(ids), _CHUNK):
            for row in session.scalars(
                    select(ImageEndorsementRow)
                    .where(ImageEndorsementRow.image_id.in_(ids[start:start + _CHUNK]))
                    .order_by(ImageEndorsementRow.image_id, ImageEndorsementRow.signed,
                              ImageEndorsementRow.fingerprint)):
                found.setdefault(row.image_id, []).append(row.stored())
        return found

    # -- lookup ------------------------------------------------------------------------------

    def get(self, ref: str, caller: Caller, *, write: bool = False) -> ImageRecord:
        """An image by id, ``name:version`` or ``name`` (the newest visible, not deleted)."""
        with session_scope(self._sessions) as session:
            return self._record(session, self._resolve_row(session, ref, caller, write=write),
                                with_ratings=True)

    def _resolve(self, session: Session, ref: str, caller: Caller) -> ImageRecord:
        try:
            return self._record(session, self._resolve_row(session, ref, caller))
        except ImageNotFound as err:
            raise BadRequest(err.message, "general.base_image") from None

    def _resolve_row(self, session: Session, ref: str, caller: Caller, *,
                     write: bool = False) -> ImageRow:
        if _ID.fullmatch(ref):
            candidates = [row] if (row := session.get(ImageRow, ref)) else []
        elif not _NAME.fullmatch(ref.rpartition(":")[0] or ref):
            candidates = []  # no image has such a name (nor may PostgreSQL see a NUL)
        elif ":" in ref:
            name, _, version = ref.rpartition(":")
            if not version.isdigit():
                raise BadRequest(f"expected an id, name or name:version, got {ref!r}", "image")
            candidates = list(session.scalars(select(ImageRow).where(
                ImageRow.name == name, ImageRow.version == image_version(version))))
        else:
            rows = list(session.scalars(select(ImageRow).where(ImageRow.name == ref)
                                        .order_by(ImageRow.version.desc())))
            candidates = ([r for r in rows if r.status != "deleted"]
                          + [r for r in rows if r.status == "deleted"])
        vos = self._vos(session, [r.id for r in candidates])
        for row in candidates:
            image_vos = vos.get(row.id, frozenset())
            if access.can_read(caller, row.owner, row.group_name, row.mode, image_vos):
                if write and not access.can_write(caller, row.owner, row.group_name, row.mode,
                                                  image_vos):
                    raise NotAuthorized(f"you may not change {row.name}:{row.version}")
                return row
        raise ImageNotFound(f"no image {ref!r} is visible to {caller.user}")

    def _record(self, session: Session, row: ImageRow, with_ratings: bool = False,
                endorsements: list[StoredEndorsement] | None = None) -> ImageRecord:
        """``with_ratings`` also reads the ratings and the endorsements (unless given)."""
        ratings = []
        if with_ratings:
            ratings = [Rating(user=r.user, score=r.score, comment=r.comment) for r in
                       session.scalars(select(ImageRatingRow)
                                       .where(ImageRatingRow.image_id == row.id)
                                       .order_by(ImageRatingRow.user))]
            if endorsements is None:
                endorsements = self._endorsements(session, [row.id]).get(row.id, [])
        return ImageRecord(
            id=row.id, name=row.name, version=row.version, status=row.status, owner=row.owner,
            group=row.group_name, permissions=access.permissions_of(row.mode),
            base_id=row.base_id, created=row.created, updated=row.updated,
            metadata=validate(row.document), deployments=row.deployments,
            exports=row.exports, ratings=ratings, endorsements=endorsements or [])

    def list(self, caller: Caller, *, name: str | None = None,
             include_deleted: bool = False) -> list[ImageRecord]:
        """Every image the caller may see, by name and version."""
        query = select(ImageRow).order_by(ImageRow.name, ImageRow.version)
        if name is not None:
            query = query.where(ImageRow.name == name)
        if not include_deleted:
            query = query.where(ImageRow.status != "deleted")
        with session_scope(self._sessions) as session:
            rows = list(session.scalars(query))
            vos = self._vos(session, [r.id for r in rows])
            rows = [row for row in rows if access.can_read(
                caller, row.owner, row.group_name, row.mode, vos.get(row.id, frozenset()))]
            endorsements = self._endorsements(session, [r.id for r in rows])
            return [self._record(session, row, endorsements=endorsements.get(row.id, []))
                    for row in rows]

    def lineage(self, ref: str, caller: Caller) -> list[ImageRecord]:
        """The image and its bases, newest first, as far as the caller may see them."""
        chain = [self.get(ref, caller)]
        seen = {chain[0].id}
        while chain[-1].base_id and chain[-1].base_id not in seen:
            try:
                chain.append(self.get(chain[-1].base_id, caller))
            except ImageNotFound:
                break
            seen.add(chain[-1].id)
        return chain

    def content_paths(self, ref: str, caller: Caller) -> dict[str, Path]:
        """The stored files of a usable image, by file name (for booting it)."""
        record = self.get(ref, caller)
        if record.status == "deleted":
            raise ImageUnavailable(f"{record.ref} is deleted")
        paths = {}
        for content in record.metadata.origin.content:
            path = self.store.path(content.sha512)
            if not path.is_file():
                raise ImageUnavailable(f"{record.ref}: {content.file} is missing from the store")
            paths[content.file] = path
        return paths

    # -- matching ----------------------------------------------------------------------------

    def match(self, requirements: Requirements | Mapping[str, Any], caller: Caller, *,
              limit: int | None = None, policy: TrustPolicy | None = None) -> MatchResult:
        """Ranked candidates for ``requirements`` and, per visible rejected image, why.

        ``requirements`` is a :class:`Requirements` or its JSON form (read strictly).  A
        ``policy`` that requires endorsements rejects images it does not trust now.
        """
        if not isinstance(requirements, Requirements):
            requirements = Requirements.from_dict(requirements)
        with session_scope(self._sessions) as session:
            self._index.refresh(session)
        return self._matcher.match(self._index, requirements, caller, limit=limit,
                                   policy=policy)

    # -- maintenance -------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Remove what crashed registrations left in the store; returns removed digests."""
        def referenced(digest: str) -> bool:
            with session_scope(self._sessions) as session:
                return self._referenced(session, digest)

        return self.store.recover(referenced)

    def change_number(self) -> int:
        """The number of the last catalogue change (grows with every write)."""
        with session_scope(self._sessions) as session:
            return session.execute(select(SequenceRow.value)
                                   .where(SequenceRow.name == "catalogue")).scalar_one()


def _disk_ref(meta: ImageMetadata) -> ContentRef | None:
    return next((ref for ref in meta.origin.content if ref.role == "disk"), None)


def _file_map(files: Files) -> dict[str, Path]:
    if isinstance(files, Mapping):
        return {str(name): Path(path) for name, path in files.items()}
    given: dict[str, Path] = {}
    for item in files:
        path = Path(item)
        if path.name in given:
            raise BadRequest(f"two files are named {path.name!r}", "files")
        given[path.name] = path
    return given
