"""pyOpenSSL contexts for the Twisted side of a TSI link.

The client is the TLS client towards the shepherd and the TLS *server* for the two callbacks.
Both ways it presents its own certificate, requires the peer's to chain to the CA, and, when
``peer_cert_pem`` is given, to be exactly that certificate (the instance's): pinning stops a
certificate of another instance of the same CA.  No hostname checks: the peer address is a
forwarded loopback port.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer


def _certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class TLSConfig:
    """Own certificate + key, the CA to trust and optionally the peer certificate(s) to pin.

    Pass it wherever the client takes ``tls``; it creates connections for both directions.
    """

    def __init__(self, cert_pem: bytes, key_pem: bytes, ca_pem: bytes,
                 peer_cert_pem: bytes | None = None) -> None:
        self.cert_pem, self.key_pem, self.ca_pem = cert_pem, key_pem, ca_pem
        self.pins = ({_der_sha256(c) for c in _certificates(peer_cert_pem)}
                     if peer_cert_pem else set())
        self._context = self._make_context()

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, ca: str | Path,
                   peer_cert: str | Path | None = None) -> TLSConfig:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes(),
                   Path(peer_cert).read_bytes() if peer_cert else None)

    def pinned_to(self, peer_cert_pem: bytes) -> TLSConfig:
        """The same identity, pinned to another peer (e.g. one VM instance)."""
        return TLSConfig(self.cert_pem, self.key_pem, self.ca_pem, peer_cert_pem)

    def _make_context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate(x509.load_pem_x509_certificate(self.cert_pem))
        context.use_privatekey(serialization.load_pem_private_key(self.key_pem, None))
        context.check_privatekey()
        store = context.get_cert_store()
        for cert in _certificates(self.ca_pem):
            store.add_cert(crypto.X509.from_cryptography(cert))
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return context

    def _verify(self, connection, cert, errno, depth, ok) -> bool:
        if not ok:
            return False
        if depth == 0 and self.pins:
            return _der_sha256(cert.to_cryptography()) in self.pins
        return True

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)
