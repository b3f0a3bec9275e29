"""An OAI-PMH 2.0 data provider over the image catalogue: request arguments in, XML out.

All six verbs (Identify, ListMetadataFormats, ListSets, ListIdentifiers, ListRecords,
GetRecord).  Items are image versions, identified ``oai:<repositoryIdentifier>:<image id>``;
a record's datestamp is the image's last status change (``updated``).  Formats: ``oai_dc``
(Dublin Core) and ``gridvm`` (the full metadata document as XML, see :func:`document_xml`).
Sets: ``vo:<VO>``, ``community:<community>``, ``purpose:<purpose>``.  Deleted images stay
as deleted records (``deletedRecord`` persistent).  Lists come in pages of
``page_size`` with resumption tokens (the position in (datestamp, id) order, so pages stay
consistent while images are added).  Errors are the protocol's codes (``badArgument``,
``badVerb``, ``badResumptionToken``, ``cannotDisseminateFormat``, ``idDoesNotExist``,
``noRecordsMatch``, ``noMetadataFormats``), answered with HTTP 200 as the protocol says.

The caller decides visibility exactly as the repository does (``image_repo.access``): an
anonymous harvester (:data:`ANONYMOUS`) sees only images readable by "others" that name no
VO.  Records are read straight from the catalogue tables, page by page.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree
from sqlalchemy import and_, exists, func, or_, select

from base.db import session_scope
from base.identity import Caller
from image_repo import access
from image_repo.models import ImageLabelRow, ImageRow

OAI = "http://www.openarchives.org/OAI/2.0/"
OAI_SCHEMA = "http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd"
OAI_DC = "http://www.openarchives.org/OAI/2.0/oai_dc/"
OAI_DC_SCHEMA = "http://www.openarchives.org/OAI/2.0/oai_dc.xsd"
DC = "http://purl.org/dc/elements/1.1/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
GRIDVM = "urn:gridvm:image-metadata:1"
GRIDVM_SCHEMA = "urn:gridvm:image-metadata:1:docs/image-metadata.md"
FORMATS = {"oai_dc": (OAI_DC_SCHEMA, OAI_DC), "gridvm": (GRIDVM_SCHEMA, GRIDVM)}
SET_KINDS = {"vo": "VO", "community": "community", "purpose": "purpose"}

#: the harvester without credentials
ANONYMOUS = Caller.of("(anonymous harvester)")

_VERBS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # verb: (required, optional); resumptionToken is exclusive where allowed
    "Identify": (frozenset(), frozenset()),
    "ListMetadataFormats": (frozenset(), frozenset({"identifier"})),
    "ListSets": (frozenset(), frozenset({"resumptionToken"})),
    "GetRecord": (frozenset({"identifier", "metadataPrefix"}), frozenset()),
    "ListIdentifiers": (frozenset({"metadataPrefix"}),
                        frozenset({"from", "until", "set", "resumptionToken"})),
    "ListRecords": (frozenset({"metadataPrefix"}),
                    frozenset({"from", "until", "set", "resumptionToken"})),
}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MAX_ARGUMENT = 1024
MAX_ARGUMENTS = 8
#: A character XML 1.0 cannot carry (control characters, surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BATCH_FACTOR = 4


class OaiError(Exception):
    """One OAI-PMH error condition: its code and a message for the harvester."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class ProviderInfo:
    """What Identify says, and the page size of lists."""

    repository_name: str
    base_url: str
    admin_email: str
    repository_identifier: str  #: e.g. ``gridvm.example.org``
    page_size: int = 100


@dataclass(frozen=True)
class _Query:
    """A list request, and where its next page starts (what a resumption token carries)."""

    prefix: str
    set_spec: str | None
    start: datetime | None
    until: datetime | None
    after: tuple[datetime, str] | None = None
    cursor: int = 0
    size: int | None = None

    def token(self) -> str:
        doc = {"p": self.prefix, "s": self.set_spec, "f": _stamp(self.start),
               "u": _stamp(self.until), "a": [_stamp(self.after[0]), self.after[1]]
               if self.after else None, "c": self.cursor, "n": self.size}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> _Query:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            doc = json.loads(raw)
            after = doc["a"]
            query = cls(doc["p"], doc["s"], _parse(doc["f"]), _parse(doc["u"]),
                        (_parse(after[0]), str(after[1])) if after else None,
                        int(doc["c"]), None if doc["n"] is None else int(doc["n"]))
        except (binascii.Error, ValueError, TypeError, KeyError, IndexError,
                UnicodeDecodeError):
            raise OaiError("badResumptionToken", "the resumption token is not one this "
                                                 "repository issued") from None
        if query.prefix not in FORMATS or (query.set_spec is not None and
                                           not isinstance(query.set_spec, str)):
            raise OaiError("badResumptionToken", "the resumption token is damaged")
        return query


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SECOND.fullmatch(value):
        raise ValueError(value)
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _utc(stamp: datetime) -> datetime:
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


@dataclass(frozen=True)
class _Item:
    id: str
    status: str
    updated: datetime
    document: Mapping[str, Any]
    sets: tuple[str, ...]

    @property
    def deleted(self) -> bool:
        return self.status == "deleted"


class OaiProvider:
    """Answers OAI-PMH requests over an :class:`~image_repo.repository.ImageRepository`."""

    def __init__(self, repository, info: ProviderInfo, clock=lambda: datetime.now(UTC)):
        self.repository, self.info, self.clock = repository, info, clock
        self._sessions = repository._sessions
        self._naive = repository.engine.dialect.name == "sqlite"  # it keeps UTC without zone

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, arguments: Mapping[str, Sequence[str]], caller: Caller = ANONYMOUS
               ) -> bytes:
        """The OAI-PMH response document for one request's arguments (GET query or POST
        form), as UTF-8 XML."""
        root, request = self._envelope()
        verb = None
        try:
            args = self._arguments(arguments)
            verb = args.pop("verb", None)
            if verb is None or verb not in _VERBS:
                raise OaiError("badVerb", "no verb given" if verb is None
                               else f"{verb!r} is not an OAI-PMH verb")
            self._check(verb, args)
            for key, value in args.items():
                request.set(key, value)
            request.set("verb", verb)
            root.append(getattr(self, f"_{verb}")(args, caller))
        except OaiError as err:
            if err.code in ("badVerb", "badArgument"):
                for key in list(request.attrib):
                    del request.attrib[key]
            error = etree.SubElement(root, f"{{{OAI}}}error", code=err.code)
            error.text = err.message
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def _envelope(self) -> tuple[etree._Element, etree._Element]:
        root = etree.Element(f"{{{OAI}}}OAI-PMH", nsmap={None: OAI, "xsi": XSI})
        root.set(f"{{{XSI}}}schemaLocation", f"{OAI} {OAI_SCHEMA}")
        etree.SubElement(root, f"{{{OAI}}}responseDate").text = _stamp(self.clock())
        request = etree.SubElement(root, f"{{{OAI}}}request")
        request.text = self.info.base_url
        return root, request

    @staticmethod
    def _arguments(arguments: Mapping[str, Sequence[str]]) -> dict[str, str]:
        if len(arguments) > MAX_ARGUMENTS:
            raise OaiError("badArgument", f"more than {MAX_ARGUMENTS} arguments")
        args = {}
        for key, values in arguments.items():
            if len(values) != 1:
                raise OaiError("badArgument", f"{key} is given {len(values)} times")
            if _NOT_XML.search(key) or _NOT_XML.search(values[0]):
                raise OaiError("badArgument", "an argument holds characters XML cannot carry")
            if len(values[0]) > MAX_ARGUMENT or len(key) > 64:
                raise OaiError("badArgument", f"{key[:64]} is longer than {MAX_ARGUMENT} "
                                              "characters")
            args[key] = values[0]
        return args

    @staticmethod
    def _check(verb: str, args: dict[str, str]) -> None:
        required, optional = _VERBS[verb]
        unknown = sorted(set(args) - required - optional)
        if unknown:
            raise OaiError("badArgument", f"{verb} does not take {', '.join(unknown)}")
        if "resumptionToken" in args:
            if len(args) > 1:
                raise OaiError("badArgument", "resumptionToken is an exclusive argument")
            return
        missing = sorted(required - set(args))
        if missing:
            raise OaiError("badArgument", f"{verb} needs {', '.join(missing)}")

    # -- verbs -------------------------------------------------------------------------------

    def _Identify(self, args, caller) -> etree._Element:
        node = etree.Element(f"{{{OAI}}}Identify")
        earliest = self._earliest()
        for tag, text in (("repositoryName", self.info.repository_name),
                          ("baseURL", self.info.base_url), ("protocolVersion", "2.0"),
                          ("adminEmail", self.info.admin_email),
                          ("earliestDatestamp", _stamp(earliest)),
                          ("deletedRecord", "persistent"),
                          ("granularity", "YYYY-MM-DDThh:mm:ssZ")):
            etree.SubElement(node, f"{{{OAI}}}{tag}").text = text
        description = etree.SubElement(node, f"{{{OAI}}}description")
        ident_ns = "http://www.openarchives.org/OAI/2.0/oai-identifier"
        ident = etree.SubElement(description, f"{{{ident_ns}}}oai-identifier",
                                 nsmap={None: ident_ns})
        for tag, text in (("scheme", "oai"),
                          ("repositoryIdentifier", self.info.repository_identifier),
                          ("delimiter", ":"),
                          ("sampleIdentifier", self._identifier("0" * 32))):
            etree.SubElement(ident, f"{{{ident_ns}}}{tag}").text = text
        return node

    def _ListMetadataFormats(self, args, caller) -> etree._Element:
        if "identifier" in args:
            self._item(args["identifier"], caller)
        node = etree.Element(f"{{{OAI}}}ListMetadataFormats")
        for prefix, (schema, namespace) in FORMATS.items():
            fmt = etree.SubElement(node, f"{{{OAI}}}metadataFormat")
            etree.SubElement(fmt, f"{{{OAI}}}metadataPrefix").text = prefix
            etree.SubElement(fmt, f"{{{OAI}}}schema").text = schema
            etree.SubElement(fmt, f"{{{OAI}}}metadataNamespace").text = namespace
        return node

    def _ListSets(self, args, caller) -> etree._Element:
        if "resumptionToken" in args:
            raise OaiError("badResumptionToken", "ListSets is answered in one piece; there "
                                                 "is nothing to resume")
        found: set[str] = set()
        for item in self._scan(caller, None, None, None, with_documents=True):
            found.update(item.sets)
        node = etree.Element(f"{{{OAI}}}ListSets")
        for spec in sorted(found):
            kind, _, value = spec.partition(":")
            entry = etree.SubElement(node, f"{{{OAI}}}set")
            etree.SubElement(entry, f"{{{OAI}}}setSpec").text = spec
            etree.SubElement(entry, f"{{{OAI}}}setName").text = f"{SET_KINDS[kind]} {value}"
        if not found:
            raise OaiError("noSetHierarchy", "no image visible to you is in a set")
        return node

    def _GetRecord(self, args, caller) -> etree._Element:
        prefix = self._prefix(args["metadataPrefix"])
        node = etree.Element(f"{{{OAI}}}GetRecord")
        node.append(self._record(self._item(args["identifier"], caller), prefix))
        return node

    def _ListIdentifiers(self, args, caller) -> etree._Element:
        return self._list("ListIdentifiers", args, caller, headers_only=True)

    def _ListRecords(self, args, caller) -> etree._Element:
        return self._list("ListRecords", args, caller, headers_only=False)

    # -- lists ---------------------------------------------------------------------------------

    def _list(self, verb: str, args, caller, headers_only: bool) -> etree._Element:
        if "resumptionToken" in args:
            query = _Query.from_token(args["resumptionToken"])
        else:
            query = self._new_query(args)
        size = self.info.page_size
        items = []
        more = False
        for item in self._scan(caller, query.set_spec, query.start, query.until,
                               after=query.after, with_documents=not headers_only or
                               bool(query.set_spec and query.set_spec.startswith("purpose:"))):
            if len(items) == size:
                more = True
                break
            items.append(item)
        if not items:
            if query.after is not None:
                raise OaiError("badResumptionToken", "the list this token continues has "
                                                     "ended")
            raise OaiError("noRecordsMatch", "no record matches the request")
        total = query.size
        if total is None:
            total = len(items) if not more else self._count(caller, query)
        node = etree.Element(f"{{{OAI}}}{verb}")
        for item in items:
            if headers_only:
                node.append(self._header(item))
            else:
                node.append(self._record(item, query.prefix))
        if more or query.after is not None:
            token = etree.SubElement(node, f"{{{OAI}}}resumptionToken",
                                     completeListSize=str(total), cursor=str(query.cursor))
            if more:
                last = items[-1]
                token.text = _Query(query.prefix, query.set_spec, query.start, query.until,
                                    (_utc(last.updated), last.id), query.cursor + len(items),
                                    total).token()
        return node

    def _new_query(self, args) -> _Query:
        prefix = self._prefix(args["metadataPrefix"])
        start, start_kind = self._date(args.get("from"), "from", end=False)
        until, until_kind = self._date(args.get("until"), "until", end=True)
        if start_kind and until_kind and start_kind != until_kind:
            raise OaiError("badArgument", "from and until have different granularities")
        if start and until and start > until:
            raise OaiError("badArgument", "from is later than until")
        set_spec = args.get("set")
        if set_spec is not None:
            kind, _, value = set_spec.partition(":")
            if kind not in SET_KINDS or not value:
                raise OaiError("badArgument", f"{set_spec!r} is not a set of this repository "
                                              "(vo:NAME, community:NAME, purpose:NAME)")
        return _Query(prefix, set_spec, start, until)

    @staticmethod
    def _prefix(prefix: str) -> str:
        if prefix not in FORMATS:
            raise OaiError("cannotDisseminateFormat",
                           f"{prefix!r} is not offered (offered: {', '.join(FORMATS)})")
        return prefix

    @staticmethod
    def _date(value: str | None, name: str, end: bool) -> tuple[datetime | None, str | None]:
        if value is None:
            return None, None
        if _SECOND.fullmatch(value):
            try:
                return _parse(value), "second"
            except ValueError:
                pass
        elif _DAY.fullmatch(value):
            try:
                day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                pass
            else:
                return (day + timedelta(days=1) - timedelta(seconds=1) if end else day), "day"
        raise OaiError("badArgument", f"{name} must be YYYY-MM-DD or YYYY-MM-DDThh:mm:ssZ, "
                                      f"got {value!r}")

    # -- reading the catalogue -------------------------------------------------------------------

    def _select(self, set_spec, start, until, columns):
        query = select(*columns)
        if start is not None:
            query = query.where(ImageRow.updated >= self._db_time(start))
        if until is not None:
            query = query.where(ImageRow.updated <= self._db_time(until))
        if set_spec is not None:
            kind, _, value = set_spec.partition(":")
            if kind in ("vo", "community"):
                query = query.where(exists().where(
                    ImageLabelRow.image_id == ImageRow.id, ImageLabelRow.kind == kind,
                    ImageLabelRow.value == value))
        return query

    def _scan(self, caller: Caller, set_spec, start, until, *, after=None,
              with_documents: bool) -> Iterator[_Item]:
        """Visible items in (datestamp, id) order, read in batches."""
        columns = [ImageRow.id, ImageRow.status, ImageRow.owner, ImageRow.group_name,
                   ImageRow.mode, ImageRow.updated]
        if with_documents:
            columns.append(ImageRow.document)
        batch = self.info.page_size * _BATCH_FACTOR
        purpose = set_spec.partition(":")[2] if set_spec and set_spec.startswith(
            "purpose:") else None
        while True:
            query = self._select(set_spec, start, until, columns)
            if after is not None:
                stamp, last_id = self._db_time(after[0]), after[1]
                query = query.where(or_(ImageRow.updated > stamp,
                                        and_(ImageRow.updated == stamp,
                                             ImageRow.id > last_id)))
            query = query.order_by(ImageRow.updated, ImageRow.id).limit(batch)
            with session_scope(self._sessions) as session:
                rows = session.execute(query).all()
                labels = self._labels(session, [r.id for r in rows])
            for row in rows:
                vos, communities = labels.get(row.id, (frozenset(), frozenset()))
                if not access.can_read(caller, row.owner, row.group_name, row.mode, vos):
                    continue
                document = row.document if with_documents else {}
                purposes = document.get("general", {}).get("purposes", []) if document else []
                if purpose is not None and purpose not in purposes:
                    continue
                sets = tuple([f"vo:{v}" for v in sorted(vos)] +
                             [f"community:{c}" for c in sorted(communities)] +
                             [f"purpose:{p}" for p in purposes])
                yield _Item(row.id, row.status, _utc(row.updated), document, sets)
            if len(rows) < batch:
                return
            after = (rows[-1].updated, rows[-1].id)

    def _db_time(self, stamp: datetime) -> datetime:
        stamp = _utc(stamp)
        return stamp.replace(tzinfo=None) if self._naive else stamp

    @staticmethod
    def _labels(session, ids: list[str]) -> dict[str, tuple[frozenset, frozenset]]:
        found: dict[str, tuple[set, set]] = {}
        for start in range(0, len(ids), 500):
            for image_id, kind, value in session.execute(
                    select(ImageLabelRow.image_id, ImageLabelRow.kind, ImageLabelRow.value)
                    .where(ImageLabelRow.image_id.in_(ids[start:start + 500]))):
                pair = found.setdefault(image_id, (set(), set()))
                pair[0 if kind == "vo" else 1].add(value)
        return {k: (frozenset(v), frozenset(c)) for k, (v, c) in found.items()}

    def _count(self, caller: Caller, query: _Query) -> int:
        purpose = query.set_spec and query.set_spec.startswith("purpose:")
        return sum(1 for _ in self._scan(caller, query.set_spec, query.start, query.until,
                                         with_documents=bool(purpose)))

    def _earliest(self) -> datetime:
        with session_scope(self._sessions) as session:
            earliest = session.execute(select(func.min(ImageRow.updated))).scalar()
        return _utc(earliest) if earliest is not None else self.clock()

    def _item(self, identifier: str, caller: Caller) -> _Item:
        prefix = f"oai:{self.info.repository_identifier}:"
        image_id = identifier.removeprefix(prefix) if identifier.startswith(prefix) else ""
        if not re.fullmatch(r"[0-9a-f]{32}", image_id):
            raise OaiError("idDoesNotExist", f"{identifier[:200]!r} is not an identifier of "
                                             "this repository")
        with session_scope(self._sessions) as session:
            row = session.get(ImageRow, image_id)
            labels = self._labels(session, [image_id])
            if row is not None:
                session.expunge(row)
        vos, communities = labels.get(image_id, (frozenset(), frozenset()))
        if row is None or not access.can_read(caller, row.owner, row.group_name, row.mode,
                                              vos):
            raise OaiError("idDoesNotExist", f"no record {identifier[:200]!r}")
        purposes = row.document.get("general", {}).get("purposes", [])
        sets = tuple([f"vo:{v}" for v in sorted(vos)] +
                     [f"community:{c}" for c in sorted(communities)] +
                     [f"purpose:{p}" for p in purposes])
        return _Item(row.id, row.status, _utc(row.updated), row.document, sets)

    # -- records -------------------------------------------------------------------------------

    def _identifier(self, image_id: str) -> str:
        return f"oai:{self.info.repository_identifier}:{image_id}"

    def _header(self, item: _Item) -> etree._Element:
        header = etree.Element(f"{{{OAI}}}header")
        if item.deleted:
            header.set("status", "deleted")
        etree.SubElement(header, f"{{{OAI}}}identifier").text = self._identifier(item.id)
        etree.SubElement(header, f"{{{OAI}}}datestamp").text = _stamp(item.updated)
        for spec in item.sets:
            etree.SubElement(header, f"{{{OAI}}}setSpec").text = spec
        return header

    def _record(self, item: _Item, prefix: str) -> etree._Element:
        record = etree.Element(f"{{{OAI}}}record")
        record.append(self._header(item))
        if item.deleted:
            return record
        metadata = etree.SubElement(record, f"{{{OAI}}}metadata")
        doc = _with_kept_fields(item)
        metadata.append(dublin_core(item.id, doc) if prefix == "oai_dc"
                        else document_xml(item.id, doc))
        return record


def _with_kept_fields(item: _Item) -> dict[str, Any]:
    doc = json.loads(json.dumps(item.document))
    general = doc.setdefault("general", {})
    general["status"], general["updated"] = item.status, _stamp(item.updated)
    return doc


def dublin_core(image_id: str, doc: Mapping[str, Any]) -> etree._Element:
    """An image as ``oai_dc``: title, creator, subjects, description, date, type, format,
    identifiers and its base as relation."""
    general, origin = doc.get("general", {}), doc.get("origin", {})
    root = etree.Element(f"{{{OAI_DC}}}dc", nsmap={"oai_dc": OAI_DC, "dc": DC, "xsi": XSI})
    root.set(f"{{{XSI}}}schemaLocation", f"{OAI_DC} {OAI_DC_SCHEMA}")

    def add(tag: str, text: Any) -> None:
        if text not in (None, ""):
            etree.SubElement(root, f"{{{DC}}}{tag}").text = _xml_text(str(text))

    add("title", general.get("title") or general.get("name"))
    add("creator", general.get("owner"))
    for subject in [*general.get("communities", []), *general.get("purposes", [])]:
        add("subject", subject)
    add("description", general.get("description"))
    add("date", general.get("created"))
    add("type", "Software")
    add("format", origin.get("content_type"))
    add("identifier", image_id)
    add("identifier", f"{general.get('name')}:{general.get('version')}")
    add("source", origin.get("source_url"))
    add("relation", general.get("base_image"))
    return root


def document_xml(image_id: str, doc: Mapping[str, Any]) -> etree._Element:
    """The full metadata document in the ``gridvm`` format: one element per key (a key that
    is no XML name becomes ``<entry key="…">``), ``<item>`` per array member."""
    root = etree.Element(f"{{{GRIDVM}}}image", nsmap={"gridvm": GRIDVM}, id=image_id)
    _fill(root, doc)
    return root


def _fill(parent: etree._Element, value: Any) -> None:
    if isinstance(value, Mapping):
        for key, child in value.items():
            if child is None:
                continue
            if _NAME.fullmatch(key) and not key.lower().startswith("xml"):
                node = etree.SubElement(parent, f"{{{GRIDVM}}}{key}")
            else:
                node = etree.SubElement(parent, f"{{{GRIDVM}}}entry", key=_xml_text(key))
            _fill(node, child)
    elif isinstance(value, list):
        for child in value:
            _fill(etree.SubElement(parent, f"{{{GRIDVM}}}item"), child)
    elif isinstance(value, bool):
        parent.text = "true" if value else "false"
    else:
        parent.text = _xml_text(str(value))


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry (control characters become U+FFFD)."""
    return _CONTROL.sub("\ufffd", text)
