"""A throw-away CA and endorser made with the openssl command line, HEPiX lists signed with
``openssl smime -sign`` as publishers do, and a static HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import subprocess
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class ThrowawayCA:
    """``ca.pem`` and an endorser ``endorser.pem``/``.key`` it issued, in ``directory``;
    ``stranger.pem``/``.key`` is a self-signed certificate nobody trusts."""

    directory: Path
    ca_dn: str = "/C=DE/O=Test Grid/CN=Throwaway CA"
    endorser_dn: str = "/C=DE/O=Test Grid/CN=Image Endorser"

    @classmethod
    def make(cls, directory: Path) -> ThrowawayCA:
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
                 "-subj", ca.ca_dn, cwd=directory)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "endorser.key", "-out", "endorser.csr", "-subj", ca.endorser_dn,
                 cwd=directory)
        _openssl("x509", "-req", "-in", "endorser.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "endorser.pem", "-days", "2", cwd=directory)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2",
                 "-subj", ca.endorser_dn, cwd=directory)
        return ca

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    def sign(self, content: bytes, target: Path, signer: str = "endorser") -> Path:
        """``openssl smime -sign`` (detached, clear text) of ``content`` into ``target``."""
        source = target.with_suffix(".json")
        source.write_bytes(content)
        _openssl("smime", "-sign", "-in", str(source), "-signer", f"{signer}.pem",
                 "-inkey", f"{signer}.key", "-out", str(target), cwd=self.directory)
        return target


def image_entry(identifier: str, uri: str, data: bytes, version: str = "1",
                **extra) -> dict:
    return {"hv:image": {"dc:identifier": identifier, "dc:title": f"image {identifier}",
                         "hv:version": version, "hv:uri": uri, "hv:format": "QCOW2",
                         "sl:checksum:sha512": hashlib.sha512(data).hexdigest(),
                         "hv:size": len(data), "sl:arch": "x86_64", **extra}}


def list_document(ca: ThrowawayCA, images: list[dict], expires: datetime | None = None,
                  identifier: str = "0f9a3f4e-list", endorser_dn: str | None = None) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    expires = expires or now + timedelta(days=7)
    doc = {"hv:imagelist": {
        "dc:identifier": identifier, "dc:title": "test list", "hv:version": "1",
        "dc:date:created": now.isoformat().replace("+00:00", "Z"),
        "dc:date:expires": expires.isoformat().replace("+00:00", "Z"),
        "hv:endorser": {"hv:x509": {"hv:dn": endorser_dn or ca.endorser_dn,
                                    "hv:ca": ca.ca_dn, "dc:creator": "Image Endorser",
                                    "hv:email": "endorser@example.org"}},
        "hv:images": images, "ad:vo": "atlas"}}
    return json.dumps(doc, indent=1).encode()


@contextlib.contextmanager
def serve(directory: Path):
    """A static HTTP server for ``directory`` on 127.0.0.1; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
