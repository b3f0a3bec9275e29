"""pyOpenSSL contexts for the Twisted side of a TSI link.

The client is the TLS client towards the shepherd and the TLS *server* for the two callbacks.
Both ways it presents its own certificate, requires the peer's to chain to the CA, and, when
``peer_cert_pem`` is given, to be exactly that certificate (the instance's): pinning stops a
certificate of another instance of the same CA.  No hostname checks: the peer address is a
forwarded loopback port.

Towards a shepherd port the check runs *after* the handshake (``checked_after_handshake()``):
a handshake that fails there kills the official TSI's whole daemon, so a certificate we
refuse must end the connection cleanly, before anything is sent, instead.
"""

from __future__ import annotations

import hashlib
import weakref
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
                 peer_cert_pem: bytes | None = None, *,
                 verify_after_handshake: bool = False) -> None:
        self.cert_pem, self.key_pem, self.ca_pem = cert_pem, key_pem, ca_pem
        self.peer_cert_pem = peer_cert_pem
        self.pins = ({_der_sha256(c) for c in _certificates(peer_cert_pem)}
                     if peer_cert_pem else set())
        self.verify_after_handshake = verify_after_handshake
        self._refusals: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._checked_after: TLSConfig | None = self if verify_after_handshake else None
        self._context = self._make_context()

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, ca: str | Path,
                   peer_cert: str | Path | None = None) -> TLSConfig:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes(),
                   Path(peer_cert).read_bytes() if peer_cert else None)

    def pinned_to(self, peer_cert_pem: bytes) -> TLSConfig:
        """The same identity, pinned to another peer (e.g. one VM instance)."""
        return TLSConfig(self.cert_pem, self.key_pem, self.ca_pem, peer_cert_pem)

    def checked_after_handshake(self) -> TLSConfig:
        """The same identity and pins, but a peer certificate we refuse does not abort the
        handshake: it is recorded (``refusal()``), and the caller must close the connection
        before it sends anything."""
        if self._checked_after is None:
            self._checked_after = TLSConfig(self.cert_pem, self.key_pem, self.ca_pem,
                                            self.peer_cert_pem, verify_after_handshake=True)
        return self._checked_after

    def refusal(self, connection: SSL.Connection) -> str | None:
        """Why the peer's certificate on ``connection`` is refused (None: accepted)."""
        return self._refusals.get(connection)

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
            why = f"certificate not trusted (X509 error {errno} at depth {depth})"
        elif depth == 0 and self.pins and _der_sha256(cert.to_cryptography()) not in self.pins:
            why = "not the pinned certificate"
        else:
            return True
        if not self.verify_after_handshake:
            return False
        self._refusals.setdefault(connection, why)
        return True

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)
