"""The REST application: one leaf resource under ``/<SITE>/rest/core`` and a small router.

Each resource family (``base``, ``sites``, ``jobs``, ``storages``, ``gridvm``) contributes
routes: a method, a path pattern (``{name}`` matches one segment, ``{path*}`` the rest) and
an async handler ``handler(call, **params) -> Response``; handlers reach the site's objects
as typed attributes of :class:`RestApp`.  The leaf authenticates the caller, dispatches, and
turns every :class:`RestError`, every domain error (a ``GridvmError``: NOT_FOUND → 404,
BAD_REQUEST → 400, QUOTA_EXCEEDED → 403, a busy instance → 409) and anything unexpected
into UNICORE's JSON error body.  Every ``href`` and ``Location`` is absolute, built from the
request's Host.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

from twisted.internet import defer
from twisted.python import failure
from twisted.web import resource, server

from base.errors import GridvmError
from base.reasons import Reason
from image_repo.repository import ImageRepository
from image_repo.uploads import Uploads
from tsf.config import ExchangeSection
from tsf.errors import ClusterBusy, InstanceBusy
from tsf.exchange import ListSigner
from tsf.factory import TargetSystemFactory
from tsf.rest.auth import Authenticator, Principal, TokenIssuer
from tsf.rest.http import (
    OCTET,
    STREAM_CHUNK,
    Response,
    RestError,
    Stream,
    bad_request,
    json_object,
)
from tsf.sites import SiteRegistry
from tsf.users import UsersFile

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Response]]
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def header_text(request: server.Request, name: str) -> str | None:
    """A request header as text: its octets read as ISO-8859-1, so that any bytes a client
    sends are some text (twisted.web's own str lookup fails on bytes that are not UTF-8)."""
    value = request.getHeader(name.encode("ascii"))
    return None if value is None else value.decode("latin-1")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    handler: Handler

    def match(self, segments: list[str]) -> dict[str, Any] | None:
        params: dict[str, Any] = {}
        for i, part in enumerate(self.pattern):
            if part.endswith("*}"):
                params[part[1:-2]] = segments[i:]
                return params
            if i >= len(segments):
                return None
            if part.startswith("{"):
                params[part[1:-1]] = segments[i]
            elif part != segments[i]:
                return None
        return params if len(segments) == len(self.pattern) else None


@dataclass
class Limits:
    max_json: int = 1 << 20  #: bytes of a JSON request body
    max_upload: int = 256 << 20  #: bytes of one uploaded file
    max_image_file: int = 4 << 30  #: bytes of one file of an image being registered
    max_page: int = 1000  #: largest ``num`` of a listing


@dataclass(frozen=True)
class Sizing:
    """The largest job the site publishes in its resources (CPUs, memory, runtime)."""

    cpus: int = 4
    memory_mib: int = 8192
    runtime_s: int = 86400
    nodes: int = 4


@dataclass
class Call:
    """One request as the handlers see it."""

    request: server.Request
    principal: Principal
    app: RestApp
    base: str  #: absolute URL of BASE (…/<SITE>/rest/core)

    @property
    def caller(self):
        return self.principal.caller

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        return self.request.args or {}

    def url(self, *parts: str) -> str:
        return "/".join([self.base, *(quote(p, safe="/-_.~") for p in parts)])

    def header(self, name: str) -> str | None:
        return header_text(self.request, name)

    def wants_bytes(self) -> bool:
        """Accept decides JSON vs bytes (pyunicore sends Content-Type json on every GET)."""
        accept = (self.header("accept") or "").lower()
        return OCTET in accept or ("json" not in accept and "*/*" not in accept and
                                   accept != "")

    def body(self, limit: int | None = None) -> bytes:
        limit = self._check_size(limit)
        content = self.request.content
        if content is None:
            return b""
        content.seek(0)
        data = content.read(limit + 1)
        if len(data) > limit:
            raise bad_request(f"request body exceeds the limit of {limit} bytes")
        return data

    def _check_size(self, limit: int | None) -> int:
        limit = self.app.limits.max_upload if limit is None else limit
        if getattr(self.request, "too_large", False) or (
                getattr(self.request, "received", 0) > limit):
            raise bad_request(f"request body exceeds the limit of {limit} bytes")
        return limit

    def body_file(self) -> BinaryIO:
        """The request body as a file from its start, for streaming it on (twisted.web keeps
        a large body in a temporary file, not in memory); 400 beyond the upload limit."""
        self._check_size(None)
        content = self.request.content or io.BytesIO()
        content.seek(0)
        return content

    def json(self, what: str = "request body") -> dict[str, Any]:
        limit = self.app.limits.max_json
        return json_object(self.body(limit), limit, what)


@dataclass
class RestApp:
    """Routes, the authenticator, and the site's objects the handlers use."""

    site_name: str
    authenticator: Authenticator
    factory: TargetSystemFactory
    tokens: TokenIssuer
    sites: SiteRegistry
    limits: Limits = field(default_factory=Limits)
    sizing: Sizing = field(default_factory=Sizing)
    exchange: ExchangeSection | None = None  #: what OAI-PMH and the image lists publish
    list_signer: ListSigner | None = None  #: signs the image lists
    uploads: Uploads | None = None  #: creators' registrations waiting for files
    routes: list[Route] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.uploads is None:
            self.uploads = Uploads(self.factory.repository)

    @property
    def repository(self) -> ImageRepository:
        return self.factory.repository

    @property
    def users(self) -> UsersFile:
        return self.authenticator.users

    def add(self, method: str, path: str, handler: Handler) -> None:
        pattern = tuple(p for p in path.strip("/").split("/") if p)
        self.routes.append(Route(method, pattern, handler))

    def resolve(self, method: str, segments: list[str]) -> tuple[Handler, dict[str, Any]]:
        allowed = set()
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, params
            allowed.add(route.method)
        if allowed:
            raise RestError(405, f"{method} is not supported here; use "
                                 f"{', '.join(sorted(allowed))}", Reason.BAD_REQUEST,
                            {"Allow": ", ".join(sorted(allowed))})
        raise RestError(404, f"no such resource: /{'/'.join(segments)}", Reason.NOT_FOUND)

    async def handle(self, request: server.Request, base: str) -> Response:
        address = request.getClientAddress()
        principal = await self.authenticator.authenticate(request.getHeader(b"authorization"),
                                                          getattr(address, "host", None))
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath]
        if segments and segments[-1] == "" and len(segments) > 0:
            segments = segments[:-1]  # ".../files/" is ".../files": no redirects
        method = request.method.decode("ascii", "replace").upper()
        handler, params = self.resolve(method, segments)
        return await handler(Call(request, principal, self, base), **params)


class CoreResource(resource.Resource):
    """The leaf that serves every path below BASE."""

    isLeaf = True

    def __init__(self, app: RestApp, prefix: str):
        super().__init__()
        self.app, self.prefix = app, prefix

    def base_url(self, request: server.Request) -> str:
        scheme = "https" if request.isSecure() else "http"
        host = (header_text(request, "host") or "").strip()
        if not _HOST.match(host):
            address = request.getHost()
            host = f"{address.host}:{address.port}"
        return f"{scheme}://{host}{self.prefix}"

    def render(self, request: server.Request):
        started = time.perf_counter()
        gone = []
        request.notifyFinish().addErrback(lambda _f: gone.append(True))
        d = defer.Deferred.fromCoroutine(self.app.handle(request, self.base_url(request)))
        d.addErrback(self._error, request)
        d.addCallback(self._write, request, gone, started)
        d.addErrback(self._write_failed, request, gone)
        return server.NOT_DONE_YET

    @staticmethod
    def _error(reason: failure.Failure, request: server.Request) -> Response:
        err = as_rest_error(reason, request, "failed")
        return Response(err.status, json=err.body(), headers=dict(err.headers))

    @classmethod
    def _write_failed(cls, reason: failure.Failure, request: server.Request,
                      gone: list) -> None:
        """A response that could not be written: 500 when nothing was sent yet, else the
        connection is closed (the client sees a short body, never a hanging request)."""
        err = _internal_error(reason, request, "could not be answered")
        if gone or request.finished:
            return
        if request.startedWriting:
            request.loseConnection()
            return
        cls._write(Response(err.status, json=err.body()), request, gone, time.perf_counter())

    @staticmethod
    def _write(response: Response, request: server.Request, gone: list, started: float) -> None:
        if gone:
            return
        body, content_type = response.encode()
        request.setResponseCode(response.status)
        for name, value in response.headers.items():
            request.setHeader(name, value)
        if content_type:
            request.setHeader("content-type", content_type)
        if response.stream is not None and response.status not in (204, 304):
            request.setHeader("content-length", str(response.stream.length))
            if request.method != b"HEAD":
                d = defer.Deferred.fromCoroutine(_pump(request, response.stream))
                d.addErrback(lambda f: (log.warning("download stopped: %s",
                                                    f.getErrorMessage()),
                                        request.loseConnection()))
                return
            body = b""
        if response.status in (204, 304):
            body = b""
        elif request.method != b"HEAD":
            request.setHeader("content-length", str(len(body)))
        if request.method == b"HEAD":
            body = b""
        if body:
            request.write(body)
        request.finish()
        log.debug("%s %s -> %d (%.1f ms)", request.method.decode(),
                  request.uri.decode("utf-8", "replace"), response.status,
                  (time.perf_counter() - started) * 1000)


#: HTTP status of a domain error a handler lets through, by its reason.
_STATUS = {Reason.BAD_REQUEST: 400, Reason.NOT_AUTHORIZED: 403, Reason.NOT_FOUND: 404,
           Reason.QUOTA_EXCEEDED: 403}


def _status_of(err: GridvmError) -> int | None:
    """The HTTP status of a domain error (None: an unexpected one, answered 500)."""
    return 409 if isinstance(err, InstanceBusy | ClusterBusy) else _STATUS.get(err.reason)


def _internal_error(reason: failure.Failure, request: server.Request, what: str) -> RestError:
    """A defect: its traceback goes to the log under an incident id, the client gets that id
    and ``INTERNAL_ERROR`` — never the exception's text."""
    incident = secrets.token_hex(4)
    log.error("%s %s %s (incident %s):\n%s", request.method.decode("ascii", "replace"),
              request.uri.decode("utf-8", "replace"), what, incident, reason.getTraceback())
    return RestError(500, f"internal error (incident {incident}): the site's log has the "
                          "details", Reason.INTERNAL_ERROR)


def as_rest_error(reason: failure.Failure, request: server.Request, what: str) -> RestError:
    """The HTTP error of a failure: a RestError as it is, a domain error by its reason, else
    an internal error (logged with an incident id)."""
    err = reason.value
    if isinstance(err, GridvmError) and (status := _status_of(err)):
        return RestError(status, str(err), err.reason)
    return err if isinstance(err, RestError) else _internal_error(reason, request, what)


def answer_failure(reason: failure.Failure, request: server.Request, what: str, *,
                   challenge: bool = True) -> None:
    """Answer a resource outside the router (events, metrics) with UNICORE's JSON error body
    for ``reason`` (a :class:`RestError`, else an internal error with an incident id);
    ``challenge=False`` leaves out ``WWW-Authenticate``."""
    err = as_rest_error(reason, request, f"{what} failed")
    if request.finished or request.startedWriting:
        return
    request.setResponseCode(err.status)
    for name, value in err.headers.items():
        if challenge or name.lower() != "www-authenticate":
            request.setHeader(name, value)
    body, content_type = Response(err.status, json=err.body()).encode()
    request.setHeader("content-type", content_type)
    request.setHeader("content-length", str(len(body)))
    request.write(body)
    request.finish()


class _Backpressure:
    """A push producer for a streamed body: the transport pauses and resumes it, so at most
    a chunk or two sits in memory however large the file."""

    def __init__(self) -> None:
        self.resumed: defer.Deferred | None = None
        self.stopped = False

    def pauseProducing(self) -> None:
        if self.resumed is None:
            self.resumed = defer.Deferred()

    def resumeProducing(self) -> None:
        resumed, self.resumed = self.resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()


async def _pump(request: server.Request, stream: Stream) -> None:
    """Write ``stream`` to ``request`` chunk by chunk, waiting while the client is slow."""
    producer = _Backpressure()
    request.registerProducer(producer, True)
    position, end = stream.start, stream.start + stream.length
    try:
        while position < end and not producer.stopped:
            if producer.resumed is not None:
                await producer.resumed
                continue
            chunk = await stream.read(position, min(STREAM_CHUNK, end - position))
            if not chunk:
                raise OSError(f"the file ended {end - position} bytes early")
            request.write(chunk)
            position += len(chunk)
    finally:
        request.unregisterProducer()
    if not producer.stopped:
        request.finish()
