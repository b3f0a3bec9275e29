"""A synthetic catalogue for OAI-PMH tests and bench/oai.py, and a stdlib HTTP server that
answers OAI-PMH requests with an :class:`~image_repo.oaipmh.OaiProvider`."""

from __future__ import annotations

import contextlib
import http.server
import threading
from urllib.parse import parse_qs, urlsplit

from base.identity import Caller

PUBLISHER = Caller.of("publisher", groups=["images"], vos=["atlas", "cms"])


def documents(count: int) -> list[dict]:
    """``count`` small images: three in four readable by others; every fifth for VO atlas
    (so hidden from anonymous harvesters); communities and purposes in turn."""
    docs = []
    for i in range(count):
        docs.append({
            "general": {"name": f"oai-image-{i:05d}", "title": f"Image number {i}",
                        "description": "synthetic image for harvesting",
                        "permissions": {"owner": "rw", "group": "r",
                                        "others": "r" if i % 4 else ""},
                        "communities": [("hep", "bio", "climate")[i % 3]],
                        "purposes": [("teaching", "analysis")[i % 2]]},
            "origin": {"content_type": "oci", "source_url": f"docker://example.org/img:{i}"},
            "semantic": {"vos": ["atlas"] if i % 5 == 0 else []},
        })
    return docs


def fill(repository, count: int, chunk: int = 1000) -> None:
    docs = documents(count)
    for start in range(0, count, chunk):
        repository.register_many([(d, ()) for d in docs[start:start + chunk]], PUBLISHER)


def anonymous_visible(count: int) -> int:
    return sum(1 for i in range(count) if i % 4 and i % 5)


@contextlib.contextmanager
def serve_provider(provider, caller=None):
    """``provider`` on http://127.0.0.1:PORT/oai (GET and POST); yields the URL."""
    from image_repo.oaipmh import ANONYMOUS

    who = caller or ANONYMOUS

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, query: str) -> None:
            body = provider.handle(parse_qs(query, keep_blank_values=True), who)
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(urlsplit(self.path).query)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.answer(self.rfile.read(length).decode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/oai"
    finally:
        server.shutdown()
        server.server_close()
