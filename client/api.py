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
import http.client
import json
import re
import shutil
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote

from base.reasons import Reason
from client.errors import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from client.events import ChangeWaiter

TERMINAL = ("SUCCESSFUL", "FAILED")
_EXIT_BY_STATUS = {400: EXIT_USAGE, 401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND,
                   406: EXIT_USAGE, 409: EXIT_USAGE, 413: EXIT_USAGE, 415: EXIT_USAGE,
                   416: EXIT_USAGE, 429: EXIT_AUTH}
#: The factory's log notes that name the instance chosen for a job (before it runs there).
_INSTANCE_NOTE = re.compile(r"\b(?:booting|reusing|sharing|waiting for) instance ([0-9a-f]+)\b")
#: Downloads larger than this are fetched in ``Range`` pieces of this size.
DOWNLOAD_CHUNK = 4 * 1024 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise CliError("the server's answer is not JSON (is the URL a gridvm REST base, "
                           "…/<SITE>/rest/core?)", EXIT_UNAVAILABLE) from None


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
    def auth_headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.user is not None:
            pair = f"{self.user}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def request(self, method: str, url: str, *, body: Any = None, data: Any = None,
                accept: str = "application/json", headers: dict[str, str] | None = None,
                expect: tuple[int, ...] = (200,), timeout: float | None = None,
                sink: BinaryIO | None = None) -> Response:
        """One request; raises CliError unless the status is one of ``expect``.  With
        ``sink``, a successful answer's body is copied there in blocks (``body`` is empty)."""
        if not self.base.startswith(("http://", "https://")):
            raise CliError(f"bad server URL {self.base!r}: expected http(s)://HOST:PORT/"
                           "<SITE>/rest/core", EXIT_USAGE)
        if not url.startswith(("http://", "https://")):
            url = f"{self.base}/{url.lstrip('/')}"
        all_headers = {"Accept": accept, **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        elif data is not None:
            all_headers.setdefault("Content-Type", "application/octet-stream")
        all_headers.update(self.auth_headers())
        try:
            request = urllib.request.Request(url, data=data, method=method,
                                             headers=all_headers)
            with urllib.request.urlopen(request, timeout=timeout or self.timeout,
                                        context=self._context) as reply:
                if sink is not None and reply.status in expect:
                    shutil.copyfileobj(reply, sink, DOWNLOAD_CHUNK)
                    response = Response(reply.status, dict(reply.headers), b"")
                else:
                    response = Response(reply.status, dict(reply.headers), reply.read())
        except urllib.error.HTTPError as err:
            response = Response(err.code, dict(err.headers or {}), err.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            hint = ""
            if isinstance(reason, ssl.SSLCertVerificationError):
                hint = " (a self-signed certificate? use --insecure or GRIDVM_INSECURE=1)"
            elif isinstance(reason, ssl.SSLError) or isinstance(err, http.client.HTTPException):
                hint = " (http:// against an https:// port, or the other way round?)"
            text = str(reason) or type(reason).__name__
            raise CliError(f"cannot reach {self.base}: {text}{hint}",
                           EXIT_UNAVAILABLE) from None
        except ValueError as err:  # a URL urllib cannot use
            raise CliError(f"bad URL {url!r}: {err}", EXIT_USAGE) from None
        if response.status not in expect:
            raise self._error(method, url, response)
        return response

    @staticmethod
    def _error(method: str, url: str, response: Response) -> CliError:
        """The server's ``errorMessage`` and ``reason`` as a one-line CliError."""
        try:
            doc = json.loads(response.body or b"null")
            message, reason = doc.get("errorMessage") or "", doc.get("reason")
        except (ValueError, AttributeError):
            message, reason = " ".join(response.body.decode(errors="replace").split())[:200], None
        code = _EXIT_BY_STATUS.get(response.status, EXIT_FAILED)
        if response.status >= 500:
            code = EXIT_UNAVAILABLE if response.status in (502, 503, 504) else EXIT_FAILED
        if response.status == 403 and reason == Reason.QUOTA_EXCEEDED:  # a per-user limit
            code = EXIT_FAILED
        what = {401: "not authenticated", 403: "not allowed", 404: "not found"}.get(
            response.status, f"HTTP {response.status}")
        if response.status == 401 and not message:
            message = "give a user and password or a token"
        text = message if reason and message else f"{what}: {message or method + ' ' + url}"
        return CliError(text, code, reason=reason)

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

    def all_jobs(self, page: int = 200) -> list[Job]:
        """Every job of the caller (oldest first), following the pages."""
        result: list[Job] = []
        while True:
            batch = self.jobs(offset=len(result), num=page)
            result.extend(batch)
            if len(batch) < page:
                return result

    def job(self, ref: str) -> Job:
        """A job by its id or its URL (a URL must be below this site's BASE)."""
        ref = ref.strip()
        if ref.startswith(("http://", "https://")):
            if not ref.rstrip("/").startswith(self.base + "/jobs/"):
                raise CliError(f"{ref} is not a job of {self.base}", EXIT_USAGE)
            return Job(self, ref.rstrip("/"))
        if not ref or "/" in ref or ref in (".", ".."):
            raise CliError(f"bad job id {ref!r}", EXIT_USAGE)
        return Job(self, f"{self.base}/jobs/{quote(ref)}")

    # -- gridvm's own resources ----------------------------------------------------------------
    def instances(self) -> list[dict[str, Any]]:
        """The caller's VM instances (all of them for an administrator), with details."""
        result: list[dict[str, Any]] = []
        while True:
            page = self.get(f"instances?offset={len(result)}&num=200")
            details = page.get("details", [])
            result.extend(details)
            if len(details) < 200:
                return result

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self.get(f"instances/{quote(instance_id, safe='')}")

    def end_instance(self, instance_id: str, force: bool = False) -> None:
        """End a VM instance now (``force``: aborting its unfinished jobs first)."""
        self.request("DELETE", f"instances/{quote(instance_id, safe='')}"
                               + ("?force=true" if force else ""), expect=(204,))

    def instance_log(self, instance_id: str) -> str:
        """The end of an instance's console log (kept after the instance ended)."""
        reply = self.request("GET", f"instances/{quote(instance_id, safe='')}/log",
                             accept="text/plain")
        return reply.body.decode("utf-8", "replace")

    def create_cluster(self, definition: dict[str, Any]) -> str:
        """Start a virtual cluster from a definition; returns its id."""
        reply = self.request("POST", "clusters", body=definition, expect=(201,))
        location = reply.headers.get("Location") or reply.headers.get("location") or ""
        if not location:
            raise CliError("the server accepted the cluster but sent no Location", EXIT_FAILED)
        return location.rstrip("/").rsplit("/", 1)[-1]

    def clusters(self) -> list[dict[str, Any]]:
        """The caller's virtual clusters (all of them for an administrator)."""
        return self.get("clusters?num=1000").get("details", [])

    def cluster(self, cluster_id: str) -> dict[str, Any]:
        return self.get(f"clusters/{quote(cluster_id, safe='')}")

    def scale_cluster(self, cluster_id: str, service: str, count: int) -> dict[str, Any]:
        """Bring a scalable service of a cluster to ``count`` nodes (it goes SCALING)."""
        return self.request("POST", f"clusters/{quote(cluster_id, safe='')}/actions/scale",
                            body={"Service": service, "Count": count},
                            expect=(202,)).json()

    def end_cluster(self, cluster_id: str) -> dict[str, Any]:
        """End a cluster (it goes STOPPING, then STOPPED)."""
        return self.request("DELETE", f"clusters/{quote(cluster_id, safe='')}",
                            expect=(202,)).json()

    def pools(self) -> list[dict[str, Any]]:
        """The warm pools that serve the caller (all of them for an administrator)."""
        return self.get("pools").get("pools", [])

    def hosts(self) -> list[dict[str, Any]]:
        """The site's hypervisor hosts (administrators only)."""
        return self.get("hosts").get("hosts", [])

    def set_host(self, name: str, action: str) -> dict[str, Any]:
        """``drain`` or ``enable`` a hypervisor host (administrators only)."""
        return self.request("POST", f"hosts/{quote(name, safe='')}/{action}").json()

    def images(self) -> list[dict[str, Any]]:
        """The catalogue's images the caller may use (summaries)."""
        return self.get("images?num=1000").get("images", [])

    def match(self, description: dict[str, Any]) -> dict[str, Any]:
        """Which images would run this job description (or ``{"requirements": …}``), best
        first, and why each other visible image would not."""
        return self.request("POST", "images/match", body=description).json()

    # -- creators: registering and changing images ---------------------------------------------
    def image(self, ref: str) -> dict[str, Any]:
        """One image the caller may see, with its whole metadata document."""
        return self.get(f"images/{quote(ref, safe='')}")

    def register_image(self, metadata: dict[str, Any], dry_run: bool = False) -> Response:
        """``POST images``: 200/201 with the image, or 201 with a pending registration
        (its ``missing`` files to send with :meth:`upload_image_file`)."""
        return self.request("POST", "images" + ("?dryRun=true" if dry_run else ""),
                            body=metadata, expect=(200, 201))

    def new_image_version(self, ref: str, patch: dict[str, Any],
                          dry_run: bool = False) -> Response:
        """``PATCH images/{ref}`` with a JSON merge patch; answers like :meth:`register_image`."""
        return self.request("PATCH", f"images/{quote(ref, safe='')}"
                            + ("?dryRun=true" if dry_run else ""),
                            data=json.dumps(patch).encode(),
                            headers={"Content-Type": "application/merge-patch+json"},
                            expect=(200, 201))

    def upload_image_file(self, url: str, stream, size: int) -> Response:
        """Send one file of a pending registration from the binary file object ``stream``
        (read in blocks while it is sent, never whole into memory)."""
        # the site hashes the file before it answers: allow a second per 16 MiB beyond
        return self.request("PUT", url, data=stream, expect=(200, 201),
                            timeout=self.timeout + size / (16 << 20),
                            headers={"Content-Length": str(size),
                                     "Content-Type": "application/octet-stream"})

    def export_image(self, ref: str, sink: BinaryIO) -> None:
        """Write the bundle of an image (with its visible bases) into ``sink``."""
        self.request("GET", f"images/{quote(ref, safe='')}/bundle", accept="application/x-tar",
                     sink=sink, timeout=max(self.timeout, 600.0))

    def import_bundle(self, stream, size: int) -> dict[str, Any]:
        """Send a bundle (a binary file object of ``size`` bytes); what the site imported."""
        return self.request("POST", "images/bundles", data=stream, expect=(200, 201),
                            timeout=self.timeout + size / (16 << 20),
                            headers={"Content-Length": str(size),
                                     "Content-Type": "application/x-tar"}).json()

    def image_action(self, ref: str, action: str) -> dict[str, Any]:
        return self.request("POST", f"images/{quote(ref, safe='')}/actions/{action}",
                            body={}).json()

    def delete_image(self, ref: str) -> dict[str, Any]:
        return self.request("DELETE", f"images/{quote(ref, safe='')}").json()

    def add_application(self, ref: str, application: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"images/{quote(ref, safe='')}/applications",
                            body=application, expect=(201,)).json()

    def remove_application(self, ref: str, name: str, version: str | None) -> dict[str, Any]:
        path = f"images/{quote(ref, safe='')}/applications/{quote(name, safe='')}"
        if version:
            path += f"/{quote(version, safe='')}"
        return self.request("DELETE", path).json()

    def endorse_image(self, ref: str, endorsement: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"images/{quote(ref, safe='')}/endorsements",
                            body=endorsement, expect=(201,)).json()

    def withdraw_endorsement(self, ref: str, fingerprint: str) -> None:
        self.request("DELETE", f"images/{quote(ref, safe='')}/endorsements/"
                               f"{quote(fingerprint, safe='')}", expect=(204,))


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

    def keep_until(self, termination: str) -> None:
        """Move the job's termination time (ISO 8601): the site destroys it then."""
        self.site.request("PUT", self.url, body={"terminationTime": termination},
                          expect=(200,))

    def wait(self, timeout: float = 3600.0, interval: float = 1.0, on_change=None,
             on_poll=None) -> str:
        """Until SUCCESSFUL or FAILED; ``on_change(properties)`` on every new status,
        ``on_poll(properties)`` after every poll (e.g. a progress display).  Where the site
        has an event stream (``/<SITE>/events``), a poll follows each pushed change instead
        of every ``interval`` seconds."""
        deadline = time.monotonic() + timeout
        changes = ChangeWaiter.open(self.site, self.id)
        try:
            return self._wait(deadline, timeout, interval, changes, on_change, on_poll)
        finally:
            if changes is not None:
                changes.close()

    def _wait(self, deadline, timeout, interval, changes, on_change, on_poll) -> str:
        seen = None
        while True:
            props = self.properties()
            if props["status"] != seen:
                seen = props["status"]
                if on_change is not None:
                    on_change(props)
            if on_poll is not None:
                on_poll(props)
            if seen in TERMINAL:
                return seen
            if time.monotonic() >= deadline:
                raise CliError(f"job {self.id} still {seen} after {timeout:g} s", EXIT_TIMEOUT)
            pause = max(0.0, deadline - time.monotonic())
            if changes is not None and changes.alive:
                # the site pushes changes: wait for one (polling now and then for the
                # progress display's clock)
                changes.wait(min(max(interval, 5.0), pause))
            else:
                time.sleep(min(interval, pause))

    def instance(self) -> dict[str, Any] | None:
        """The VM instance the job runs in (None before one is chosen, or once it is gone)."""
        instance_id = instance_id_of(self.properties(refresh=False))
        if not instance_id:
            return None
        try:
            return self.site.instance(instance_id)
        except CliError as err:
            if err.exit_code == EXIT_NOT_FOUND:
                return None
            raise

    def _file_url(self, path: str) -> str:
        return f"{self._link('workingDirectory')}/files/{quote(path.lstrip('/'))}"

    def upload(self, path: str, content: bytes) -> None:
        self.site.request("PUT", self._file_url(path), data=content, expect=(200, 204))

    def read(self, path: str, byte_range: str | None = None) -> bytes:
        headers = {"Range": f"bytes={byte_range}"} if byte_range else None
        return self.site.request("GET", self._file_url(path), accept="application/octet-stream",
                                 headers=headers, expect=(200, 206)).body

    def files(self, path: str = "") -> dict[str, Any]:
        """A directory listing: storage-absolute paths (directories end in /) → properties."""
        url = self._file_url(path) if path.strip("/") else f"{self._link('workingDirectory')}/files"
        listing = self.site.get(url)
        if not listing.get("isDirectory", True):
            raise CliError(f"{path} is a file, not a directory", EXIT_USAGE)
        return listing.get("content", {})

    def stat(self, path: str) -> dict[str, Any]:
        """A file's or directory's properties (``isDirectory``, ``size``, …)."""
        return self.site.get(self._file_url(path))

    def download(self, path: str, sink) -> int:
        """Write a file into the binary file object ``sink`` (in Range pieces when large);
        returns the number of bytes."""
        info = self.stat(path)
        if info.get("isDirectory"):
            raise CliError(f"{path} is a directory", EXIT_USAGE)
        size = int(info.get("size") or 0)
        if size <= DOWNLOAD_CHUNK:
            data = self.read(path)
            sink.write(data)
            return len(data)
        written = 0
        while written < size:
            end = min(written + DOWNLOAD_CHUNK, size) - 1
            piece = self.read(path, f"{written}-{end}")
            if not piece:
                break
            sink.write(piece)
            written += len(piece)
        return written


def instance_id_of(properties: dict[str, Any]) -> str | None:
    """The instance of a job: ``gridvm.instance`` once the job runs there; before that (while
    the VM stages, boots and connects) the one the factory's log notes name."""
    instance_id = (properties.get("gridvm") or {}).get("instance")
    if instance_id:
        return instance_id
    for line in reversed(properties.get("log") or []):
        found = _INSTANCE_NOTE.search(str(line))
        if found:
            return found.group(1)
    return None
