"""The site's hypervisor hosts, for administrators.

``GET hosts``: every host with its state (UP / DRAINING / DOWN), capacity, what gridvm's
live instances use of it, its instances and cached images; ``GET hosts/{name}``: one;
``POST hosts/{name}/drain``: it takes no new instance (its instances go on);
``POST hosts/{name}/enable``: it takes instances again.  Anyone else gets a 403.
"""

from __future__ import annotations

from base.reasons import Reason
from tsf.rest.app import Call, RestApp
from tsf.rest.http import Response, RestError, link, not_found


def _admin(call: Call) -> None:
    if not call.caller.admin:
        raise RestError(403, "the hypervisor hosts are for administrators only",
                        Reason.NOT_AUTHORIZED)
    if call.app.factory.hosts is None:
        raise not_found("this site has no host pool")


def host_docs(call: Call) -> list[dict]:
    factory = call.app.factory
    usage = factory.registry.host_usage()
    docs = []
    for view in factory.hosts.views():
        used = usage.get(view.name)
        doc = view.to_dict()
        doc["used"] = {"vcpus": used.vcpus if used else 0,
                       "memoryMiB": used.memory_mib if used else 0}
        doc["_links"] = {"self": link(call.url("hosts", view.name)),
                         "drain": link(call.url("hosts", view.name, "drain"), "POST: drain"),
                         "enable": link(call.url("hosts", view.name, "enable"), "POST: enable")}
        docs.append(doc)
    return docs


def _one(call: Call, name: str) -> dict:
    call.app.factory.hosts.host(name)  # 404 for an unknown name
    return next(doc for doc in host_docs(call) if doc["name"] == name)


async def list_hosts(call: Call) -> Response:
    _admin(call)
    return Response(json={"hosts": host_docs(call), "_links": {"self": link(call.url("hosts"))}})


async def get_host(call: Call, name: str) -> Response:
    _admin(call)
    return Response(json=_one(call, name))


async def drain_host(call: Call, name: str) -> Response:
    _admin(call)
    call.app.factory.hosts.drain(name)
    return Response(json=_one(call, name))


async def enable_host(call: Call, name: str) -> Response:
    _admin(call)
    call.app.factory.hosts.enable(name)
    return Response(json=_one(call, name))


def install(app: RestApp) -> None:
    app.add("GET", "hosts", list_hosts)
    app.add("GET", "hosts/{name}", get_host)
    app.add("POST", "hosts/{name}/drain", drain_host)
    app.add("POST", "hosts/{name}/enable", enable_host)
