"""gridvm's own resources: the caller's VM instances, the warm pools and the image catalogue.

``GET instances[/{id}]``: state, reason, health and phase timings (owners see their own,
administrators all); ``GET instances/{id}/log``: its console log, kept after it ended;
``DELETE instances/{id}[?force=true]`` ends one.  ``GET pools``: the
warm pools that serve the caller.  ``GET images[/{ref}]``: the images the caller may use,
each with its endorsements and the site's trust verdict on it now (``trust``).
``POST images/match``: which images would run a job (a UNICORE job description, or
``{"requirements": {...}}`` in image_repo's form), and why each other visible image would not
(with the site's trust policy, as the factory matches).
"""

from __future__ import annotations

from twisted.internet import threads

from image_repo.errors import ImageNotFound, RepositoryError
from image_repo.requirements import Requirements
from target_system.jobdesc import JobDescriptionError, parse_job, requirement_sources
from tsf.rest.app import Call, RestApp
from tsf.rest.http import (
    TEXT,
    Response,
    bad_request,
    int_param,
    link,
    not_found,
    str_param,
)
from tsf.rest.sites import paged_list, paging_links


def _instance_doc(call: Call, target) -> dict:
    doc = target.describe()
    doc["_links"] = {"self": link(call.url("instances", target.instance_id)),
                     "log": link(call.url("instances", target.instance_id, "log"),
                                 "the console log"),
                     "jobs": link(call.url("jobs"), "your jobs")}
    doc["jobLinks"] = [call.url("jobs", j) for j in sorted(target.jobs)]
    return doc


async def list_instances(call: Call) -> Response:
    targets = call.app.factory.list_instances(call.caller)
    targets.sort(key=lambda t: (t.lifecycle.entered.get("REQUESTED", 0), t.instance_id))
    return paged_list(call, "instances", targets,
                      lambda t: call.url("instances", t.instance_id), _instance_doc)


async def delete_instance(call: Call, instance_id: str) -> Response:
    """End an instance now (owner or administrator); one with unfinished jobs only with
    ``?force=true``, which aborts them first."""
    force = (str_param(call.args, "force") or "").lower() in ("true", "1", "yes")
    await call.app.factory.end_instance(instance_id, call.caller, force=force)
    return Response.no_content()


def console_of(factory, instance_id: str, caller) -> str:
    """The end of an instance's console log (the owner's or an administrator's), kept after
    the instance ended; NotFound for another's instance, "" when there is none."""
    factory.instance(instance_id, caller)
    read = getattr(factory.vmm, "console_text", None)
    return (read(instance_id) if read is not None else None) or ""


async def instance_log(call: Call, instance_id: str) -> Response:
    """``GET instances/{id}/log``: the instance's console log as text (its last 256 KiB),
    also after the instance ended, so that a failed boot can be diagnosed."""
    text = await threads.deferToThread(console_of, call.app.factory, instance_id, call.caller)
    return Response(data=text.encode(), content_type=TEXT)


def pool_docs(factory, caller) -> list[dict]:
    """The warm pools that serve the caller (all, with their waiting instances, for an
    administrator)."""
    pools = []
    for spec in factory.pools.values():
        if not (caller.admin or spec.serves(caller)):
            continue
        waiting = factory.waiting_in_pool(spec)
        doc = {"name": spec.name, "image": spec.image, "idle": spec.idle,
               "vcpus": spec.vcpus, "memoryMiB": spec.memory_mib, "vos": list(spec.vos),
               "waiting": len(waiting),
               "ready": sum(t.state.name == "READY" for t in waiting)}
        if caller.admin:
            doc["instances"] = {t.instance_id: t.state.name for t in waiting}
        pools.append(doc)
    return pools


async def list_pools(call: Call) -> Response:
    """The warm pools that serve the caller (all, with their waiting instances, for an
    administrator)."""
    pools = pool_docs(call.app.factory, call.caller)
    return Response(json={"pools": pools, "_links": {"self": link(call.url("pools"))}})


async def get_instance(call: Call, instance_id: str) -> Response:
    target = call.app.factory.instance(instance_id, call.caller)
    return Response(json=_instance_doc(call, target))


def _summary(call: Call, record, verdict) -> dict:
    meta = record.metadata.to_dict()
    semantic = meta.get("semantic") or {}
    return {
        "id": record.id, "name": record.name, "version": record.version, "ref": record.ref,
        "status": record.status, "owner": record.owner, "group": record.group,
        "title": meta.get("general", {}).get("title"),
        "os": semantic.get("os"), "architecture": meta.get("origin", {}).get("architecture"),
        "applications": [f"{a['name']}---v{a.get('version', '0')}"
                         for a in (meta.get("idb") or {}).get("applications", [])],
        "endorsements": [{k: v for k, v in e.to_dict().items()
                          if k not in ("statement", "signature", "certificate")}
                         for e in record.endorsements],
        "trust": verdict.to_dict() | {"required": call.app.factory.trust.require},
        "_links": {"self": link(call.url("images", record.id))},
    }


def _judged(policy, records) -> list:
    """(record, the policy's verdict now) per record; blocking (signatures are verified)."""
    return [(r, policy.assess(r.endorsements, r.identity)) for r in records]


async def list_images(call: Call) -> Response:
    caller = call.caller
    repository = call.app.repository
    records = await threads.deferToThread(repository.list, caller)
    offset = int_param(call.args, "offset", 0)
    num = int_param(call.args, "num", 200, 1, call.app.limits.max_page)
    page = await threads.deferToThread(_judged, call.app.factory.trust,
                                       records[offset: offset + num])
    return Response(json={"images": [_summary(call, r, v) for r, v in page],
                          "_links": paging_links(call, "images", offset, num, len(records))})


async def get_image(call: Call, ref: str) -> Response:
    caller = call.caller
    repository = call.app.repository
    try:
        record = await threads.deferToThread(repository.get, ref, caller)
    except ImageNotFound:
        raise not_found(f"no image {ref!r} is visible to you") from None
    except RepositoryError as err:
        raise bad_request(str(err)) from None
    [(record, verdict)] = await threads.deferToThread(
        _judged, call.app.factory.trust, [record])
    return Response(json={**_summary(call, record, verdict), "metadata": record.to_dict()})


async def match_images(call: Call) -> Response:
    caller = call.caller
    doc = call.json("match request")
    if set(doc) == {"requirements"}:
        requirements = Requirements.from_dict(doc["requirements"])  # BadRequest: 400
        sources = REQUIREMENTS_PATHS
    else:
        try:
            job = parse_job(doc)
        except JobDescriptionError as err:
            raise bad_request(f"invalid job description: {err}") from None
        requirements, sources = job.requirements, requirement_sources(job)
    factory = call.app.factory
    factory.admission.site.check(requirements, sources)  # beyond the site's limits: 400

    def match():
        result = factory.repository.match(requirements, caller, policy=factory.trust)
        return result.to_dict() | {"summary": result.summary()}

    try:
        answer = await threads.deferToThread(match)
    except RepositoryError as err:
        raise bad_request(str(err)) from None
    return Response(json=answer)


#: Where a size of the ``{"requirements": ...}`` form of images/match is given.
REQUIREMENTS_PATHS = {name: f"requirements.{name}"
                      for name in ("cpus", "memory_mib", "runtime_s", "disk_gib")}


def install(app: RestApp) -> None:
    app.add("GET", "instances", list_instances)
    app.add("GET", "instances/{instance_id}", get_instance)
    app.add("GET", "instances/{instance_id}/log", instance_log)
    app.add("DELETE", "instances/{instance_id}", delete_instance)
    app.add("GET", "pools", list_pools)
    app.add("GET", "images", list_images)
    app.add("POST", "images/match", match_images)
    app.add("GET", "images/{ref}", get_image)
