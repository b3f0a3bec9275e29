"""Target system factories and sites (UNICORE's TSF and TSS), and the applications.

There is one factory, ``default_target_system_factory`` (the id UCC hard-codes).  Its
``resources`` publish the image repository as the CHOICE resource ``Image`` (only the images
the caller may see) plus the sizing resources; ``applications`` are the IDB applications of
those images and ``CONTAINER---v1.0``.  A site is a per-user handle that accepts jobs; one is
created on demand when a user submits to ``/jobs``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from twisted.internet import threads

from tsf.rest.app import Call, RestApp
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
                 "description": "run COMMAND in the image named by IMAGE_URL (an image name "
                                "or the container URL an image was built from)",
                 "options": {"IMAGE_URL": ("STRING", "image name or container URL"),
                             "COMMAND": ("STRING", "the command line to run"),
                             "OPTIONS": ("STRING", "ignored (no container runtime)")}}


@dataclass
class Site:
    site_id: str
    owner: str
    created: float = field(default_factory=time.time)
    termination: float | None = None  #: epoch seconds after which the site is removed


class SiteRegistry:
    """Per-user sites, kept in the state store when there is one (so their URLs outlive a
    server restart).  A site past its termination time is removed — not its jobs, as in
    UNICORE.  Which site a job went to is the job's own ``site_id``."""

    def __init__(self, store=None, clock=time.time):
        self.store = store
        self.clock = clock
        self.sites: dict[str, Site] = {}

    async def load(self) -> int:
        """Read the sites saved by an earlier run; returns how many."""
        if self.store is not None:
            for row in await self.store.load_sites():
                self.sites[row["id"]] = Site(row["id"], row["owner"], row["created"],
                                             row["termination"])
        return len(self.sites)

    def create(self, owner: str, termination: float | None = None) -> Site:
        site = Site(uuid.uuid4().hex[:12], owner, termination=termination)
        self.sites[site.site_id] = site
        if self.store is not None:
            self.store.save_site(site.site_id, owner, site.created, termination)
        return site

    def remove(self, site_id: str) -> None:
        if self.sites.pop(site_id, None) is not None and self.store is not None:
            self.store.delete_site(site_id)

    def _expire(self) -> None:
        now = self.clock()
        for site in [s for s in self.sites.values()
                     if s.termination is not None and s.termination <= now]:
            self.remove(site.site_id)

    def of(self, caller) -> list[Site]:
        self._expire()
        return sorted((s for s in self.sites.values() if caller.admin or s.owner == caller.user),
                      key=lambda s: s.created)

    def get(self, site_id: str, caller) -> Site:
        self._expire()
        site = self.sites.get(site_id)
        if site is None or not (caller.admin or site.owner == caller.user):
            raise not_found(f"no site {site_id}")
        return site

    def default_for(self, caller) -> Site:
        mine = [s for s in self.of(caller) if s.owner == caller.user]
        return mine[0] if mine else self.create(caller.user)


def visible_images(call: Call) -> list:
    """Blocking: the caller's usable images (call in a thread) — on a site that requires
    endorsements, only those it trusts now (the others could never run a job)."""
    factory = call.app.context["factory"]
    records = [r for r in factory.repository.list(call.caller) if r.status != "deleted"]
    if factory.trust.require:
        trusted = {c.id for c in factory.repository.match(
            {}, call.caller, policy=factory.trust).candidates}
        records = [r for r in records if r.id in trusted]
    return records


def applications_of(records) -> dict[str, dict]:
    """``Name---vVersion`` → application (IDB entries of the images, plus CONTAINER)."""
    apps: dict[str, dict] = {}
    for record in records:
        idb = record.metadata.to_dict().get("idb") or {}
        for app in idb.get("applications", []):
            key = f"{app['name']}---v{app.get('version') or '0'}"
            entry = apps.setdefault(key, {**app, "images": []})
            entry["images"].append(record.ref)
    apps["CONTAINER---v1.0"] = {**CONTAINER_APP, "images": [r.ref for r in records]}
    return dict(sorted(apps.items()))


def resources_of(records, limits: dict) -> dict:
    names = sorted({r.name for r in records})
    docs = [r.metadata.to_dict() for r in records]
    distros = sorted({d.get("semantic", {}).get("os", {}).get("distro") for d in docs} - {None})
    archs = sorted({d.get("origin", {}).get("architecture") for d in docs} - {None})
    cpus, memory, runtime = limits["cpus"], limits["memory_mib"], limits["runtime_s"]
    partition = {
        "Image": names, "Nodes": "1-1", "CPUsPerNode": f"1-{cpus}", "TotalCPUs": f"1-{cpus}",
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
    return {
        "siteName": call.app.site_name, "supportsReservation": "false",
        "resources": resources_of(records, call.app.context["sizing"]),
        "applications": list(applications_of(records)),
        "otherInfo": {"TargetSystemType": "gridvm virtual machines",
                      "Images": str(len(records))},
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
    site = call.app.context["sites"].create(call.caller.user, termination)
    return Response.created(call.url("sites", site.site_id))


async def _applications(call: Call, factory_id: str, site_id: str | None
                        ) -> tuple[str, dict[str, dict]]:
    """(URL of the factory or site, its applications) after checking it exists."""
    if site_id is not None:
        call.app.context["sites"].get(site_id, call.caller)
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
        "_links": {"self": link(f"{base}/applications/{app}")},
    })


async def list_sites(call: Call) -> Response:
    registry = call.app.context["sites"]
    sites = registry.of(call.caller)
    offset = int_param(call.args, "offset", 0)
    num = int_param(call.args, "num", 200, 1, call.app.limits.max_page)
    page = sites[offset: offset + num]
    return Response(json={"sites": [call.url("sites", s.site_id) for s in page],
                          "_links": paging_links(call, "sites", offset, num, len(sites))})


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
    site = call.app.context["sites"].get(site_id, call.caller)
    doc = await _properties(call)
    doc["umask"] = "77"
    doc["numberOfJobs"] = sum(1 for j in call.app.context["factory"].list_jobs(call.caller)
                              if j.site_id == site_id)
    doc["terminationTime"] = iso(site.termination)
    doc["submissionTime"] = iso(site.created)
    base = call.url("sites", site_id)
    doc["_links"] = {**_links_common(call, base), "jobs": link(f"{base}/jobs"),
                     "parent": link(call.url("factories", FACTORY_ID))}
    return Response(json=doc)


async def delete_site(call: Call, site_id: str) -> Response:
    registry = call.app.context["sites"]
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
