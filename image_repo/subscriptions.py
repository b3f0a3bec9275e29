"""Image-list subscriptions: accept a signed HEPiX list and bring the catalogue in line.

:func:`accept` verifies a fetched message (S/MIME signature against the subscription's
anchors, signer DN, the list's own endorser DN, expiry) and parses it.  :func:`sync` is
the pure step after it: for each listed image it registers what is new (files downloaded
through the injected ``fetch`` and verified by sha512 and size on registration) as images
owned by ``subscription:NAME`` and published for the subscription's VO; a changed entry
becomes a new version of the same name; images that left the list are deprecated, and a
listed image deprecated earlier becomes active again.  Past the list's expiry
(:func:`expire`) the subscription's images are deleted, as vmcatcher and cloudkeeper
remove the images of an expired list: they are no longer matched, and a renewed list
registers them again.  One image that cannot be fetched or registered does not stop the
others; the :class:`SyncReport` says what happened to each.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import select

from base.db import session_scope
from base.errors import GridvmError
from base.identity import Caller
from image_repo import imagelist, smime
from image_repo.errors import BadRequest, ImageUntrusted
from image_repo.imagelist import ImageList, ListedImage
from image_repo.models import SubscriptionRow
from image_repo.schema import ARCHITECTURES, NAME_PATTERN
from image_repo.trust import utc_iso

OWNER_PREFIX = "subscription:"
_FORMATS = {"qcow2": "qcow2", "qcow": "qcow2", "raw": "raw", "img": "raw", "iso": "iso"}
_ROLES = {"qcow2": "disk", "raw": "disk", "iso": "iso"}
_KEPT = ("version", "status", "created", "updated", "counters", "ratings", "base_image",
         "owner", "group")

#: ``fetch(url, destination)`` downloads a file (bounded by the site's transfer policy)
Fetch = Callable[[str, Path], Any]


@dataclass(frozen=True)
class Subscription:
    """A list the site follows: its URL, whose signature it needs, the VO it is for."""

    name: str
    url: str
    vo: str | None = None
    endorser_dn: str | None = None  #: the one signer accepted (one-line form); None: any

    @property
    def owner(self) -> str:
        return OWNER_PREFIX + self.name

    @property
    def caller(self) -> Caller:
        return Caller.of(self.owner, vos=[self.vo] if self.vo else [])


@dataclass
class SyncReport:
    """What one refresh did, by image reference (``name:version``)."""

    registered: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)
    deprecated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  #: (identifier, why)

    def summary(self) -> str:
        parts = [f"{len(getattr(self, k))} {k}" for k in
                 ("registered", "kept", "reactivated", "deprecated", "deleted", "failed")]
        return ", ".join(parts)


# --------------------------------------------------------------------------- accepting -------

def accept(message: bytes, subscription: Subscription, anchors: Sequence[x509.Certificate],
           now: datetime) -> ImageList:
    """The list in a signed message, once signature, signer and expiry are checked.

    SignatureInvalid (IMAGE_UNTRUSTED) for a bad signature or an untrusted signer;
    ImageUntrusted for a list that names another endorser or has expired; BadRequest for
    a list that is not in the HEPiX format (naming the key).
    """
    signed = smime.verify(message, anchors, now)
    wanted = subscription.endorser_dn
    if wanted and not smime.same_dn(signed.signer_dn, wanted):
        raise ImageUntrusted(f"the list is signed by {signed.signer_dn}, not by {wanted}")
    image_list = imagelist.parse(signed.content)
    if not smime.same_dn(image_list.endorser.dn, signed.signer_dn):
        raise ImageUntrusted(f"the list names its endorser {image_list.endorser.dn}, but "
                             f"{signed.signer_dn} signed it", "hv:endorser.hv:x509.hv:dn")
    if image_list.expires <= now:
        raise ImageUntrusted(f"the list expired at {utc_iso(image_list.expires)}",
                             "dc:date:expires")
    return image_list


# --------------------------------------------------------------------------- syncing ---------

def image_name(subscription: Subscription, listed: ListedImage) -> str:
    """The catalogue name of a listed image: ``SUBSCRIPTION.NAME`` (gridvm lists) or
    ``SUBSCRIPTION.IDENTIFIER`` (other publishers)."""
    base = listed.identifier
    if listed.metadata is not None:
        general = listed.metadata.get("general")
        if isinstance(general, dict) and isinstance(general.get("name"), str):
            base = general["name"]
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", f"{subscription.name}.{base}")[:128]
    if not re.fullmatch(NAME_PATTERN, name):
        raise BadRequest(f"cannot make an image name of {base!r}", "dc:identifier")
    return name


def metadata_for(subscription: Subscription, listed: ListedImage) -> dict[str, Any]:
    """The gridvm metadata document a listed image is registered with."""
    name = image_name(subscription, listed)
    vos = [subscription.vo] if subscription.vo else []
    if listed.metadata is not None:
        doc = _copy(listed.metadata)
        general = doc.setdefault("general", {})
        for key in _KEPT:
            general.pop(key, None)
        origin = doc.get("origin", {})
        for key in ("os_hash_algo", "os_hash_value", "size"):
            origin.pop(key, None)
        refs = {(r.get("file"), r.get("sha512"), r.get("size")) for r in
                origin.get("content", []) if isinstance(r, dict)}
        if refs != {(f.file, f.sha512, f.size) for f in listed.files}:
            raise BadRequest("gridvm:metadata lists other content files than gridvm:files",
                             "gridvm:metadata.origin.content")
    else:
        content_type = _content_type(listed)
        doc = {"general": {"description": listed.description},
               "origin": {"content_type": content_type, "source_url": listed.uri,
                          "content": [{"file": f.file, "role": _ROLES[content_type],
                                       "sha512": f.sha512, "size": f.size}
                                      for f in listed.files]},
               "semantic": {}}
        if listed.architecture in ARCHITECTURES:
            doc["origin"]["architecture"] = listed.architecture
        doc["general"] = {k: v for k, v in doc["general"].items() if v is not None}
    general = doc["general"]
    general["name"] = name
    general.setdefault("title", listed.title or listed.identifier)
    general["permissions"] = {"owner": "rw", "group": "", "others": "r"}
    doc.setdefault("semantic", {})["vos"] = vos
    return doc


def _content_type(listed: ListedImage) -> str:
    given = (listed.format or listed.files[0].file.rsplit(".", 1)[-1]).lower()
    if listed.format is None and given not in _FORMATS:
        given = "qcow2"
    if given not in _FORMATS:
        raise BadRequest(f"format {listed.format!r} is not supported (qcow2, raw, iso)",
                         "hv:format")
    return _FORMATS[given]


def _copy(doc: Any) -> Any:
    return copy.deepcopy(doc)


def _files_of(record) -> set[tuple[str, str, int]]:
    return {(ref.file, ref.sha512, ref.size) for ref in record.metadata.origin.content}


def owned(repository, subscription: Subscription) -> list:
    """The subscription's images that are not deleted, by name and version."""
    return [r for r in repository.list(subscription.caller) if r.owner == subscription.owner]


def sync(repository, subscription: Subscription, image_list: ImageList, fetch: Fetch,
         log: Callable[[str], None] = lambda line: None) -> SyncReport:
    """Bring the subscription's images in line with an accepted list."""
    report = SyncReport()
    caller = subscription.caller
    latest: dict[str, Any] = {}
    for record in owned(repository, subscription):
        latest[record.name] = record  # ordered by version: the newest wins
    current: set[str] = set()
    for listed in image_list.images:
        try:
            doc = metadata_for(subscription, listed)
            name = doc["general"]["name"]
            before = latest.get(name)
            if before is not None and _files_of(before) == {
                    (f.file, f.sha512, f.size) for f in listed.files}:
                current.add(before.id)
                if before.status == "deprecated":
                    repository.set_status(before.id, "active", caller)
                    report.reactivated.append(before.ref)
                    log(f"{before.ref} is listed again: active")
                else:
                    report.kept.append(before.ref)
                continue
            record = _register(repository, doc, listed, caller, fetch)
            current.add(record.id)
            report.registered.append(record.ref)
            log(f"registered {record.ref} ({listed.identifier} version "
                f"{listed.version or '-'})")
        except GridvmError as err:
            report.failed.append((listed.identifier, str(err)))
            log(f"{listed.identifier}: not registered: {err}")
    for record in owned(repository, subscription):
        if record.id not in current and record.status == "active":
            repository.deprecate(record.id, caller)
            report.deprecated.append(record.ref)
            log(f"deprecated {record.ref}: no longer in the list")
    return report


def _register(repository, doc: dict[str, Any], listed: ListedImage, caller: Caller,
              fetch: Fetch):
    with tempfile.TemporaryDirectory(prefix="gridvm-list-") as scratch:
        files = {}
        for item in listed.files:
            if repository.store.has(item.sha512):
                continue
            path = Path(scratch) / item.file
            fetch(item.uri, path)
            size = path.stat().st_size
            if size != item.size:
                raise BadRequest(f"{item.uri} has {size} bytes, the list says {item.size}",
                                 "hv:size")
            files[item.file] = path
        return repository.register(doc, files, caller)


def expire(repository, subscription: Subscription,
           log: Callable[[str], None] = lambda line: None) -> list[str]:
    """Delete the subscription's images (its list has expired); their references."""
    gone = []
    for record in owned(repository, subscription):
        repository.delete(record.id, subscription.caller)
        gone.append(record.ref)
        log(f"deleted {record.ref}: the list has expired")
    return gone


# --------------------------------------------------------------------------- state -----------

@dataclass(frozen=True)
class SubscriptionState:
    """What the catalogue remembers of a subscription."""

    name: str
    url: str
    list_identifier: str | None
    list_version: str | None
    endorser: str | None
    expires: datetime | None
    refreshed: datetime | None
    checked: datetime | None
    error: str | None


def load_state(repository, name: str) -> SubscriptionState | None:
    with session_scope(repository._sessions) as session:
        row = session.get(SubscriptionRow, name)
        return None if row is None else _state(row)


def states(repository) -> list[SubscriptionState]:
    with session_scope(repository._sessions) as session:
        return [_state(row) for row in
                session.scalars(select(SubscriptionRow).order_by(SubscriptionRow.name))]


def _state(row: SubscriptionRow) -> SubscriptionState:
    return SubscriptionState(row.name, row.url, row.list_identifier, row.list_version,
                             row.endorser, _utc(row.expires), _utc(row.refreshed),
                             _utc(row.checked), row.error)


def _utc(stamp: datetime | None) -> datetime | None:
    return stamp if stamp is None or stamp.tzinfo else stamp.replace(tzinfo=UTC)


def save_state(repository, subscription: Subscription, checked: datetime, *,
               image_list: ImageList | None = None, error: str | None = None) -> None:
    """Record a refresh: the accepted list (and its expiry), or why it failed."""
    with session_scope(repository._sessions) as session:
        row = session.get(SubscriptionRow, subscription.name)
        if row is None:
            row = SubscriptionRow(name=subscription.name, url=subscription.url)
            session.add(row)
        row.url, row.checked, row.error = subscription.url, checked, error
        if image_list is not None:
            row.list_identifier, row.list_version = image_list.identifier, image_list.version
            row.endorser, row.expires = image_list.endorser.dn, image_list.expires
            row.refreshed = checked
        session.commit()
