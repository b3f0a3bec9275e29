"""Real certificates for the trust tests, made with ``cryptography``: a CA, endorsers it
issued (RSA, ECDSA, Ed25519), a stranger, an impostor CA with the real CA's name, an expired
endorser."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


def new_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


@dataclass
class Party:
    """A certificate and its key."""

    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8, encryption)

    @property
    def dn(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def write(self, directory: Path, stem: str, password: bytes | None = None
              ) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem(password))
        return cert, key


def make(common_name: str, kind: str = "ec", *, issuer: Party | None = None,
         ca: bool = False, not_before: dt.datetime = NOW - DAY,
         not_after: dt.datetime = NOW + 730 * DAY) -> Party:
    """A certificate for ``common_name`` (``CN=<name>,O=Grid``), self-signed or issued by
    ``issuer``."""
    key = new_key(kind)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grid"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer = issuer.key if issuer else key
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                              critical=True))
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Party(builder.sign(signer, algorithm), key)


@dataclass
class Pki:
    ca: Party
    endorsers: dict[str, Party]  #: by key kind, issued by ca
    stranger: Party  #: self-signed, trusted by nobody
    impostor: Party  #: issued by a CA that only has the real CA's name
    expired: Party  #: issued by ca, expired yesterday
    leaf_issued: Party  #: issued by the (non-CA) EC endorser's key

    def bundle(self, directory: Path, name: str, *parties: Party) -> Path:
        path = directory / name
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(p.cert_pem for p in parties))
        return path


def build_pki() -> Pki:
    ca = make("Grid Image CA", "ec", ca=True, not_before=NOW - 10 * DAY,
              not_after=NOW + 3650 * DAY)
    endorsers = {kind: make(f"Image Team {kind}", kind, issuer=ca)
                 for kind in ("rsa", "ec", "ed25519")}
    fake_ca = make("Grid Image CA", "ec", ca=True)
    return Pki(
        ca=ca, endorsers=endorsers, stranger=make("Stranger", "ec"),
        impostor=make("Impostor", "ec", issuer=fake_ca),
        expired=make("Old Team", "ec", issuer=ca, not_before=NOW - 400 * DAY,
                     not_after=NOW - DAY),
        leaf_issued=make("Sub Team", "ec", issuer=endorsers["ec"]),
    )
