"""The UNICORE REST site on Twisted web (``/<SITE>/rest/core``), as pyunicore 2.x uses it.

``build_site`` wires the resource families (one module each: ``base``, ``sites``, ``jobs``,
``storages``, ``gridvm``) into a :class:`twisted.web.server.Site`.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.web import resource, server

from tsf.dashboard.events import EventStreams
from tsf.dashboard.sessions import SessionStore
from tsf.dashboard.site import Dashboard
from tsf.metrics import MetricsResource
from tsf.rest import base, gridvm, imagelists, jobs, oai, sites, storages
from tsf.rest.app import CoreResource, Limits, RestApp
from tsf.rest.auth import Authenticator, TokenIssuer
from tsf.rest.http import BoundedRequest
from tsf.rest.sites import SiteRegistry


class _NotFound(resource.Resource):
    def render(self, request):
        request.setResponseCode(404)
        request.setHeader("content-type", "application/json")
        return b'{"errorMessage": "no such resource", "status": 404, "reason": "NOT_FOUND"}\n'

    def getChild(self, path, request):
        return self


def build_app(site_name: str, factory, authenticator: Authenticator, tokens: TokenIssuer,
              limits: Limits | None = None, sizing: dict | None = None) -> RestApp:
    app = RestApp(site_name, authenticator, limits=limits or Limits())
    app.context.update(factory=factory, tokens=tokens, sites=SiteRegistry(factory.store),
                       sizing=sizing or {"cpus": 4, "memory_mib": 8192, "runtime_s": 86400})
    for family in (base, sites, jobs, storages, gridvm, oai, imagelists):
        family.install(app)
    return app


def build_site(app: RestApp) -> server.Site:
    """``/<SITE>/rest/core/...`` → the app, ``/<SITE>/dashboard/...`` → the dashboard (the
    same app's users and factory); everything else → a JSON 404."""
    root = _NotFound()
    site_node, rest_node = _NotFound(), _NotFound()
    root.putChild(app.site_name.encode(), site_node)
    site_node.putChild(b"rest", rest_node)
    rest_node.putChild(b"core", CoreResource(app, f"/{app.site_name}/rest/core"))
    sessions = SessionStore()
    site_node.putChild(b"dashboard", Dashboard(app, sessions))
    site_node.putChild(b"events", EventStreams(app, sessions, reactor))
    site_node.putChild(b"metrics", MetricsResource(app, app.context.get("metrics_token", "")))

    class Request(BoundedRequest):
        max_body = app.limits.max_upload

    site = server.Site(root)
    site.requestFactory = Request
    site.displayTracebacks = False
    site.noisy = False
    return site
