"""S/MIME signatures of image lists: sign with ``cryptography``, verify with ``openssl smime``.

HEPiX image lists travel as S/MIME messages (``multipart/signed``, the list in clear text, a
detached PKCS#7 signature).  :func:`sign` makes one with the ``cryptography`` library's
PKCS#7 builder.  The installed ``cryptography`` offers no PKCS#7 *verification*, so
:func:`verify` runs ``openssl smime -verify`` (OpenSSL 3, always on the host) on the
message: signature, signer certificate chain up to one of the given anchors (an anchor may
be the endorser certificate itself: ``-partial_chain``) and validity at the given time.
It returns the signed content and the signer's certificate.  Every failure is a
:class:`SignatureInvalid` naming the cause; messages are bounded in size.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from image_repo.errors import BadRequest, ImageUntrusted

#: the largest S/MIME message accepted (a list of a few thousand images fits easily)
MAX_MESSAGE = 16 << 20
_OPENSSL_TIMEOUT = 60


class SignatureInvalid(ImageUntrusted):
    """The message is not S/MIME, its signature does not verify, or its signer is not
    trusted (not issued by an anchor, outside its validity)."""


@dataclass(frozen=True)
class Signed:
    """What a verified message says, and who signed it."""

    content: bytes
    signer: x509.Certificate

    @property
    def signer_dn(self) -> str:
        return slash_dn(self.signer.subject)

    @property
    def issuer_dn(self) -> str:
        return slash_dn(self.signer.issuer)


def slash_dn(name: x509.Name) -> str:
    """A name in OpenSSL's one-line form, as HEPiX lists write it: ``/C=DE/O=Grid/CN=Ann``."""
    return "".join(f"/{attribute.rfc4514_attribute_name}={attribute.value}"
                   for rdn in name.rdns for attribute in rdn)


def same_dn(a: str, b: str) -> bool:
    """Whether two DNs in one-line form name the same subject (spaces around ``/`` and
    ``=`` and the case of attribute names do not matter)."""
    def parts(dn: str) -> list[tuple[str, str]]:
        found = []
        for piece in dn.strip().strip("/").split("/"):
            key, _, value = piece.partition("=")
            found.append((key.strip().upper(), value.strip()))
        return found

    return parts(a) == parts(b)


def sign(content: bytes, certificate: x509.Certificate, key,
         chain: Sequence[x509.Certificate] = ()) -> bytes:
    """``content`` as a clear-signed S/MIME message (SHA-512) by ``certificate``."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(
        certificate, key, hashes.SHA512())
    for extra in chain:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])


def verify(message: bytes, anchors: Sequence[x509.Certificate], at: datetime) -> Signed:
    """Verify an S/MIME message against ``anchors`` at time ``at``; the content and signer."""
    if len(message) > MAX_MESSAGE:
        raise BadRequest(f"the signed message is larger than {MAX_MESSAGE} bytes", "imagelist")
    if not anchors:
        raise SignatureInvalid("no trust anchors to verify the signature with")
    with tempfile.TemporaryDirectory(prefix="gridvm-smime-") as scratch:
        directory = Path(scratch)
        (directory / "anchors.pem").write_bytes(b"".join(
            a.public_bytes(serialization.Encoding.PEM) for a in anchors))
        (directory / "message").write_bytes(message)
        command = ["openssl", "smime", "-verify", "-in", str(directory / "message"),
                   "-CAfile", str(directory / "anchors.pem"), "-partial_chain",
                   "-purpose", "any", "-attime", str(int(at.timestamp())),
                   "-signer", str(directory / "signer.pem"),
                   "-out", str(directory / "content")]
        try:
            done = subprocess.run(command, capture_output=True, timeout=_OPENSSL_TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise SignatureInvalid("verifying the signature took too long") from None
        except OSError as err:
            raise SignatureInvalid(f"cannot run openssl: {err.strerror}") from None
        if done.returncode != 0:
            raise SignatureInvalid(f"the signature does not verify: {_cause(done.stderr)}")
        content = (directory / "content").read_bytes()
        signers = x509.load_pem_x509_certificates((directory / "signer.pem").read_bytes())
    return Signed(_canonical_text(content), signers[0])


def _canonical_text(content: bytes) -> bytes:
    """openssl hands back a clear-signed text with CRLF line ends; the list is JSON either way."""
    return content.replace(b"\r\n", b"\n")


def _cause(stderr: bytes) -> str:
    """The telling part of openssl's complaint (``digest failure``, ``certificate has
    expired``), without its error codes and source positions."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()
             if line.strip()]
    for line in lines:
        if "Verify error:" in line:
            return line.split("Verify error:", 1)[1].strip()
    for line in lines:
        fields = line.split(":")
        if len(fields) > 5 and fields[1] == "error":  # CODE:error:NUM:LIB:FUNC:REASON:FILE
            return fields[5].strip()
    return lines[-1] if lines else "openssl failed"
