"""Image bundles: one image with its lineage, files and endorsements in one tar archive.

Layout (an uncompressed POSIX tar; a gzip-compressed one is read too)::

    gridvm-bundle.json    {"format": "gridvm-bundle/1", "exported": "…Z",
                           "images": [{"id": "…", "document": {…}, "endorsements": [{…}]},
                                      …]}            oldest base first, the image last
    blobs/<sha512>        each content file once, named by its sha512

:func:`export_bundle` writes the image and every base the caller may see that is not
deleted.  :func:`import_bundle` checks everything before it registers anything: the archive
(regular files only, known names, bounded count and size), the manifest (strictly), each
blob's sha512 while it is unpacked, each endorsement's signature (one that expired since
is left out and reported); then it registers the images in one transaction keeping their
ids, versions, creation times and lineage, and attaches the endorsements.  An image that
is here already (same id, same content) is skipped, so importing twice changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from base.identity import Caller
from image_repo.errors import BadRequest, ChecksumMismatch, ImageNotFound, ImageUntrusted
from image_repo.repository import ImageRecord, ImageRepository, KeptIdentity
from image_repo.schema import ImageMetadata, validate
from image_repo.trust import Endorsement, ImageIdentity, check_endorsement, utc_iso

FORMAT = "gridvm-bundle/1"
MANIFEST = "gridvm-bundle.json"
MAX_MANIFEST = 8 << 20
MAX_IMAGES = 64  #: images in one bundle (an image and its bases)
MAX_ENDORSEMENTS = 32  #: per image
DEFAULT_MAX_BYTES = 64 << 30
_BLOB = re.compile(r"blobs/([0-9a-f]{128})")
_ID = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1 << 20
#: general fields a bundle carries but an import sets itself
_SET_ON_IMPORT = ("version", "status", "created", "updated", "counters", "ratings",
                  "base_image")


class BundleError(BadRequest):
    """A damaged or malformed bundle; the message names what is wrong."""


@dataclass
class ImportResult:
    """What an import did."""

    imported: list[ImageRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  #: ids here already
    endorsements: int = 0
    left_out: list[str] = field(default_factory=list)  #: endorsements that expired, why


@dataclass(frozen=True)
class _Entry:
    id: str
    document: dict[str, Any]
    endorsements: tuple[Endorsement, ...]


# --------------------------------------------------------------------------- export ----------

def export_bundle(repository: ImageRepository, ref: str, caller: Caller,
                  destination: str | Path) -> Path:
    """Write the bundle of ``ref`` (and its visible, not deleted bases: the versions it was
    derived from and, for a layered image, the images below its disk) to ``destination``."""
    chain = [r for r in repository.lineage(ref, caller) if r.status != "deleted"]
    if not chain or chain[0].status == "deleted":
        raise ImageNotFound(f"{ref} is deleted: nothing to export")
    chain = _with_layer_bases(repository, chain[::-1], caller)
    images = []
    for record in chain:
        doc = record.to_dict()
        doc.pop("id")
        doc.pop("endorsements")
        if record.base_id:
            doc["general"]["base_image"] = record.base_id
        images.append({"id": record.id, "document": doc,
                       "endorsements": [e.endorsement().to_dict() for e in
                                        record.endorsements]})
        repository.content_paths(record.id, caller)  # ImageUnavailable: a blob is missing
    manifest = {"format": FORMAT, "exported": utc_iso(datetime.now(UTC)), "images": images}
    destination = Path(destination)
    partial = destination.with_name(destination.name + ".part")
    digests = {ref.sha512: repository.store.path(ref.sha512) for record in chain
               for ref in record.metadata.origin.content}
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(datetime.now(UTC).timestamp()), 0o644
        archive.addfile(info, io.BytesIO(data))
        for digest, path in sorted(digests.items()):
            archive.add(path, arcname=f"blobs/{digest}", recursive=False,
                        filter=_plain_member)
    partial.replace(destination)
    return destination


def _with_layer_bases(repository: ImageRepository, chain: list[ImageRecord],
                      caller: Caller) -> list[ImageRecord]:
    """``chain`` with each layered image's visible bases before it (once each)."""
    ordered: list[ImageRecord] = []
    seen: set[str] = set()
    for record in chain:
        for base in repository.backing_files(record.id, caller):
            if base.image_id not in seen and (found := _existing(repository, base.image_id,
                                                                 caller)) is not None:
                ordered.append(found)
                seen.add(found.id)
        if record.id not in seen:
            ordered.append(record)
            seen.add(record.id)
    return ordered


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


# --------------------------------------------------------------------------- import ----------

def import_bundle(repository: ImageRepository, source: str | Path, caller: Caller, *,
                  max_bytes: int = DEFAULT_MAX_BYTES,
                  now: datetime | None = None) -> ImportResult:
    """Verify the bundle at ``source`` and register its images (see the module text)."""
    now = now or datetime.now(UTC)
    source = Path(source)
    try:
        archive = tarfile.open(source, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError):  # their text is several lines of internals
        raise BundleError("is not a tar archive (plain, gzip, bzip2 or xz)", "bundle"
                          ) from None
    with archive, tempfile.TemporaryDirectory(prefix="gridvm-bundle-",
                                              dir=repository.store.tmp) as scratch:
        try:
            manifest, blobs = _unpack(archive, Path(scratch), max_bytes)
        except tarfile.TarError:  # a truncated or damaged archive
            raise BundleError("is damaged: it ends early or a member's header is broken",
                              "bundle") from None
        entries = _parse_manifest(manifest)
        return _register(repository, entries, blobs, caller, now)


def _unpack(archive: tarfile.TarFile, scratch: Path,
            max_bytes: int) -> tuple[bytes, dict[str, Path]]:
    manifest: bytes | None = None
    blobs: dict[str, Path] = {}
    total = 0
    for count, member in enumerate(archive, 1):
        if count > MAX_IMAGES * 16 + 1:
            raise BundleError(f"holds more than {MAX_IMAGES * 16 + 1} members", "bundle")
        if not member.isfile():
            raise BundleError(f"member {member.name!r} is not a regular file", "bundle")
        total += member.size
        if total > max_bytes:
            raise BundleError(f"is larger than {max_bytes} bytes", "bundle")
        stream = archive.extractfile(member)
        if stream is None:
            raise BundleError(f"member {member.name!r} cannot be read", "bundle")
        if member.name == MANIFEST:
            if manifest is not None or member.size > MAX_MANIFEST:
                raise BundleError(f"{MANIFEST} is there twice or larger than {MAX_MANIFEST} "
                                  "bytes", "bundle")
            manifest = stream.read()
            continue
        found = _BLOB.fullmatch(member.name)
        if found is None:
            raise BundleError(f"unexpected member {member.name!r} (expected {MANIFEST} and "
                              "blobs/<sha512>)", "bundle")
        digest = found.group(1)
        if digest in blobs:
            raise BundleError(f"member {member.name!r} is there twice", "bundle")
        target = scratch / digest
        hasher = hashlib.sha512()
        with target.open("wb") as out:
            while piece := stream.read(_CHUNK):
                hasher.update(piece)
                out.write(piece)
        if hasher.hexdigest() != digest:
            raise ChecksumMismatch(f"member {member.name[:22]}… is damaged: its sha512 is "
                                   f"{hasher.hexdigest()[:16]}…", "bundle")
        blobs[digest] = target
    if manifest is None:
        raise BundleError(f"has no {MANIFEST}", "bundle")
    return manifest, blobs


def _parse_manifest(data: bytes) -> list[_Entry]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"is not JSON: {err}", MANIFEST) from None
    if not isinstance(doc, dict) or set(doc) != {"format", "exported", "images"}:
        raise BundleError("expected the keys format, exported and images", MANIFEST)
    if doc["format"] != FORMAT:
        raise BundleError(f"is {doc['format']!r}, expected {FORMAT!r}", f"{MANIFEST}.format")
    images = doc["images"]
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_IMAGES:
        raise BundleError(f"expected 1 to {MAX_IMAGES} images", f"{MANIFEST}.images")
    entries = []
    for i, item in enumerate(images):
        where = f"{MANIFEST}.images[{i}]"
        if not isinstance(item, dict) or set(item) != {"id", "document", "endorsements"}:
            raise BundleError("expected the keys id, document and endorsements", where)
        if not isinstance(item["id"], str) or not _ID.fullmatch(item["id"]):
            raise BundleError("expected 32 hex digits", f"{where}.id")
        if not isinstance(item["document"], dict):
            raise BundleError("expected an object", f"{where}.document")
        endorsements = item["endorsements"]
        if not isinstance(endorsements, list) or len(endorsements) > MAX_ENDORSEMENTS:
            raise BundleError(f"expected at most {MAX_ENDORSEMENTS} endorsements",
                              f"{where}.endorsements")
        try:
            parsed = tuple(Endorsement.from_dict(e) for e in endorsements)
        except BadRequest as err:
            raise BundleError(str(err), f"{where}.endorsements") from None
        entries.append(_Entry(item["id"], item["document"], parsed))
    return entries


def _register(repository: ImageRepository, entries: list[_Entry], blobs: dict[str, Path],
              caller: Caller, now: datetime) -> ImportResult:
    result = ImportResult()
    items, kept, attach = [], [], []
    for i, entry in enumerate(entries):
        meta = _bundled_metadata(entry, i)
        existing = _existing(repository, entry.id)
        if existing is not None:
            if existing.metadata.origin.content != meta.origin.content:
                raise BundleError(f"an image with id {entry.id} and other content is here "
                                  "already", f"{MANIFEST}.images[{i}].id")
            result.skipped.append(entry.id)
            continue
        files = _bundled_files(repository, meta, blobs, f"{MANIFEST}.images[{i}].document")
        attach += _verified_endorsements(entry, meta, now, i, result)
        items.append((_document_to_register(meta, caller), files))
        general = meta.general
        kept.append(KeptIdentity(entry.id, general.version,
                                 datetime.fromisoformat(general.created.replace("Z", "+00:00")),
                                 general.base_image))
    if items:
        result.imported = repository.register_many(items, caller, kept=kept)
    for image_id, endorsement in attach:
        repository.endorse(image_id, endorsement, caller)
        result.endorsements += 1
    if attach:
        result.imported = [repository.get(r.id, caller) for r in result.imported]
    return result


def _bundled_metadata(entry: _Entry, index: int) -> ImageMetadata:
    """The entry's validated document; a bundled image states its version and creation."""
    where = f"{MANIFEST}.images[{index}].document"
    try:
        meta = validate(entry.document)
    except BadRequest as err:
        raise BundleError(str(err), where) from None
    if meta.general.version is None or meta.general.created is None:
        raise BundleError("a bundled image has its version and creation time",
                          f"{where}.general")
    return meta


def _bundled_files(repository: ImageRepository, meta: ImageMetadata, blobs: dict[str, Path],
                   where: str) -> dict[str, Path]:
    """File name -> bundled blob; a file neither bundled nor in the store is an error."""
    files = {}
    for j, ref in enumerate(meta.origin.content):
        if ref.sha512 in blobs:
            files[ref.file] = blobs[ref.sha512]
        elif not repository.store.has(ref.sha512):
            raise BundleError(f"has no blob for {ref.file!r}", f"{where}.origin.content[{j}]")
    return files


def _verified_endorsements(entry: _Entry, meta: ImageMetadata, now: datetime, index: int,
                           result: ImportResult) -> list[tuple[str, Endorsement]]:
    """The entry's endorsements that verify (expired ones are left out and said so; any other
    failure refuses the bundle)."""
    general = meta.general
    identity = ImageIdentity(entry.id, general.name, general.version,
                             {ref.file: ref.sha512 for ref in meta.origin.content})
    verified = []
    for endorsement in entry.endorsements:
        try:
            check_endorsement(endorsement, identity, now)
        except ImageUntrusted as err:
            if "expired" not in err.message:
                raise ImageUntrusted(f"{identity.ref}: an endorsement does not verify: "
                                     f"{err.message}", f"{MANIFEST}.images[{index}]") from None
            result.left_out.append(f"{identity.ref}: {err.message}")
            continue
        verified.append((entry.id, endorsement))
    return verified


def _document_to_register(meta: ImageMetadata, caller: Caller) -> dict[str, Any]:
    """The document as registered here: repository-kept fields dropped, and the importer
    owning it unless an administrator imports."""
    doc = meta.to_dict()
    for key in _SET_ON_IMPORT:
        doc["general"].pop(key, None)
    if not caller.admin:
        doc["general"].pop("owner", None)
        doc["general"].pop("group", None)
    return doc


def _existing(repository: ImageRepository, image_id: str,
              caller: Caller | None = None) -> ImageRecord | None:
    """The image with this id (as ``caller`` sees it; default: any), or None."""
    try:
        return repository.get(image_id, caller or Caller.of("gridvm-bundle", admin=True))
    except ImageNotFound:
        return None
