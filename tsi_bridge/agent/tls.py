"""TLS for the agent (standard ``ssl``; imported only when TLS is configured).

The agent is the TLS server on the shepherd port and the TLS client on its callbacks.  Both
ways it requires the peer's certificate to chain to the configured CA, and, when
``peer_cert`` is configured, to be exactly that certificate (the gridvm server's): another
instance's certificate from the same CA is refused.  ``allowed_dns`` (the official TSI's
``tsi.allowed_dn.N``) restricts the peer's subject the same way.
"""

from __future__ import annotations

import hashlib
import socket
import ssl


class PeerRejected(Exception):
    """The peer's certificate is valid but not the pinned one."""


def _fingerprints(path: str) -> set[str]:
    with open(path, encoding="ascii") as handle:
        text = handle.read()
    marker = "-----END CERTIFICATE-----"
    blocks = [block + marker for block in text.split(marker) if "-----BEGIN" in block]
    return {hashlib.sha256(ssl.PEM_cert_to_DER_cert(block.strip())).hexdigest()
            for block in blocks}


#: RFC 4514 attribute names → the names Python's ssl gives a certificate's subject
_ATTRIBUTES = {"CN": "commonName", "O": "organizationName", "OU": "organizationalUnitName",
               "C": "countryName", "L": "localityName", "ST": "stateOrProvinceName",
               "DC": "domainComponent", "EMAILADDRESS": "emailAddress", "UID": "userId"}


def parse_dn(text: str) -> frozenset[tuple[str, str]]:
    """``CN=gridvm-server,O=Grid`` (either order, as the official TSI's ``tsi.allowed_dn``)
    as a set of (attribute, value)."""
    pairs = set()
    for part in text.replace("/", ",").split(","):
        name, sep, value = part.partition("=")
        if sep:
            key = name.strip()
            pairs.add((_ATTRIBUTES.get(key.upper(), key), value.strip()))
    return frozenset(pairs)


def _subject(sock: ssl.SSLSocket) -> frozenset[tuple[str, str]]:
    cert = sock.getpeercert() or {}
    return frozenset((name, value) for rdn in cert.get("subject", ()) for name, value in rdn)


class AgentTLS:
    def __init__(self, cert: str, key: str, ca: str, peer_cert: str | None = None,
                 allowed_dns: list[str] | None = None) -> None:
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_context.check_hostname = False
        for context in (self.server_context, self.client_context):
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert, key)
            context.load_verify_locations(cafile=ca)
            context.verify_mode = ssl.CERT_REQUIRED
        self.pins = _fingerprints(peer_cert) if peer_cert else set()
        self.allowed = [parse_dn(dn) for dn in allowed_dns or ()]

    def _check(self, sock: ssl.SSLSocket) -> ssl.SSLSocket:
        if self.pins:
            der = sock.getpeercert(binary_form=True) or b""
            if hashlib.sha256(der).hexdigest() not in self.pins:
                sock.close()
                raise PeerRejected("peer certificate is not the pinned server certificate")
        if self.allowed and _subject(sock) not in self.allowed:
            sock.close()
            raise PeerRejected("peer certificate's subject is not an allowed DN")
        return sock

    def wrap_server(self, sock: socket.socket) -> ssl.SSLSocket:
        """Handshake as the server (within the socket's timeout) and check the peer."""
        return self._check(self.server_context.wrap_socket(sock, server_side=True))

    def wrap_client(self, sock: socket.socket) -> ssl.SSLSocket:
        return self._check(self.client_context.wrap_socket(sock))
