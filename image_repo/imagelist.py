"""HEPiX image lists (the JSON form vmcatcher, AppDB and atrope use): parse and build.

A list names its endorser (``hv:endorser.hv:x509``: ``hv:dn``, ``hv:ca``), when it expires
(``dc:date:expires``) and its images, each with ``dc:identifier`` (stable across versions),
``hv:version``, ``hv:uri``, ``sl:checksum:sha512`` and ``hv:size``::

    {"hv:imagelist": {"dc:identifier": "…", "dc:date:created": "2026-12-01T00:00:00Z",
      "dc:date:expires": "2026-12-29T00:00:00Z", "hv:version": "3",
      "hv:endorser": {"hv:x509": {"hv:dn": "/O=Grid/CN=Image Team", "hv:ca": "/O=Grid/CN=CA",
                                  "dc:creator": "Image Team", "hv:email": "…"}},
      "hv:images": [{"hv:image": {"dc:identifier": "…", "dc:title": "…", "hv:version": "2",
                                  "hv:uri": "https://…/disk.qcow2", "hv:format": "qcow2",
                                  "sl:checksum:sha512": "…", "hv:size": 123}}]}}

gridvm adds two keys to an image it exports: ``gridvm:metadata`` (the full metadata document)
and ``gridvm:files`` (every content file with role, URI, sha512 and size, for images of more
than one file; ``hv:uri`` is the first).  Other publishers' keys are ignored; the keys above
are read strictly, and a list holds at most :data:`MAX_IMAGES` images.  The list travels
signed (``image_repo.smime``); :func:`parse` reads the verified content.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from image_repo.errors import BadRequest
from image_repo.trust import utc_iso

MAX_IMAGES = 5000
MAX_FILES = 16
_SHA512 = re.compile(r"[0-9a-f]{128}")
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})")
#: the uuid5 namespace of the dc:identifier gridvm gives an image name
GRIDVM_NAMESPACE = uuid.UUID("5d6f1c2e-4b3a-5e8f-9a7b-2c1d0e3f4a5b")


@dataclass(frozen=True)
class ListedFile:
    """One file of a listed image: where it is and what it must hash to."""

    file: str
    role: str
    uri: str
    sha512: str
    size: int


@dataclass(frozen=True)
class ListedImage:
    """One ``hv:image`` of a list."""

    identifier: str
    version: str | None
    title: str | None
    description: str | None
    format: str | None
    architecture: str | None
    files: tuple[ListedFile, ...]
    metadata: Mapping[str, Any] | None = None  #: ``gridvm:metadata``, when gridvm listed it

    @property
    def uri(self) -> str:
        return self.files[0].uri


@dataclass(frozen=True)
class Endorser:
    """``hv:endorser.hv:x509``: who vouches for the list."""

    dn: str
    ca: str
    creator: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class ImageList:
    """A parsed HEPiX image list."""

    identifier: str
    version: str | None
    title: str | None
    uri: str | None
    created: datetime | None
    expires: datetime
    endorser: Endorser
    images: tuple[ListedImage, ...]

    def to_dict(self) -> dict[str, Any]:
        x509 = {"hv:dn": self.endorser.dn, "hv:ca": self.endorser.ca}
        if self.endorser.creator:
            x509["dc:creator"] = self.endorser.creator
        if self.endorser.email:
            x509["hv:email"] = self.endorser.email
        doc: dict[str, Any] = {"dc:identifier": self.identifier,
                               "dc:date:expires": utc_iso(self.expires),
                               "hv:endorser": {"hv:x509": x509},
                               "hv:images": [{"hv:image": _image_dict(i)} for i in self.images]}
        for key, value in (("hv:version", self.version), ("dc:title", self.title),
                           ("hv:uri", self.uri),
                           ("dc:date:created", self.created and utc_iso(self.created))):
            if value is not None:
                doc[key] = value
        return {"hv:imagelist": doc}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode() + b"\n"


def _image_dict(image: ListedImage) -> dict[str, Any]:
    first = image.files[0]
    doc: dict[str, Any] = {"dc:identifier": image.identifier, "hv:uri": first.uri,
                           "sl:checksum:sha512": first.sha512, "hv:size": first.size}
    for key, value in (("hv:version", image.version), ("dc:title", image.title),
                       ("dc:description", image.description), ("hv:format", image.format),
                       ("sl:arch", image.architecture)):
        if value is not None:
            doc[key] = value
    if len(image.files) > 1 or image.metadata is not None:
        doc["gridvm:files"] = [{"file": f.file, "role": f.role, "uri": f.uri,
                                "sha512": f.sha512, "size": f.size} for f in image.files]
    if image.metadata is not None:
        doc["gridvm:metadata"] = dict(image.metadata)
    return doc


# --------------------------------------------------------------------------- parsing ---------

def parse(data: bytes) -> ImageList:
    """Read a list (the verified content of the signed message); BadRequest naming the key."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"is not JSON: {err}", "imagelist") from None
    body = _object(doc, "imagelist").get("hv:imagelist")
    body = _object(body, "hv:imagelist")
    where = "hv:imagelist"
    endorser = _object(_object(body.get("hv:endorser"), f"{where}.hv:endorser").get("hv:x509"),
                       f"{where}.hv:endorser.hv:x509")
    x509_at = f"{where}.hv:endorser.hv:x509"
    images = body.get("hv:images", [])
    if not isinstance(images, list):
        raise BadRequest("expected an array", f"{where}.hv:images")
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"lists {len(images)} images; at most {MAX_IMAGES} are accepted",
                         f"{where}.hv:images")
    parsed = tuple(_parse_image(entry, f"{where}.hv:images[{i}]")
                   for i, entry in enumerate(images))
    seen: set[str] = set()
    for i, image in enumerate(parsed):
        if image.identifier in seen:
            raise BadRequest(f"{image.identifier!r} is listed twice",
                             f"{where}.hv:images[{i}].hv:image.dc:identifier")
        seen.add(image.identifier)
    created = _optional(body, "dc:date:created", where)
    return ImageList(
        identifier=_text(body, "dc:identifier", where),
        version=_optional(body, "hv:version", where),
        title=_optional(body, "dc:title", where),
        uri=_optional(body, "hv:uri", where),
        created=_stamp(created, f"{where}.dc:date:created") if created else None,
        expires=_stamp(_text(body, "dc:date:expires", where), f"{where}.dc:date:expires"),
        endorser=Endorser(_text(endorser, "hv:dn", x509_at), _text(endorser, "hv:ca", x509_at),
                          _optional(endorser, "dc:creator", x509_at),
                          _optional(endorser, "hv:email", x509_at)),
        images=parsed)


def _parse_image(entry: Any, where: str) -> ListedImage:
    image = _object(_object(entry, where).get("hv:image"), f"{where}.hv:image")
    where = f"{where}.hv:image"
    first = ListedFile(file=_file_name(_text(image, "hv:uri", where)), role="disk",
                       uri=_url(_text(image, "hv:uri", where), f"{where}.hv:uri"),
                       sha512=_sha512(image, "sl:checksum:sha512", where),
                       size=_size(image, "hv:size", where))
    files: tuple[ListedFile, ...] = (first,)
    if "gridvm:files" in image:
        files = _parse_files(image["gridvm:files"], f"{where}.gridvm:files")
        if (files[0].uri, files[0].sha512, files[0].size) != (first.uri, first.sha512,
                                                               first.size):
            raise BadRequest("its first file must be the one of hv:uri, sl:checksum:sha512 "
                             "and hv:size", f"{where}.gridvm:files[0]")
    metadata = image.get("gridvm:metadata")
    if metadata is not None:
        metadata = _object(metadata, f"{where}.gridvm:metadata")
    version = image.get("hv:version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)  # some publishers write a number
    elif version is not None and not isinstance(version, str):
        raise BadRequest(f"expected a string, got {version!r}", f"{where}.hv:version")
    return ListedImage(
        identifier=_text(image, "dc:identifier", where), version=version,
        title=_optional(image, "dc:title", where),
        description=_optional(image, "dc:description", where),
        format=_optional(image, "hv:format", where),
        architecture=_optional(image, "sl:arch", where) or _optional(image, "hv:arch", where),
        files=files, metadata=metadata)


def _parse_files(value: Any, where: str) -> tuple[ListedFile, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_FILES:
        raise BadRequest(f"expected an array of 1 to {MAX_FILES} files", where)
    files = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        item = _object(item, at)
        files.append(ListedFile(_text(item, "file", at), _text(item, "role", at),
                                _url(_text(item, "uri", at), f"{at}.uri"),
                                _sha512(item, "sha512", at), _size(item, "size", at)))
    return tuple(files)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("expected an object", where)
    return value


def _text(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("is missing or not a non-empty string", f"{where}.{key}")
    if len(value) > 4096:
        raise BadRequest("is longer than 4096 characters", f"{where}.{key}")
    return value


def _optional(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    return _text(doc, key, where) if doc.get(key) not in (None, "") else None


def _sha512(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = _text(doc, key, where).lower()
    if not _SHA512.fullmatch(value):
        raise BadRequest("expected 128 hex digits (sha512)", f"{where}.{key}")
    return value


def _size(doc: Mapping[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # AppDB writes sizes as strings
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"expected a size in bytes, got {value!r}", f"{where}.{key}")
    return value


def _url(value: str, where: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise BadRequest(f"expected an http(s) URL, got {value!r}", where)
    return value


def _file_name(uri: str) -> str:
    name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip("._+-")[:200]
    return name or "disk"


def _stamp(text: str, where: str) -> datetime:
    if not _STAMP.fullmatch(text):
        raise BadRequest(f"expected a time like 2026-12-31T00:00:00Z, got {text!r}", where)
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp


# --------------------------------------------------------------------------- building --------

def image_identifier(name: str) -> str:
    """The stable ``dc:identifier`` of a gridvm image name (the same for every version)."""
    return str(uuid.uuid5(GRIDVM_NAMESPACE, name))


def listed_image(record, url_of: Callable[[Any, str], str]) -> ListedImage:
    """An :class:`~image_repo.repository.ImageRecord` as a list entry; ``url_of(record,
    file)`` is where a content file can be downloaded."""
    meta = record.metadata
    content = meta.origin.content
    if not content:
        raise BadRequest(f"{record.ref} has no content files to list", "image")
    order = sorted(content, key=lambda ref: ref.role not in ("disk", "iso", "container"))
    doc = record.to_dict()
    for key in ("id", "endorsements"):
        doc.pop(key, None)
    return ListedImage(
        identifier=image_identifier(record.name), version=str(record.version),
        title=meta.general.title or record.name, description=meta.general.description,
        format=meta.origin.content_type, architecture=meta.origin.architecture,
        files=tuple(ListedFile(ref.file, ref.role, url_of(record, ref.file), ref.sha512,
                               ref.size) for ref in order),
        metadata=doc)


def build(records: Iterable, endorser: Endorser, *, identifier: str, created: datetime,
          expires: datetime, url_of: Callable[[Any, str], str], title: str | None = None,
          uri: str | None = None, version: str | None = None) -> ImageList:
    """A list of ``records`` (usable images: deleted ones are left out)."""
    images = tuple(listed_image(r, url_of) for r in records if r.status != "deleted")
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"{len(images)} images; a list holds at most {MAX_IMAGES}", "images")
    if expires <= created:
        raise BadRequest("must be after the creation time", "expires")
    return ImageList(identifier, version, title, uri, created, expires, endorser, images)
