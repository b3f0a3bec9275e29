"""Server-side transfers against a real HTTP server on 127.0.0.1 (no VM): the allow-list,
credentials (and that they stay with their own server across a redirect), size limits,
deadlines and uploads."""

from __future__ import annotations

import http.server
import re
import socket
import threading

import pytest

from target_system.jobdesc import Credentials, JobDescriptionError, parse_job
from target_system.transfers import TransferFailed, TransferPolicy, fetch_url, upload_file

BASIC = Credentials("alice", "s3cret").authorization()


class Handler(http.server.BaseHTTPRequestHandler):
    uploads: dict[str, tuple[bytes, str | None]] = {}

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/data/private":
            if self.headers.get("Authorization") != BASIC:
                return self._send(401, b"who are you")
            return self._send(200, b"private data\n")
        if self.path == "/data/echo-auth":
            return self._send(200, (self.headers.get("Authorization") or "none").encode())
        if self.path == "/data/to-other-host":
            return self._send(302, Location=f"http://localhost:{port}/data/echo-auth")
        if self.path == "/data/to-same-host":
            return self._send(302, Location=f"http://127.0.0.1:{port}/data/echo-auth")
        if self.path == "/data/out":
            return self._send(302, Location=f"http://127.0.0.1:{port}/secret")
        if self.path == "/data/big":
            return self._send(200, b"x" * 5000)
        if self.path == "/data/large":
            return self._send(200, b"y" * (3 << 20))
        return self._send(404)

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.uploads[self.path] = (body, self.headers.get("Authorization"))
        self._send(201)


@pytest.fixture(scope="module")
def data_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def policy(port: int, **kwargs) -> TransferPolicy:
    return TransferPolicy(url_prefixes=(f"http://127.0.0.1:{port}/data/",
                                        f"http://localhost:{port}/data/"), **kwargs)


def test_credentials_are_sent_and_stay_with_their_server(data_server, tmp_path):
    port, target = data_server, tmp_path / "got"
    base = f"http://127.0.0.1:{port}/data"
    assert fetch_url(f"{base}/private", target, policy(port), BASIC) == 13
    assert target.read_bytes() == b"private data\n"
    with pytest.raises(TransferFailed, match="HTTP 401"):
        fetch_url(f"{base}/private", target, policy(port))
    fetch_url(f"{base}/to-same-host", target, policy(port), BASIC)
    assert target.read_text() == BASIC
    fetch_url(f"{base}/to-other-host", target, policy(port), BASIC)
    assert target.read_text() == "none"  # dropped on the way to another host


def test_refusals_leave_no_file_behind(data_server, tmp_path):
    port, target = data_server, tmp_path / "f"
    with pytest.raises(TransferFailed, match=re.escape("does not fetch from http://127.0.0.1:1/")):
        fetch_url("http://127.0.0.1:1/x", target, policy(port))
    with pytest.raises(TransferFailed, match=r"redirected to .*/secret, which this site"):
        fetch_url(f"http://127.0.0.1:{port}/data/out", target, policy(port))
    with pytest.raises(TransferFailed, match="larger than 1000 bytes"):
        fetch_url(f"http://127.0.0.1:{port}/data/big", target, policy(port, max_bytes=1000))
    asked = []
    with pytest.raises(TransferFailed, match="stopped, the job ended meanwhile"):
        fetch_url(f"http://127.0.0.1:{port}/data/large", target, policy(port),
                  cancelled=lambda: asked.append(1) or len(asked) > 1)
    assert len(asked) == 2  # checked after every piece: stopped after the second
    assert list(tmp_path.iterdir()) == []  # no file, no .part


def test_a_silent_server_runs_into_the_deadline(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        with pytest.raises(TransferFailed, match=r"no answer within 0\.5 s"):
            fetch_url(f"http://127.0.0.1:{port}/data/x", tmp_path / "x",
                      TransferPolicy((f"http://127.0.0.1:{port}/",), timeout=0.5))


def test_uploads_put_the_file_with_its_credentials(data_server, tmp_path):
    port = data_server
    source = tmp_path / "result.txt"
    source.write_bytes(b"result\n")
    token = Credentials(token="tok-123").authorization()
    url = f"http://127.0.0.1:{port}/data/up/result.txt"
    assert upload_file(source, url, policy(port), token) == 7
    assert Handler.uploads["/data/up/result.txt"] == (b"result\n", "Bearer tok-123")
    with pytest.raises(TransferFailed, match="does not upload to"):
        upload_file(source, f"http://127.0.0.1:{port}/elsewhere", policy(port))
    with pytest.raises(TransferFailed, match="left no file"):
        upload_file(tmp_path / "absent", url, policy(port))


def test_transfer_credentials_in_job_descriptions():
    job = parse_job({"Executable": "date", "Imports": [
        {"From": "https://d.example.org/a", "To": "a",
         "Credentials": {"Username": "alice", "Password": "s3cret"}}], "Exports": [
        {"From": "a", "To": "https://d.example.org/b", "Credentials": {"BearerToken": "t"}}]})
    assert job.imports[0].credentials.authorization() == BASIC
    assert "s3cret" not in repr(job.imports[0])
    assert job.exports[0].credentials.authorization() == "Bearer t"
    for bad in ({"From": "https://d.example.org/a", "To": "a", "Credentials": "alice"},
                {"From": "https://d.example.org/a", "To": "a",
                 "Credentials": {"Username": "alice"}},
                {"Data": "x", "To": "a", "Credentials": {"BearerToken": "t"}}):
        with pytest.raises(JobDescriptionError, match="Credentials"):
            parse_job({"Executable": "date", "Imports": [bad]})
