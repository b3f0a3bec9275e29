"""Jobs: submit (201 + Location), list (offset/num/tags), properties (and ``PUT`` of
``terminationTime``), actions, delete."""

from __future__ import annotations

import contextlib
import copy
import time

from base.reasons import Reason
from target_system.jobdesc import JobDescriptionError, parse_job
from tsf.errors import NotFound
from tsf.imports import USPACE_SUFFIX
from tsf.notifications import check_notification
from tsf.rest.app import Call, RestApp
from tsf.rest.http import (
    Response,
    RestError,
    bad_request,
    check_keys,
    int_param,
    iso,
    link,
    not_found,
    parse_time,
    str_param,
)
from tsf.rest.sites import FACTORY_ID, PARTITION, paging_links

ACTIONS = ("start", "abort", "restart")


def uspace_id(job_id: str) -> str:
    return f"{job_id}{USPACE_SUFFIX}"


def find_job(call: Call, job_id: str):
    """The caller's job (NotFound, a 404, if there is none)."""
    return call.app.factory.job(job_id, call.caller)


async def submit(call: Call, site_id: str | None = None) -> Response:
    caller = call.caller
    registry = call.app.sites
    doc = call.json("job description")
    site = registry.get(site_id, caller) if site_id else None
    try:
        desc = parse_job(doc)
    except JobDescriptionError as err:
        raise bad_request(f"invalid job description: {err}") from None
    await call.app.factory.prepare(desc, caller, call.url("storages") + "/")
    check_notification(desc, call.app.factory.transfers)
    site = site or registry.default_for(caller)
    job = call.app.factory.submit(desc, caller, site_id=site.site_id)
    return Response.created(call.url("jobs", job.job_id))


def _tags(call: Call) -> list[str]:
    text = str_param(call.args, "tags")
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


async def list_jobs(call: Call, site_id: str | None = None) -> Response:
    caller = call.caller
    registry = call.app.sites
    jobs = call.app.factory.list_jobs(caller)
    if site_id is not None:
        registry.get(site_id, caller)
        jobs = [j for j in jobs if j.site_id == site_id]
    tags = _tags(call)
    if tags:
        jobs = [j for j in jobs if set(tags) <= set(j.description.tags)]
    jobs.sort(key=lambda j: (j.submitted, j.job_id))
    offset = int_param(call.args, "offset", 0)
    num = int_param(call.args, "num", 200, 1, call.app.limits.max_page)
    page = jobs[offset: offset + num]
    extra = f"&tags={','.join(tags)}" if tags else ""
    name = f"sites/{site_id}/jobs" if site_id else "jobs"
    return Response(json={"jobs": [call.url("jobs", j.job_id) for j in page],
                          "_links": paging_links(call, name, offset, num, len(jobs), extra)})


def job_properties(call: Call, job) -> dict:
    desc = job.description
    url = call.url("jobs", job.job_id)
    registry = call.app.sites
    site_id = job.site_id
    doc = {
        "status": job.state.name, "statusMessage": job.status_message, "log": list(job.log),
        "name": desc.name, "owner": job.owner, "submissionTime": iso(job.submitted),
        "terminationTime": iso(job.termination), "currentTime": iso(time.time()),
        "queue": PARTITION,
        "jobType": desc.job_type, "tags": list(desc.tags), "acl": [],
        "siteName": call.app.site_name, "resourceStatus": "READY",
        "consumedTime": {k: round(v, 3) for k, v in job.lifecycle.phase_seconds().items()},
        "gridvm": {"reason": job.lifecycle.reason, "instance": job.instance_id,
                   "image": job.image, "rejections": list(job.rejections)},
    }
    if job.exit_code is not None:
        doc["exitCode"] = str(job.exit_code)
    links = {
        "self": link(url), "action:start": link(f"{url}/actions/start", "start the job"),
        "action:abort": link(f"{url}/actions/abort", "abort the job"),
        "action:restart": link(f"{url}/actions/restart", "run the job again"),
        "workingDirectory": link(call.url("storages", uspace_id(job.job_id)),
                                 "the job's working directory"),
        "details": link(f"{url}/details"), "submitted": link(f"{url}/submitted"),
    }
    if site_id and site_id in registry.sites:
        links["parentTSS"] = link(call.url("sites", site_id))
    if job.instance_id:
        links["instance"] = link(call.url("instances", job.instance_id), "gridvm: the VM")
    doc["_links"] = links
    return doc


async def get_job(call: Call, job_id: str) -> Response:
    return Response(json=job_properties(call, find_job(call, job_id)))


async def job_details(call: Call, job_id: str) -> Response:
    job = find_job(call, job_id)
    doc = {"bssid": job.bssid, "workdir": job.workdir, **job.describe()}
    if job.instance_id:
        with contextlib.suppress(NotFound):
            doc["instanceDetails"] = call.app.factory.instance(
                job.instance_id, call.caller).describe()
    return Response(json=doc)


async def job_submitted(call: Call, job_id: str) -> Response:
    """The description as submitted, transfer ``Credentials`` masked."""
    doc = copy.deepcopy(find_job(call, job_id).description.raw)
    for key in ("Imports", "Exports"):
        for item in doc.get(key) or []:
            if isinstance(item, dict) and isinstance(item.get("Credentials"), dict):
                item["Credentials"] = dict.fromkeys(item["Credentials"], "***")
    return Response(json=doc)


async def job_action(call: Call, job_id: str, action: str) -> Response:
    job = find_job(call, job_id)
    if action not in ACTIONS:
        raise not_found(f"no action {action!r}; actions: {', '.join(ACTIONS)}")
    call.json("action parameters")  # a JSON object (pyunicore sends {})
    factory = call.app.factory
    if action == "start":
        factory.start(job.job_id, call.caller)
    elif action == "abort":
        factory.abort(job.job_id, call.caller)
    else:
        if not job.state.terminal:
            raise RestError(409, f"job {job_id} is {job.state.name}: only a finished job can "
                                 "be restarted (abort it first)", Reason.BAD_REQUEST)
        factory.restart(job.job_id, call.caller)
    return Response.no_content()


async def delete_job(call: Call, job_id: str) -> Response:
    find_job(call, job_id)
    await call.app.factory.delete(job_id, call.caller)
    return Response.no_content()


async def set_job_properties(call: Call, job_id: str) -> Response:
    """``PUT {job}`` as UNICORE's ``BaseRESTController.setProperties``: the properties a
    client may change (here ``terminationTime``), answered per key with "OK"."""
    job = find_job(call, job_id)
    doc = call.json("job properties")
    check_keys(doc, {"terminationTime"})
    if "terminationTime" in doc:
        when = parse_time(doc["terminationTime"])
        call.app.factory.set_termination(job.job_id, when, call.caller)
    return Response(json={key: "OK" for key in doc})


async def submit_to_site(call: Call, site_id: str) -> Response:
    return await submit(call, site_id)


async def list_site_jobs(call: Call, site_id: str) -> Response:
    return await list_jobs(call, site_id)


def install(app: RestApp) -> None:
    app.add("GET", "jobs", list_jobs)
    app.add("POST", "jobs", submit)
    app.add("GET", "jobs/{job_id}", get_job)
    app.add("DELETE", "jobs/{job_id}", delete_job)
    app.add("PUT", "jobs/{job_id}", set_job_properties)
    app.add("GET", "jobs/{job_id}/details", job_details)
    app.add("GET", "jobs/{job_id}/submitted", job_submitted)
    app.add("POST", "jobs/{job_id}/actions/{action}", job_action)
    app.add("POST", "sites/{site_id}", submit_to_site)
    app.add("GET", "sites/{site_id}/jobs", list_site_jobs)


__all__ = ["FACTORY_ID", "install", "job_properties", "uspace_id"]
