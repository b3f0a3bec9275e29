"""A small Python API over the UNICORE REST interface gridvm serves (standard library only).

    site = Site("https://127.0.0.1:8443/GRIDVM/rest/core", "alice", "secret", verify=False)
    job = site.submit({"Executable": "date", "Resources": {"Image": "debian12"}},
                      inputs={"in.txt": b"data"})
    job.wait()
    print(job.status, job.exit_code, job.read("stdout").decode())

Every failure is a :class:`client.errors.CliError` with a one-line message and the exit code
the CLI documents (404 → not found, 401/403 → not allowed, unreachable → unavailable, 400 →
bad input), carrying the server's ``errorMessage``.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from client.errors import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)

TERMINAL = ("SUCCESSFUL", "FAILED")
_EXIT_BY_STATUS = {400: EXIT_USAGE, 401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND,
                   413: EXIT_USAGE, 415: EXIT_USAGE}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Site:
    """One gridvm site: the base URL of its REST API and the caller's credentials."""

    base: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool = True
    timeout: float = 60.0
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base = self.base.rstrip("/")
        if self.base.startswith("https") and not self.verify:
            self._context = ssl.create_default_context()
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    # -- HTTP --------------------------------------------------------------------------------
    def request(self, method: str, url: str, *, body: Any = None, data: bytes | None = None,
                accept: str = "application/json", headers: dict[str, str] | None = None,
                expect: tuple[int, ...] = (200,)) -> Response:
        """One request; raises CliError unless the status is one of ``expect``."""
        if not url.startswith(("http://", "https://")):
            url = f"{self.base}/{url.lstrip('/')}"
        all_headers = {"Accept": accept, **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        elif data is not None:
            all_headers.setdefault("Content-Type", "application/octet-stream")
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        elif self.user is not None:
            pair = f"{self.user}:{self.password or ''}".encode()
            all_headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self._context) as reply:
                response = Response(reply.status, dict(reply.headers), reply.read())
        except urllib.error.HTTPError as err:
            response = Response(err.code, dict(err.headers or {}), err.read())
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CliError(f"cannot reach {self.base}: {reason}", EXIT_UNAVAILABLE) from None
        if response.status not in expect:
            raise self._error(method, url, response)
        return response

    @staticmethod
    def _error(method: str, url: str, response: Response) -> CliError:
        try:
            message = response.json().get("errorMessage") or ""
        except (ValueError, AttributeError):
            message = response.body.decode(errors="replace")[:200]
        code = _EXIT_BY_STATUS.get(response.status, EXIT_FAILED)
        if response.status >= 500:
            code = EXIT_UNAVAILABLE if response.status == 503 else EXIT_FAILED
        what = {401: "not authenticated", 403: "not allowed", 404: "not found"}.get(
            response.status, f"HTTP {response.status}")
        return CliError(f"{what}: {message or method + ' ' + url}", code)

    def get(self, url: str, **kwargs) -> Any:
        return self.request("GET", url, **kwargs).json()

    # -- the site ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self.get(self.base)

    def links(self) -> dict[str, str]:
        return {k: v["href"] for k, v in self.info().get("_links", {}).items()}

    def submit(self, description: dict[str, Any], inputs: dict[str, bytes] | None = None
               ) -> Job:
        """Submit a job; with ``inputs`` they are uploaded before the job starts."""
        description = dict(description)
        if inputs:
            description["haveClientStageIn"] = "true"
        reply = self.request("POST", self.links().get("jobs", f"{self.base}/jobs"),
                             body=description, expect=(201,))
        location = reply.headers.get("Location") or reply.headers.get("location")
        if not location:
            raise CliError("the server accepted the job but sent no Location", EXIT_FAILED)
        job = Job(self, location)
        if inputs:
            for name, content in inputs.items():
                job.upload(name, content)
        job.start()
        return job

    def jobs(self, offset: int = 0, num: int = 200) -> list[Job]:
        listing = self.get(f"{self.links().get('jobs', self.base + '/jobs')}"
                           f"?offset={offset}&num={num}")
        return [Job(self, url) for url in listing.get("jobs", [])]


@dataclass
class Job:
    """A job on a site, known by its URL."""

    site: Site
    url: str
    _properties: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[1]

    def properties(self, refresh: bool = True) -> dict[str, Any]:
        if refresh or self._properties is None:
            self._properties = self.site.get(self.url)
        return self._properties

    @property
    def status(self) -> str:
        return self.properties()["status"]

    @property
    def exit_code(self) -> int | None:
        code = self.properties(refresh=False).get("exitCode")
        return int(code) if code not in (None, "") else None

    def _link(self, name: str) -> str:
        return self.properties(refresh=self._properties is None)["_links"][name]["href"]

    def start(self) -> None:
        self.site.request("POST", self._link("action:start"), body={}, expect=(200, 204))

    def abort(self) -> None:
        self.site.request("POST", self._link("action:abort"), body={}, expect=(200, 204))

    def delete(self) -> None:
        self.site.request("DELETE", self.url, expect=(200, 204))

    def wait(self, timeout: float = 3600.0, interval: float = 1.0, on_change=None) -> str:
        """Poll until SUCCESSFUL or FAILED; ``on_change(properties)`` on every new status."""
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            props = self.properties()
            if props["status"] != seen:
                seen = props["status"]
                if on_change is not None:
                    on_change(props)
            if seen in TERMINAL:
                return seen
            if time.monotonic() >= deadline:
                raise CliError(f"job {self.id} still {seen} after {timeout:g} s", EXIT_FAILED)
            time.sleep(interval)

    def _file_url(self, path: str) -> str:
        return f"{self._link('workingDirectory')}/files/{quote(path.lstrip('/'))}"

    def upload(self, path: str, content: bytes) -> None:
        self.site.request("PUT", self._file_url(path), data=content, expect=(200, 204))

    def read(self, path: str, byte_range: str | None = None) -> bytes:
        headers = {"Range": f"bytes={byte_range}"} if byte_range else None
        return self.site.request("GET", self._file_url(path), accept="application/octet-stream",
                                 headers=headers, expect=(200, 206)).body

    def files(self) -> dict[str, Any]:
        listing = self.site.get(f"{self._link('workingDirectory')}/files")
        return listing.get("content", {})
