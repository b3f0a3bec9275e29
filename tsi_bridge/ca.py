"""A small certificate authority for TSI links (uses ``cryptography``).

gridvm runs one CA; it issues a certificate for the gridvm server and one per VM instance.
Every certificate can act as TLS server and client (the agent is the server on its shepherd
port and the client on its callbacks; the gridvm server the other way round), and each side
pins the other's exact certificate on top of the CA check.  Keys are ECDSA P-256: handshakes
stay cheap in an emulated guest.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER bytes, hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class IssuedCertificate:
    """A certificate and its private key, both PEM."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.cert_pem = cert_pem
        self.key_pem = key_pem

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    @property
    def common_name(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    def write(self, cert_path: str | Path, key_path: str | Path) -> None:
        Path(cert_path).write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem)


class CertificateAuthority:
    """``create()`` a new CA or ``load()`` one; ``issue_server()`` / ``issue_instance()``."""

    CERT_FILE = "ca.pem"
    KEY_FILE = "ca.key"

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self._cert = x509.load_pem_x509_certificate(cert_pem)
        self._key = serialization.load_pem_private_key(key_pem, password=None)

    @classmethod
    def create(cls, common_name: str = "gridvm TSI CA", days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridvm")])
        now = datetime.datetime.now(datetime.UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @classmethod
    def load(cls, directory: str | Path) -> CertificateAuthority:
        directory = Path(directory)
        return cls((directory / cls.CERT_FILE).read_bytes(),
                   (directory / cls.KEY_FILE).read_bytes())

    @classmethod
    def load_or_create(cls, directory: str | Path) -> CertificateAuthority:
        """The CA kept in ``directory``, created (key mode 0600) on first use."""
        directory = Path(directory)
        if (directory / cls.CERT_FILE).exists():
            return cls.load(directory)
        ca = cls.create()
        ca.save(directory)
        return ca

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        IssuedCertificate(self.cert_pem, self.key_pem).write(directory / self.CERT_FILE,
                                                             directory / self.KEY_FILE)

    def issue(self, common_name: str, *, days: int = 365, dns_names: tuple[str, ...] = (),
              ip_addresses: tuple[str, ...] = ()) -> IssuedCertificate:
        """A leaf certificate usable as TLS server and client."""
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in (common_name, *dns_names)]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridvm")]))
            .issuer_name(self._cert.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=days),
                                 self._cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_agreement=True, key_cert_sign=False,
                crl_sign=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, encipher_only=False, decipher_only=False),
                critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_server(self, name: str = "gridvm-server", days: int = 825) -> IssuedCertificate:
        """The gridvm server's certificate (what agents pin)."""
        return self.issue(name, days=days)

    def issue_instance(self, instance_id: str, days: int = 30) -> IssuedCertificate:
        """A VM instance's agent certificate (what the client pins for that instance)."""
        return self.issue(f"gridvm-instance-{instance_id}", days=days)
