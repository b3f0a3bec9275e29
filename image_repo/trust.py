"""Image endorsements and the site's trust policy.

An **endorsement** says "the holder of this X.509 key vouches for image X with exactly these
files until T" — what HEPiX image lists (endorser DN, expiry, sha512 per image) and Glance's
``img_signature`` say, for one image version.  It is a detached signature over a canonical
**statement**, plus the endorser's certificate (PEM)::

    {"endorser":"CN=Image Team,O=Grid","expires":"2027-01-31T00:00:00Z",
     "files":{"initrd.img":"e3de…","vmlinuz":"ac6c…"},"image":"2e6d8df2a613…",
     "name":"gridvm-debian12-initramfs","signed":"2026-01-31T12:00:00Z",
     "statement":"gridvm-image-endorsement/1","version":1}

(compact JSON, keys sorted, ASCII, on one line; docs/image-metadata.md has it byte by byte).
Keys: RSA (PKCS#1 v1.5, SHA-512), ECDSA (SHA-512) and Ed25519.  :func:`create_endorsement`
runs where the private key is (the CLI); the repository stores statement, signature and
certificate, never a key, and accepts only what :func:`check_endorsement` accepts.

A :class:`TrustPolicy` (anchors: endorser or CA certificates; ``require``; a clock) judges an
image's endorsements *now*: the image is trusted when at least one endorsement

- has a signature that verifies with its certificate's key,
- is about this image and covers exactly its content files (name → sha512),
- has not expired,
- comes from a certificate that is an anchor itself or directly issued by an anchor CA, and
  that certificate (and the issuing anchor) is within its validity period.

The :class:`Verdict` says why, per endorsement, in words and as data (:class:`Finding`).

Matching asks this for thousands of images per query, so what does not change with time
(signature, files) is checked once per endorsement when the catalogue index reads it
(:func:`summarize` → :class:`EndorsementSummary`), and the policy remembers per certificate
which anchor vouches for it; per image and query only a few comparisons with the clock remain.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from image_repo.errors import BadRequest, ImageUntrusted

STATEMENT = "gridvm-image-endorsement/1"
_KEYS = ("endorser", "expires", "files", "image", "name", "signed", "statement", "version")
_SHA512 = re.compile(r"[0-9a-f]{128}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

#: Finding codes, in the order a policy checks them
ENDORSED = "ENDORSED"
NOT_ENDORSED = "NOT_ENDORSED"
MALFORMED = "MALFORMED"
BAD_SIGNATURE = "BAD_SIGNATURE"
OTHER_IMAGE = "OTHER_IMAGE"
OTHER_FILES = "OTHER_FILES"
UNTRUSTED_ENDORSER = "UNTRUSTED_ENDORSER"
CERTIFICATE_NOT_VALID = "CERTIFICATE_NOT_VALID"
EXPIRED = "EXPIRED"


def utc_iso(stamp: datetime) -> str:
    """``2027-01-31T00:00:00Z`` (whole seconds, UTC; a naive time is taken as UTC)."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_utc(text: Any, path: str) -> datetime:
    """The inverse of :func:`utc_iso`, strictly; BadRequest naming ``path`` otherwise."""
    if isinstance(text, str) and _TIMESTAMP.fullmatch(text):
        try:
            return datetime.fromisoformat(text)  # (the index parses many: strptime is slow)
        except ValueError:  # 2026-02-30T…
            pass
    raise BadRequest(f"expected a UTC time like 2027-01-31T00:00:00Z, got {text!r}", path)


def _now() -> datetime:
    return datetime.now(UTC)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER bytes, 64 hex digits."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def subject_dn(certificate: x509.Certificate) -> str:
    """The certificate's subject as an RFC 4514 string (``CN=Image Team,O=Grid``)."""
    return certificate.subject.rfc4514_string()


def load_certificate(pem: bytes | str, path: str = "certificate") -> x509.Certificate:
    """Exactly one PEM certificate; BadRequest otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BadRequest("is not a PEM certificate", path) from None
    if len(certificates) != 1:
        raise BadRequest(f"expected one certificate, found {len(certificates)}", path)
    return certificates[0]


def load_anchors(source: str | Path) -> list[x509.Certificate]:
    """The certificates of a PEM bundle file; BadRequest when it holds none."""
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise BadRequest(f"cannot read {source}: {err.strerror}", "anchors") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BadRequest(f"{source} holds no PEM certificate", "anchors") from None


class PassphraseNeeded(BadRequest):
    """The private key is encrypted and no passphrase was given."""


# --------------------------------------------------------------------------- statements ------

@dataclass(frozen=True)
class ImageIdentity:
    """What an endorsement is about: one image version and its content files."""

    id: str
    name: str
    version: int
    files: Mapping[str, str]  #: file name -> sha512

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Statement:
    """The signed claims; :meth:`to_bytes` is the canonical form that is signed."""

    image: str
    name: str
    version: int
    files: Mapping[str, str]
    endorser: str
    signed: datetime
    expires: datetime

    def to_bytes(self) -> bytes:
        doc = {"statement": STATEMENT, "image": self.image, "name": self.name,
               "version": self.version, "files": dict(self.files), "endorser": self.endorser,
               "signed": utc_iso(self.signed), "expires": utc_iso(self.expires)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")

    @classmethod
    def parse(cls, data: bytes, path: str = "endorsement.statement") -> Statement:
        """Strict: every key, nothing else, the right types, and in canonical form."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest("is not JSON", path) from None
        if not isinstance(doc, dict) or sorted(doc) != list(_KEYS):
            found = ", ".join(sorted(doc)) if isinstance(doc, dict) else type(doc).__name__
            raise BadRequest(f"expected the keys {', '.join(_KEYS)}; got {found}", path)
        if doc["statement"] != STATEMENT:
            raise BadRequest(f"is a {doc['statement']!r} statement, expected {STATEMENT!r}",
                             f"{path}.statement")
        for key in ("image", "name", "endorser"):
            if not isinstance(doc[key], str) or not doc[key]:
                raise BadRequest("expected a non-empty string", f"{path}.{key}")
        version = doc["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BadRequest(f"expected a positive integer, got {version!r}", f"{path}.version")
        files = doc["files"]
        if not isinstance(files, dict) or not all(
                isinstance(v, str) and _SHA512.fullmatch(v) for v in files.values()):
            raise BadRequest("expected an object of file name -> sha512 (128 hex digits)",
                             f"{path}.files")
        statement = cls(doc["image"], doc["name"], version, files, doc["endorser"],
                        parse_utc(doc["signed"], f"{path}.signed"),
                        parse_utc(doc["expires"], f"{path}.expires"))
        if statement.expires <= statement.signed:
            raise BadRequest("expires before it was signed", f"{path}.expires")
        if statement.to_bytes() != data:
            raise BadRequest("is not in canonical form (compact JSON, sorted keys, ASCII)", path)
        return statement


@dataclass(frozen=True)
class Endorsement:
    """What an endorser hands over: the statement as signed, the signature, the certificate."""

    statement: bytes
    signature: bytes
    certificate: bytes  #: PEM

    def to_dict(self) -> dict[str, str]:
        return {"statement": self.statement.decode("ascii", "replace"),
                "signature": base64.b64encode(self.signature).decode("ascii"),
                "certificate": self.certificate.decode("ascii", "replace")}

    @classmethod
    def from_dict(cls, doc: Any) -> Endorsement:
        if not isinstance(doc, Mapping) or sorted(doc) != ["certificate", "signature",
                                                           "statement"]:
            raise BadRequest("expected an object with statement, signature and certificate",
                             "endorsement")
        for key in ("statement", "signature", "certificate"):
            if not isinstance(doc[key], str):
                raise BadRequest("expected a string", f"endorsement.{key}")
        try:
            signature = base64.b64decode(doc["signature"], validate=True)
        except binascii.Error:
            raise BadRequest("is not base64", "endorsement.signature") from None
        return cls(doc["statement"].encode(), signature, doc["certificate"].encode())


# --------------------------------------------------------------------------- signatures ------

def _sign(key: Any, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA512())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA512()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise BadRequest(f"a {type(key).__name__} cannot sign endorsements (RSA, ECDSA or "
                     "Ed25519 can)", "key")


def _verifies(public: Any, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA512())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA512()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _supported(certificate: x509.Certificate, path: str) -> None:
    try:
        public = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BadRequest("has a public key gridvm cannot read", path) from None
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey):
        raise BadRequest(f"has a {type(public).__name__}; endorsements are signed with RSA, "
                         "ECDSA or Ed25519 keys", path)


def _spki(public: Any) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def create_endorsement(image: ImageIdentity, certificate_pem: bytes, key_pem: bytes, *,
                       expires: datetime, signed: datetime | None = None,
                       password: bytes | None = None) -> Endorsement:
    """Sign a statement about ``image`` with the endorser's key (run where the key is).

    Raises BadRequest for a certificate or key that cannot be read or do not belong together.
    """
    certificate = load_certificate(certificate_pem, "certificate")
    _supported(certificate, "certificate")
    try:
        key = serialization.load_pem_private_key(key_pem, password)
    except TypeError:
        if password is None:
            raise PassphraseNeeded("the key is encrypted: its passphrase is needed",
                                   "key") from None
        raise BadRequest("the key is not encrypted: give no passphrase", "key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadRequest("cannot read the private key (not PEM, or a wrong passphrase)",
                         "key") from None
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise BadRequest(f"the key does not belong to the certificate of "
                         f"{subject_dn(certificate)}", "key")
    statement = Statement(image.id, image.name, image.version, dict(image.files),
                          subject_dn(certificate), (signed or _now()).replace(microsecond=0),
                          expires.replace(microsecond=0))
    if statement.expires <= statement.signed:
        raise BadRequest(f"the expiry {utc_iso(statement.expires)} is not after the signing "
                         f"time {utc_iso(statement.signed)}", "expires")
    data = statement.to_bytes()
    return Endorsement(data, _sign(key, data), certificate.public_bytes(
        serialization.Encoding.PEM))


# --------------------------------------------------------------------------- checks ----------

@dataclass(frozen=True)
class Finding:
    """What a policy found about one endorsement (or that there is none)."""

    code: str  #: ENDORSED, NOT_ENDORSED, BAD_SIGNATURE, OTHER_FILES, EXPIRED, …
    message: str  #: a sentence for the user
    endorser: str | None = None  #: subject DN
    fingerprint: str | None = None  #: of the endorser certificate
    at: str | None = None  #: the time that matters (expired on, valid until), ISO UTC

    @property
    def holds(self) -> bool:
        return self.code == ENDORSED

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "endorser": self.endorser,
                "fingerprint": self.fingerprint, "at": self.at}


@dataclass(frozen=True)
class Inspected:
    """An endorsement that is well-formed: its statement and certificate, parsed."""

    endorsement: Endorsement
    statement: Statement
    certificate: x509.Certificate
    fingerprint: str


def inspect(endorsement: Endorsement) -> Inspected:
    """Parse and check the form of an endorsement; BadRequest when it is malformed."""
    certificate = load_certificate(endorsement.certificate, "endorsement.certificate")
    _supported(certificate, "endorsement.certificate")
    statement = Statement.parse(endorsement.statement)
    if statement.endorser != subject_dn(certificate):
        raise BadRequest(f"names the endorser {statement.endorser!r}, but the certificate is "
                         f"{subject_dn(certificate)!r}", "endorsement.statement.endorser")
    return Inspected(endorsement, statement, certificate, fingerprint(certificate))


def _defect(inspected: Inspected, image: ImageIdentity) -> Finding | None:
    """What keeps a well-formed endorsement from vouching for ``image`` at any time."""
    statement, who = inspected.statement, inspected.statement.endorser
    fp = inspected.fingerprint
    if not _verifies(inspected.certificate.public_key(), inspected.endorsement.signature,
                     inspected.endorsement.statement):
        return Finding(BAD_SIGNATURE, f"the signature of the endorsement by {who} does not "
                       "verify with its certificate's key", who, fp)
    if (statement.image, statement.name, statement.version) != (image.id, image.name,
                                                                 image.version):
        return Finding(OTHER_IMAGE, f"the endorsement by {who} is about image "
                       f"{statement.name}:{statement.version} ({statement.image[:12]}), not "
                       f"{image.ref} ({image.id[:12]})", who, fp)
    if dict(statement.files) != dict(image.files):
        differ = sorted(set(statement.files) ^ set(image.files)) + sorted(
            f for f in set(statement.files) & set(image.files)
            if statement.files[f] != image.files[f])
        return Finding(OTHER_FILES, f"the endorsement by {who} covers other files than "
                       f"{image.ref} (differing: {', '.join(differ)})", who, fp)
    return None


def check_endorsement(endorsement: Endorsement, image: ImageIdentity,
                      now: datetime) -> Inspected:
    """What the repository accepts: a well-formed endorsement (else BadRequest) whose
    signature verifies, that is about ``image`` and its files, and that has not expired
    (else ImageUntrusted).  Whether the endorser is trusted is the policy's business."""
    inspected = inspect(endorsement)
    defect = _defect(inspected, image)
    if defect is not None:
        raise ImageUntrusted(defect.message)
    who = inspected.statement.endorser
    if inspected.statement.expires <= now:
        raise ImageUntrusted(f"the endorsement by {who} expired on "
                             f"{utc_iso(inspected.statement.expires)}")
    if inspected.certificate.not_valid_after_utc <= now:
        raise ImageUntrusted(f"the certificate of {who} expired on "
                             f"{utc_iso(inspected.certificate.not_valid_after_utc)}")
    return inspected


# --------------------------------------------------------------------------- stored ----------

@dataclass(frozen=True)
class StoredEndorsement:
    """An endorsement as the repository keeps it, attached to one image."""

    endorser: str
    fingerprint: str
    certificate: str  #: PEM
    statement: str  #: canonical JSON, as signed
    signature: bytes
    signed: datetime
    expires: datetime
    attached_by: str  #: the user who attached it (may withdraw it)

    def endorsement(self) -> Endorsement:
        return Endorsement(self.statement.encode(), self.signature, self.certificate.encode())

    def to_dict(self) -> dict[str, Any]:
        return {"endorser": self.endorser, "fingerprint": self.fingerprint,
                "signed": utc_iso(self.signed), "expires": utc_iso(self.expires),
                "attached_by": self.attached_by, **self.endorsement().to_dict()}


@dataclass(frozen=True, slots=True)
class EndorsementSummary:
    """What the index keeps per endorsement: enough for a policy to judge it at any time."""

    endorser: str
    fingerprint: str
    expires: float  #: seconds since the epoch
    not_before: float  #: the certificate's validity
    not_after: float
    certificate: x509.Certificate | None  #: shared between summaries (None when malformed)
    defect: Finding | None  #: signature, image or files do not fit (checked once)


def summarize(stored: StoredEndorsement, image: ImageIdentity,
              certificates: dict[str, x509.Certificate] | None = None) -> EndorsementSummary:
    """Check what does not change with time once.  ``certificates`` (fingerprint →
    certificate) lets summaries share parsed certificates."""
    cache = certificates if certificates is not None else {}
    certificate = cache.get(stored.fingerprint)
    try:
        if certificate is None:
            certificate = load_certificate(stored.certificate)
            if fingerprint(certificate) != stored.fingerprint:
                raise BadRequest("its certificate is not the one it names")
            cache[stored.fingerprint] = certificate
        statement = Statement.parse(stored.statement.encode())
        if statement.endorser != subject_dn(certificate):
            raise BadRequest("its statement names another endorser than its certificate")
        defect = _defect(Inspected(stored.endorsement(), statement, certificate,
                                   stored.fingerprint), image)
    except BadRequest as err:
        certificate = None
        defect = Finding(MALFORMED, f"the endorsement by {stored.endorser} is damaged: {err}",
                         stored.endorser, stored.fingerprint)
    return EndorsementSummary(
        stored.endorser, stored.fingerprint, _epoch(stored.expires),
        certificate.not_valid_before_utc.timestamp() if certificate else 0.0,
        certificate.not_valid_after_utc.timestamp() if certificate else 0.0,
        certificate, defect)


def _epoch(stamp: datetime) -> float:
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _at(epoch: float) -> str:
    return utc_iso(datetime.fromtimestamp(epoch, UTC))


# --------------------------------------------------------------------------- policy ----------

@dataclass(frozen=True)
class Verdict:
    """Whether an image is trusted at ``checked``, and why: one finding per endorsement."""

    trusted: bool
    findings: tuple[Finding, ...]
    checked: datetime

    @property
    def endorsers(self) -> tuple[str, ...]:
        return tuple(f.endorser for f in self.findings if f.holds and f.endorser)

    @property
    def message(self) -> str:
        """The findings that hold when trusted, else every reason why not."""
        return "; ".join(f.message for f in self.findings if f.holds == self.trusted)

    def to_dict(self) -> dict[str, Any]:
        return {"trusted": self.trusted, "message": self.message,
                "checked": utc_iso(self.checked), "endorsers": list(self.endorsers),
                "reasons": [f.to_dict() for f in self.findings]}


class TrustPolicy:
    """The site's trust: ``anchors`` (endorser certificates trusted as they are, or CA
    certificates whose directly issued certificates are trusted), whether images must be
    endorsed (``require``), and a ``clock`` returning an aware UTC datetime (tests)."""

    def __init__(self, anchors: Iterable[x509.Certificate] = (), *, require: bool = False,
                 clock: Callable[[], datetime] = _now):
        self.anchors = tuple(anchors)
        self.require = require
        self.clock = clock
        self._anchor_prints = {fingerprint(a) for a in self.anchors}
        self._cas: dict[x509.Name, list[x509.Certificate]] = {}
        for anchor in self.anchors:
            if _is_ca(anchor):
                self._cas.setdefault(anchor.subject, []).append(anchor)
        #: endorser certificate fingerprint -> what vouches for it (None: nothing)
        self._issuers: dict[str, _Issuer | None] = {}

    @classmethod
    def from_file(cls, path: str | Path, **options) -> TrustPolicy:
        return cls(load_anchors(path), **options)

    def now(self) -> datetime:
        return self.clock()

    def _issuer(self, certificate: x509.Certificate, print_: str) -> _Issuer | None:
        """What vouches for an endorser certificate: it is an anchor itself (:data:`_SELF`),
        or the anchor CA that directly issued it; None: nothing (remembered per certificate)."""
        if print_ in self._issuers:
            return self._issuers[print_]
        found = _SELF if print_ in self._anchor_prints else None
        for ca in () if found else self._cas.get(certificate.issuer, ()):
            try:
                certificate.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            found = _Issuer(subject_dn(ca), ca.not_valid_before_utc.timestamp(),
                            ca.not_valid_after_utc.timestamp())
            break
        self._issuers[print_] = found
        return found

    def judge(self, summary: EndorsementSummary, now: float) -> Finding:
        """One endorsement at ``now`` (seconds since the epoch)."""
        if summary.defect is not None:  # (a summary without a certificate has one)
            return summary.defect
        who, fp = summary.endorser, summary.fingerprint
        issuer = self._issuer(summary.certificate, fp)  # type: ignore[arg-type]
        if issuer is None:
            return Finding(UNTRUSTED_ENDORSER, f"endorsed by {who}, whom this site does not "
                           "trust", who, fp)
        if not summary.not_before <= now < summary.not_after:
            return _not_valid(f"the certificate of {who}", summary.not_before,
                              summary.not_after, now, who, fp)
        if not issuer.start <= now < issuer.end:
            return _not_valid(f"the certificate of {who} is issued by {issuer.subject}, whose "
                              "own certificate", issuer.start, issuer.end, now, who, fp)
        if summary.expires <= now:
            return Finding(EXPIRED, f"endorsement by {who} expired on {_at(summary.expires)}",
                           who, fp, _at(summary.expires))
        return Finding(ENDORSED, f"endorsed by {who} until {_at(summary.expires)}", who, fp,
                       _at(summary.expires))

    def verdict(self, summaries: Sequence[EndorsementSummary],
                now: datetime | None = None) -> Verdict:
        """The verdict on an image with these endorsement summaries (default: now)."""
        when = now or self.now()
        if not summaries:
            return Verdict(False, (Finding(NOT_ENDORSED, "not endorsed"),), when)
        findings = tuple(self.judge(s, when.timestamp()) for s in summaries)
        return Verdict(any(f.holds for f in findings), findings, when)

    def assess(self, endorsements: Sequence[StoredEndorsement], image: ImageIdentity,
               now: datetime | None = None) -> Verdict:
        """The verdict on stored endorsements, every signature verified again."""
        certificates: dict[str, x509.Certificate] = {}
        return self.verdict([summarize(e, image, certificates) for e in endorsements], now)


@dataclass(frozen=True)
class _Issuer:
    """A CA anchor that issued an endorser certificate, and its validity."""

    subject: str
    start: float
    end: float


#: an endorser certificate that is an anchor itself (its own validity is checked anyway)
_SELF = _Issuer("", float("-inf"), float("inf"))


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _not_valid(what: str, start: float, end: float, now: float, who: str,
               fp: str) -> Finding:
    if now < start:
        return Finding(CERTIFICATE_NOT_VALID, f"{what} is valid only from {_at(start)}", who,
                       fp, _at(start))
    return Finding(CERTIFICATE_NOT_VALID, f"{what} expired on {_at(end)}", who, fp, _at(end))


def parse_fingerprint(text: str) -> str:
    """A fingerprint (or a prefix of one) as hex digits: colons dropped, lower case."""
    hexed = text.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", hexed):
        raise BadRequest(f"expected a SHA-256 fingerprint (at least 8 hex digits), got "
                         f"{text!r}", "fingerprint")
    return hexed


__all__ = ["STATEMENT", "Endorsement", "EndorsementSummary", "Finding", "ImageIdentity",
           "StoredEndorsement", "TrustPolicy", "Verdict", "check_endorsement",
           "create_endorsement", "fingerprint", "load_anchors", "load_certificate",
           "subject_dn", "summarize"]
