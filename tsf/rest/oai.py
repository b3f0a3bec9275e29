"""OAI-PMH 2.0 at ``BASE/oai`` (GET query or POST form), answered by image_repo.oaipmh.

Without credentials the harvester sees the images readable by "others" that name no VO;
with Basic or Bearer credentials, what that user may read.  docs/rest.md lists the verbs,
formats and sets.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet import threads

from image_repo.oaipmh import ANONYMOUS, OaiProvider, ProviderInfo
from tsf.rest.app import Call, RestApp
from tsf.rest.http import Response

XML = "text/xml; charset=utf-8"


def provider_info(call: Call) -> ProviderInfo:
    exchange = call.app.exchange
    host = urlsplit(call.base).hostname or "localhost"
    return ProviderInfo(
        repository_name=f"gridvm image catalogue of {call.app.site_name}",
        base_url=call.url("oai"),
        admin_email=exchange.admin_email if exchange else "gridvm@localhost",
        repository_identifier=f"{call.app.site_name.lower()}.{host}",
        page_size=exchange.oai_page_size if exchange else 100)


async def oai(call: Call) -> Response:
    caller = ANONYMOUS if call.principal.anonymous else call.caller
    arguments = {key.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in values]
                 for key, values in call.args.items()}
    provider = OaiProvider(call.app.repository, provider_info(call))
    data = await threads.deferToThread(provider.handle, arguments, caller)
    return Response(data=data, content_type=XML)


def install(app: RestApp) -> None:
    app.add("GET", "oai", oai)
    app.add("POST", "oai", oai)
