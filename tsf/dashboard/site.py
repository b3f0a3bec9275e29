"""The dashboard's resource: ``/<SITE>/dashboard/...``, server-rendered HTML for a browser.

One leaf resource: it finds the session (cookie), checks the CSRF token of every POST,
routes to a page handler (:mod:`tsf.dashboard.pages`) with the REST site's router, and
renders the handler's :class:`Page` with jinja2 (autoescaping).  Errors are HTML pages with
the status, message and reason code; a page that needs a login redirects to it.  Handlers
call the same factory and repository methods as the REST handlers, with the session's user
as the caller, so a user sees exactly what the REST API lets them see.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from twisted.internet import defer
from twisted.python import failure
from twisted.web import resource, server

from base.reasons import Reason
from tsf.dashboard.sessions import COOKIE, Session, SessionStore, cookie
from tsf.rest.app import Call, CoreResource, RestApp, as_rest_error, header_text
from tsf.rest.auth import Principal
from tsf.rest.http import Response, RestError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
HTML = "text/html; charset=utf-8"
#: No inline script or style, nothing from elsewhere, never in a frame.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}


@dataclass
class Page:
    """What a page handler returns: a template and its values."""

    template: str
    values: dict[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass
class View:
    """One dashboard request as the page handlers see it."""

    request: server.Request
    dashboard: Dashboard
    session: Session | None
    principal: Principal

    @property
    def app(self) -> RestApp:
        return self.dashboard.app

    @property
    def factory(self):
        return self.app.factory

    @property
    def caller(self):
        if self.principal.user is None:
            raise RestError(401, "log in first", Reason.NOT_AUTHORIZED)
        return self.principal.caller

    def form(self, name: str, default: str = "") -> str:
        """A form field (or query parameter) as text; the first of repeated ones."""
        values = (self.request.args or {}).get(name.encode())
        return values[0].decode("utf-8", "replace").strip() if values else default

    def url(self, *parts: str) -> str:
        return "/".join([self.dashboard.prefix, *(quote(p, safe="/-_.~:") for p in parts)])

    def rest_call(self) -> Call:
        """This request as the REST handlers see it (same caller, REST base URL)."""
        scheme = "https" if self.request.isSecure() else "http"
        host = header_text(self.request, "host") or "localhost"
        return Call(self.request, self.principal, self.app,
                    f"{scheme}://{host}/{self.app.site_name}/rest/core")


def redirect(location: str) -> Response:
    return Response(303, headers={"Location": location})


class Dashboard(resource.Resource):
    """The leaf under ``/<SITE>/dashboard``."""

    isLeaf = True

    def __init__(self, app: RestApp, sessions: SessionStore | None = None):
        super().__init__()
        from tsf.dashboard import pages

        self.app = app
        self.prefix = f"/{app.site_name}/dashboard"
        self.sessions = sessions if sessions is not None else SessionStore()
        self.router = RestApp(app.site_name, app.authenticator, app.factory, app.tokens,
                              app.sites)  # only its routes are used
        pages.install(self.router)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.templates.globals.update(site=app.site_name, prefix=self.prefix)
        self.templates.filters["when"] = _when

    # -- request handling -------------------------------------------------------------------
    def render(self, request: server.Request):
        started = time.perf_counter()
        gone: list = []
        request.notifyFinish().addErrback(lambda _f: gone.append(True))
        view = self._view(request)
        d = defer.Deferred.fromCoroutine(self._handle(view))
        d.addErrback(self._error, view)
        d.addCallback(self._finish, view)
        d.addCallback(CoreResource._write, request, gone, started)
        d.addErrback(CoreResource._write_failed, request, gone)
        return server.NOT_DONE_YET

    def _view(self, request: server.Request) -> View:
        session = self.sessions.get(_cookie(request, COOKIE))
        user = self.app.authenticator.users.get(session.user) if session else None
        if session is not None and user is None:
            self.sessions.end(session.session_id)
            session = None
        return View(request, self, session, Principal(user, "SESSION" if user else "NONE"))

    async def _handle(self, view: View) -> Response | Page:
        request = view.request
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath]
        segments = [s for s in segments if s] or ["jobs"]
        if segments[0] == "static":
            return _static(segments[1:])
        method = request.method.decode("ascii", "replace").upper()
        handler, params = self.router.resolve(method, segments)
        public = getattr(handler, "public", False)
        if method == "POST" and not public and (
                view.session is None or not view.session.csrf_ok(view.form("csrf") or None)):
            raise RestError(403, "the form's CSRF token is missing or wrong: reload the "
                                     "page and try again", Reason.NOT_AUTHORIZED)
        if not public and view.principal.user is None:
            if method == "GET":
                return redirect(f"{self.prefix}/login?next={quote(request.uri.decode())}")
            raise RestError(401, "log in first", Reason.NOT_AUTHORIZED)
        return await handler(view, **params)

    def _error(self, reason: failure.Failure, view: View) -> Page:
        err = as_rest_error(reason, view.request, "failed")
        return Page("error.html.j2", {"error": err}, err.status)

    def _finish(self, result: Response | Page, view: View) -> Response:
        if isinstance(result, Page):
            values = {"user": view.principal.user, "session": view.session, **result.values}
            html = self.templates.get_template(result.template).render(values)
            result = Response(result.status, data=html.encode(), content_type=HTML)
        if result.content_type in (HTML, None) and result.stream is None:
            for name, value in SECURITY_HEADERS.items():
                result.headers.setdefault(name, value)
        return result

    def set_cookie(self, request: server.Request, name: str, value: str,
                   max_age: int | None = None) -> None:
        # twisted's addCookie cannot write SameSite
        request.responseHeaders.addRawHeader(
            b"set-cookie", cookie(name, value, f"/{self.app.site_name}", request.isSecure(),
                                      max_age).encode())


def _cookie(request: server.Request, name: str) -> str | None:
    value = request.getCookie(name.encode())
    return None if value is None else value.decode("latin-1")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _static(parts: list[str]) -> Response:
    """A file of ``static/`` (one level, known names only)."""
    if len(parts) != 1 or parts[0].startswith("."):
        raise RestError(404, "no such file", Reason.NOT_FOUND)
    path = HERE / "static" / parts[0]
    if not path.is_file():
        raise RestError(404, f"no such file: {parts[0]}", Reason.NOT_FOUND)
    kind = _STATIC_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    return Response(data=path.read_bytes(), content_type=kind,
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})
