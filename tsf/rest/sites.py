"""Target system factories and sites (UNICORE's TSF and TSS), and the applications.

There is one factory, ``default_target_system_factory`` (the id UCC hard-codes).  Its
``resources`` publish the image repository as the CHOICE resource ``Image`` (only the images
the caller may see) plus the sizing resources; ``applications`` are the IDB applications of
those images and ``CONTAINER---v1.0``.  A site is a per-user handle that accepts jobs
(``tsf.sites``); one is created on demand when a user submits to ``/jobs``.
"""

from __future__ import annotations

import time

from twisted.internet import threads

from tsf.containers import is_container
from tsf.rest.app import Call, RestApp, Sizing
from tsf.rest.http import (
    Response,
    check_keys,
    future_time,
    int_param,
    iso,
    link,
    not_found,
)

FACTORY_ID = "default_target_system_factory"
PARTITION = "batch"
CONTAINER_APP = {"name": "CONTAINER", "version": "1.0",
                 "description": "run COMMAND in the container image named by IMAGE_URL "
                                "(its docker:// reference or name), with the container "
                                "runtime of a VM image; or in the VM image IMAGE_URL names "
                                "or was built from",
                 "options": {"IMAGE_URL": ("STRING", "container reference or image name"),
                             "COMMAND": ("STRING", "the command line to run"),
                             "OPTIONS": ("STRING", "ignored (the site sets the runtime's)")}}


def visible_images(call: Call) -> list:
    """Blocking (call in a thread): the images the caller could run a job in here (VM
    images and container images)."""
    return call.app.factory.visible_images(call.caller)


def _split(records) -> tuple[list, list]:
    """(VM images, container images) of ``records``."""
    containers = [r for r in records if is_container(r)]
    return [r for r in records if not is_container(r)], containers


def applications_of(records) -> dict[str, dict]:
    """``Name---vVersion`` → application (IDB entries of the VM images, plus CONTAINER with
    the VM images and the container images, by reference and name:version, it may name)."""
    records, containers = _split(records)
    apps: dict[str, dict] = {}
    for record in records:
        idb = record.metadata.to_dict().get("idb") or {}
        for app in idb.get("applications", []):
            key = f"{app['name']}---v{app.get('version') or '0'}"
            entry = apps.setdefault(key, {**app, "images": []})
            entry["images"].append(record.ref)
    apps["CONTAINER---v1.0"] = {**CONTAINER_APP, "images": [r.ref for r in records],
                                "containers": [r.metadata.origin.source_url or r.ref
                                               for r in containers]}
    return dict(sorted(apps.items()))


def resources_of(records, limits: Sizing) -> dict:
    names = sorted({r.name for r in records})
    docs = [r.metadata.to_dict() for r in records]
    distros = sorted({d.get("semantic", {}).get("os", {}).get("distro") for d in docs} - {None})
    archs = sorted({d.get("origin", {}).get("architecture") for d in docs} - {None})
    cpus, memory, runtime = limits.cpus, limits.memory_mib, limits.runtime_s
    partition = {
        "Image": names, "Nodes": f"1-{limits.nodes}", "CPUsPerNode": f"1-{cpus}",
        "TotalCPUs": f"1-{cpus * limits.nodes}",
        "CPUs": f"1-{cpus}", "Memory": f"1-{memory}M", "MemoryPerNode": f"1-{memory}M",
        "Runtime": f"1-{runtime}", "OperatingSystem": distros or "*",
        "OperatingSystemVersion": "*", "CPUArchitecture": archs or "*", "VO": "*",
        "Disk": "*",
    }
    return {PARTITION: partition}


def _links_common(call: Call, base: str) -> dict:
    return {"self": link(base), "applications": link(f"{base}/applications",
                                                     "applications (IDB of visible images)")}


async def _properties(call: Call) -> dict:
    records = await threads.deferToThread(visible_images, call)
    vms, containers = _split(records)
    return {
        "siteName": call.app.site_name, "supportsReservation": "false",
        "resources": resources_of(vms, call.app.sizing),
        "applications": list(applications_of(records)),
        "otherInfo": {"TargetSystemType": "gridvm virtual machines",
                      "Images": str(len(vms)), "ContainerImages": str(len(containers))},
        "remainingComputeTime": {}, "owner": call.caller.user, "acl": [], "tags": [],
        "currentTime": iso(time.time()), "resourceStatus": "READY",
    }


async def list_factories(call: Call) -> Response:
    call.caller  # noqa: B018 (authenticated callers only)
    return Response(json={"factories": [call.url("factories", FACTORY_ID)],
                          "_links": {"self": link(call.url("factories"))}})


def _factory(factory_id: str) -> None:
    if factory_id != FACTORY_ID:
        raise not_found(f"no factory {factory_id}")


async def get_factory(call: Call, factory_id: str) -> Response:
    _factory(factory_id)
    doc = await _properties(call)
    base = call.url("factories", factory_id)
    doc["_links"] = {**_links_common(call, base), "sites": link(call.url("sites"))}
    return Response(json=doc)


async def create_site(call: Call, factory_id: str = FACTORY_ID) -> Response:
    _factory(factory_id)
    doc = call.json()
    check_keys(doc, {"terminationTime", "parameters"})
    termination = doc.get("terminationTime")
    if termination is not None:
        termination = future_time(termination)
    site = call.app.sites.create(call.caller.user, termination)
    return Response.created(call.url("sites", site.site_id))


async def _applications(call: Call, factory_id: str, site_id: str | None
                        ) -> tuple[str, dict[str, dict]]:
    """(URL of the factory or site, its applications) after checking it exists."""
    if site_id is not None:
        call.app.sites.get(site_id, call.caller)
        base = call.url("sites", site_id)
    else:
        _factory(factory_id)
        base = call.url("factories", factory_id)
    records = await threads.deferToThread(visible_images, call)
    return base, applications_of(records)


async def list_applications(call: Call, factory_id: str = FACTORY_ID,
                            site_id: str | None = None) -> Response:
    base, apps = await _applications(call, factory_id, site_id)
    return Response(json={"applications": [f"{base}/applications/{n}" for n in apps],
                          "_links": {"self": link(f"{base}/applications")}})


async def get_application(call: Call, app: str, factory_id: str = FACTORY_ID,
                          site_id: str | None = None) -> Response:
    base, apps = await _applications(call, factory_id, site_id)
    entry = apps.get(app)
    if entry is None:
        raise not_found(f"no application {app}")
    options = {}
    for name, (kind, text) in (entry.get("options") or {}).items():
        options[name] = {"Description": text, "Type": kind, "ValidValues": []}
    return Response(json={
        "ApplicationName": entry["name"], "ApplicationVersion": str(entry.get("version", "")),
        "ApplicationDescription": entry.get("description", ""), "Options": options,
        "images": entry["images"],
        **({"containers": entry["containers"]} if "containers" in entry else {}),
        "_links": {"self": link(f"{base}/applications/{app}")},
    })


async def list_sites(call: Call) -> Response:
    registry = call.app.sites
    sites = registry.of(call.caller)
    offset = int_param(call.args, "offset", 0)
    num = int_param(call.args, "num", 200, 1, call.app.limits.max_page)
    page = sites[offset: offset + num]
    return Response(json={"sites": [call.url("sites", s.site_id) for s in page],
                          "_links": paging_links(call, "sites", offset, num, len(sites))})


def paged_list(call: Call, name: str, items: list, url_of, doc_of) -> Response:
    """One page (``offset``, ``num``) of ``items`` as the collection ``name``: their URLs, their
    documents as ``details`` and the paging links."""
    offset = int_param(call.args, "offset", 0)
    num = int_param(call.args, "num", 200, 1, call.app.limits.max_page)
    page = items[offset: offset + num]
    return Response(json={name: [url_of(item) for item in page],
                          "details": [doc_of(call, item) for item in page],
                          "_links": paging_links(call, name, offset, num, len(items))})


def paging_links(call: Call, name: str, offset: int, num: int, total: int,
                 extra: str = "") -> dict:
    links = {"self": link(call.url(name) + f"?offset={offset}&num={num}{extra}")}
    if offset + num < total:
        links["next"] = link(call.url(name) + f"?offset={offset + num}&num={num}{extra}")
    if offset > 0:
        links["previous"] = link(call.url(name) + f"?offset={max(0, offset - num)}"
                                                  f"&num={num}{extra}")
    return links


async def get_site(call: Call, site_id: str) -> Response:
    site = call.app.sites.get(site_id, call.caller)
    doc = await _properties(call)
    doc["umask"] = "77"
    doc["numberOfJobs"] = sum(1 for j in call.app.factory.list_jobs(call.caller)
                              if j.site_id == site_id)
    doc["terminationTime"] = iso(site.termination)
    doc["submissionTime"] = iso(site.created)
    base = call.url("sites", site_id)
    doc["_links"] = {**_links_common(call, base), "jobs": link(f"{base}/jobs"),
                     "parent": link(call.url("factories", FACTORY_ID))}
    return Response(json=doc)


async def delete_site(call: Call, site_id: str) -> Response:
    registry = call.app.sites
    registry.get(site_id, call.caller)
    registry.remove(site_id)
    return Response.no_content()


async def post_sites(call: Call) -> Response:
    return await create_site(call, FACTORY_ID)


def install(app: RestApp) -> None:
    app.add("GET", "factories", list_factories)
    app.add("GET", "factories/{factory_id}", get_factory)
    app.add("POST", "factories/{factory_id}", create_site)
    app.add("GET", "factories/{factory_id}/applications", list_applications)
    app.add("GET", "factories/{factory_id}/applications/{app}", get_application)
    app.add("GET", "sites", list_sites)
    app.add("POST", "sites", post_sites)
    app.add("GET", "sites/{site_id}", get_site)
    app.add("DELETE", "sites/{site_id}", delete_site)
    app.add("GET", "sites/{site_id}/applications", list_applications)
    app.add("GET", "sites/{site_id}/applications/{app}", get_application)
