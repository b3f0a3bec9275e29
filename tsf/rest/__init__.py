"""The UNICORE REST site on Twisted web (``/<SITE>/rest/core``), as pyunicore 2.x uses it.

``build_site`` wires the resource families (one module each: ``base``, ``sites``, ``jobs``,
``storages``, ``gridvm``, ``images`` …) into a :class:`twisted.web.server.Site`.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.web import resource, server

from image_repo.uploads import Uploads
from tsf.config import ExchangeSection
from tsf.dashboard.events import EventStreams
from tsf.dashboard.sessions import SessionStore
from tsf.dashboard.site import Dashboard
from tsf.exchange import ListSigner
from tsf.factory import TargetSystemFactory
from tsf.metrics import MetricsResource
from tsf.rest import (
    base,
    clusters,
    gridvm,
    hosts,
    imagelists,
    images,
    jobs,
    oai,
    sites,
    storages,
)
from tsf.rest.app import CoreResource, Limits, RestApp, Sizing
from tsf.rest.auth import Authenticator, TokenIssuer
from tsf.rest.http import BoundedRequest


class _NotFound(resource.Resource):
    def render(self, request):
        request.setResponseCode(404)
        request.setHeader("content-type", "application/json")
        return b'{"errorMessage": "no such resource", "status": 404, "reason": "NOT_FOUND"}\n'

    def getChild(self, path, request):
        return self


def build_app(site_name: str, factory: TargetSystemFactory, authenticator: Authenticator,
              tokens: TokenIssuer, limits: Limits | None = None,
              sizing: Sizing | None = None, exchange: ExchangeSection | None = None,
              list_signer: ListSigner | None = None, uploads: Uploads | None = None) -> RestApp:
    app = RestApp(site_name, authenticator, factory, tokens, factory.sites,
                  limits=limits or Limits(), sizing=sizing or Sizing(), exchange=exchange,
                  list_signer=list_signer, uploads=uploads)
    for family in (base, sites, jobs, storages, gridvm, clusters, hosts, images, oai,
                   imagelists):
        family.install(app)
    return app


def build_site(app: RestApp, metrics_token: str = "") -> server.Site:
    """``/<SITE>/rest/core/...`` → the app, ``/<SITE>/dashboard/...`` → the dashboard,
    ``/<SITE>/events`` and ``/<SITE>/metrics`` (the same app's users and factory;
    ``metrics_token``: a bearer token that may read the metrics); everything else → a JSON
    404."""
    root = _NotFound()
    site_node, rest_node = _NotFound(), _NotFound()
    root.putChild(app.site_name.encode(), site_node)
    site_node.putChild(b"rest", rest_node)
    rest_node.putChild(b"core", CoreResource(app, f"/{app.site_name}/rest/core"))
    sessions = SessionStore(store=app.factory.store)
    site_node.putChild(b"dashboard", Dashboard(app, sessions))
    site_node.putChild(b"events", EventStreams(app, sessions, reactor))
    site_node.putChild(b"metrics", MetricsResource(app, metrics_token))

    class Request(BoundedRequest):
        max_body = app.limits.max_upload
        large_body = app.limits.max_image_file  # files of images and bundles being registered
        large_paths = (b"/images/uploads/", b"/images/bundles")

    site = server.Site(root)
    site.requestFactory = Request
    site.displayTracebacks = False
    site.noisy = False
    return site
