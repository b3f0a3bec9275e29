"""The dashboard's pages: login, jobs, a job, its files, the catalogue, an image, instances.

Each handler takes a :class:`~tsf.dashboard.site.View` and returns a
:class:`~tsf.dashboard.site.Page` (or a redirect).  They ask the factory and the repository
exactly what the REST handlers ask (``list_jobs``, ``job``, ``abort``, ``restart``,
``delete``, ``submit``, ``list_instances``, the repository's ``list``/``get``/``match``/
``lineage`` and the trust policy's verdict) and reuse the REST room's own helpers where a
rule lives there (the job's file store, the download, the image summary).
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
import time
from typing import Any

from twisted.internet import threads

from base.reasons import Reason
from image_repo.errors import ImageNotFound, RepositoryError
from image_repo.requirements import Requirements
from target_system.jobdesc import JobDescriptionError, parse_job
from tsf.dashboard.sessions import LOGIN_COOKIE
from tsf.dashboard.site import Page, View, redirect
from tsf.dashboard.timeline import timeline
from tsf.factory import NotFound
from tsf.rest import gridvm, storages
from tsf.rest.app import RestApp
from tsf.rest.http import Response, RestError, bad_request, not_found

#: Rows of one listing page (jobs, images, instances).
PAGE_ROWS = 200
#: Characters of one form field the dashboard reads.
MAX_FIELD = 4096


def public(handler):
    """Mark a handler that needs no session (and no CSRF token: the login form has its own)."""
    handler.public = True
    return handler


def _offset(view: View) -> int:
    text = view.form("offset", "0")
    if not text.isdigit() or len(text) > 9:
        raise bad_request(f"offset must be a whole number, got {text[:40]!r}")
    return int(text)


def _field(view: View, name: str) -> str:
    value = view.form(name)
    if len(value) > MAX_FIELD:
        raise bad_request(f"{name}: at most {MAX_FIELD} characters")
    return value


# -- login ----------------------------------------------------------------------------------
@public
async def login_form(view: View, message: str = "", status: int = 200) -> Page:
    token = secrets.token_urlsafe(24)
    view.dashboard.set_cookie(view.request, LOGIN_COOKIE, token, max_age=3600)
    target = view.form("next")
    return Page("login.html.j2", {"login_csrf": token, "message": message,
                                  "next": target if target.startswith(view.dashboard.prefix)
                                  else ""}, status)


@public
async def login(view: View) -> Response | Page:
    """Check the name and password with the REST site's authenticator (same users, same
    failed-login backoff), then start a session."""
    expected = view.request.getCookie(LOGIN_COOKIE.encode())
    given = view.form("csrf").encode()
    if not expected or not secrets.compare_digest(expected, given):
        raise RestError(403, "the login form's CSRF token is missing or wrong: reload the "
                             "login page", Reason.NOT_AUTHORIZED)
    name, password = _field(view, "user"), _field(view, "password")
    header = b"Basic " + base64.b64encode(f"{name}:{password}".encode())
    address = view.request.getClientAddress()
    try:
        principal = await view.app.authenticator.authenticate(
            header, getattr(address, "host", None))
    except RestError as err:
        return await login_form(view, err.message, err.status)
    session = view.dashboard.sessions.create(principal.user.name)
    view.dashboard.set_cookie(view.request, "gridvm_session", session.session_id)
    view.dashboard.set_cookie(view.request, LOGIN_COOKIE, "", max_age=0)
    target = view.form("next")
    return redirect(target if target.startswith(view.dashboard.prefix + "/")
                    else view.url("jobs"))


async def logout(view: View) -> Response:
    view.dashboard.sessions.end(view.session.session_id if view.session else None)
    view.dashboard.set_cookie(view.request, "gridvm_session", "", max_age=0)
    return redirect(view.url("login"))


# -- jobs -----------------------------------------------------------------------------------
def job_row(job) -> dict[str, Any]:
    return {"id": job.job_id, "name": job.description.name, "owner": job.owner,
            "state": job.state.name, "exit_code": job.exit_code, "image": job.image,
            "instance": job.instance_id, "reason": job.lifecycle.reason,
            "message": job.lifecycle.message, "submitted": job.submitted}


async def jobs_page(view: View, message: str = "", status: int = 200) -> Page:
    jobs = view.factory.list_jobs(view.caller)
    jobs.sort(key=lambda j: (-j.submitted, j.job_id))
    offset = _offset(view)
    return Page("jobs.html.j2", {
        "jobs": [job_row(j) for j in jobs[offset: offset + PAGE_ROWS]], "total": len(jobs),
        "offset": offset, "rows": PAGE_ROWS, "admin": view.caller.admin, "message": message,
        "form": {k: view.form(k) for k in ("executable", "arguments", "os", "os_version",
                                            "cpus", "memory", "runtime", "name")}}, status)


def simple_job(view: View) -> dict[str, Any]:
    """A UNICORE job description from the submit form (parse_job checks it)."""
    executable = _field(view, "executable")
    if not executable:
        raise bad_request("executable: say what to run")
    try:
        arguments = shlex.split(_field(view, "arguments"))
    except ValueError as err:
        raise bad_request(f"arguments: {err}") from None
    doc: dict[str, Any] = {"Executable": executable, "Arguments": arguments}
    if _field(view, "name"):
        doc["Name"] = _field(view, "name")
    resources = {key: _field(view, name) for name, key in (
        ("os", "OperatingSystem"), ("os_version", "OperatingSystemVersion"),
        ("cpus", "CPUs"), ("memory", "Memory"), ("runtime", "Runtime"))}
    resources = {k: v for k, v in resources.items() if v}
    if "CPUs" in resources:
        if not resources["CPUs"].isdigit() or len(resources["CPUs"]) > 6:
            raise bad_request(f"CPUs must be a whole number, got {resources['CPUs']!r}")
        resources["CPUs"] = int(resources["CPUs"])
    if "Memory" in resources and resources["Memory"].isdigit():
        resources["Memory"] = f"{resources['Memory']}M"
    if resources:
        doc["Resources"] = resources
    return doc


async def submit_job(view: View) -> Response | Page:
    caller = view.caller
    try:
        desc = parse_job(simple_job(view))
    except JobDescriptionError as err:
        return await jobs_page(view, f"invalid job: {err}", 400)
    except RestError as err:
        return await jobs_page(view, err.message, err.status)
    site = view.app.sites.default_for(caller)
    job = view.factory.submit(desc, caller, site_id=site.site_id)
    return redirect(view.url("jobs", job.job_id))


def _job(view: View, job_id: str):
    try:
        return view.factory.job(job_id, view.caller)
    except NotFound:
        raise not_found(f"no job {job_id}") from None


async def job_page(view: View, job_id: str) -> Page:
    job = _job(view, job_id)
    files, files_error = [], ""
    try:
        store = storages._files(view.rest_call(), job).store()
        files = await storages._guard(store.listdir(""))
    except RestError as err:
        files_error = err.message
    except Exception as err:  # a guest that went away while listing: the page still renders
        files_error = f"the files cannot be listed now: {err}"
    return Page("job.html.j2", {
        "job": job_row(job), "log": list(job.log), "files": files, "files_error": files_error,
        "timeline": timeline(job.lifecycle.history, time.time()),
        "phases": job.lifecycle.phase_seconds(), "terminal": job.state.terminal,
        "rejections": list(job.rejections)})


async def job_file(view: View, job_id: str, path: list[str]) -> Response:
    """Download one file of the job's working directory (as the REST storage does)."""
    job = _job(view, job_id)
    rel = storages._rel(path)
    store = storages._files(view.rest_call(), job).store()
    response = await storages._guard(storages._download(view.rest_call(), store, rel))
    name = rel.rsplit("/", 1)[-1].replace('"', "")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def job_action(view: View, job_id: str, action: str) -> Response:
    job = _job(view, job_id)
    factory, caller = view.factory, view.caller
    if action == "abort":
        factory.abort(job.job_id, caller)
    elif action == "restart":
        if not job.state.terminal:
            raise RestError(409, f"job {job_id} is {job.state.name}: only a finished job can "
                                 "be restarted (abort it first)", Reason.BAD_REQUEST)
        factory.restart(job.job_id, caller)
    elif action == "delete":
        await factory.delete(job.job_id, caller)
        return redirect(view.url("jobs"))
    else:
        raise not_found(f"no action {action!r}; actions: abort, restart, delete")
    return redirect(view.url("jobs", job.job_id))


# -- catalogue ------------------------------------------------------------------------------
SEARCH_FIELDS = ("os", "version", "application", "cpus", "memory", "vo")


def search_requirements(view: View) -> dict[str, Any] | None:
    """image_repo requirements from the search form; None when the form is empty."""
    form = {k: _field(view, k) for k in SEARCH_FIELDS}
    if not any(form.values()):
        return None
    doc: dict[str, Any] = {}
    if form["os"] or form["version"]:
        doc["os"] = {k: v for k, v in (("distro", form["os"]), ("version", form["version"]))
                     if v}
    if form["application"]:
        name, _, version = form["application"].partition(" ")
        doc["applications"] = [{"name": name, **({"version": version.strip()}
                                                 if version.strip() else {})}]
    for key, name in (("cpus", "cpus"), ("memory_mib", "memory")):
        if form[name]:
            if not form[name].isdigit() or len(form[name]) > 9:
                raise bad_request(f"{name} must be a whole number, got {form[name]!r}")
            doc[key] = int(form[name])
    if form["vo"]:
        doc["vo"] = form["vo"]
    return doc


async def catalogue(view: View) -> Page:
    caller, factory = view.caller, view.factory
    values: dict[str, Any] = {"form": {k: view.form(k) for k in SEARCH_FIELDS},
                              "candidates": [], "rejected": [], "images": [], "error": "",
                              "candidates_total": 0, "rejected_total": 0,
                              "searched": False, "total": 0, "offset": 0, "rows": PAGE_ROWS}
    try:
        requirements = search_requirements(view)
        if requirements is not None:
            values["searched"] = True
            result = await threads.deferToThread(
                factory.repository.match, Requirements.from_dict(requirements), caller,
                policy=factory.trust)
            rejected = await threads.deferToThread(lambda: result.rejected)
            values.update(rejected=rejected[:PAGE_ROWS], rejected_total=len(rejected),
                          candidates=result.candidates[:PAGE_ROWS],
                          candidates_total=len(result.candidates))
        else:
            # every visible image, from the matcher's index (no metadata parsed per image)
            offset = _offset(view)
            result = await threads.deferToThread(factory.repository.match, Requirements(),
                                                 caller)
            images = sorted(result.candidates, key=lambda c: (c.name, -c.version))
            values.update(total=len(images), offset=offset,
                          images=images[offset: offset + PAGE_ROWS])
    except (RestError, RepositoryError) as err:
        values["error"] = getattr(err, "message", None) or str(err)
        return Page("catalogue.html.j2", values, 400)
    return Page("catalogue.html.j2", values)


def _rows(doc: Any, path: str = "") -> list[tuple[str, str]]:
    """A metadata section as (dotted path, value) rows; lists of scalars on one row."""
    if isinstance(doc, dict):
        rows = []
        for key, value in doc.items():
            rows.extend(_rows(value, f"{path}.{key}" if path else str(key)))
        return rows
    if isinstance(doc, list) and any(isinstance(v, dict | list) for v in doc):
        rows = []
        for i, value in enumerate(doc):
            rows.extend(_rows(value, f"{path}[{i}]"))
        return rows
    if isinstance(doc, list):
        return [(path, ", ".join(str(v) for v in doc))]
    return [(path, "" if doc is None else doc if isinstance(doc, str) else json.dumps(doc))]


async def image_page(view: View, ref: str) -> Page:
    caller, factory = view.caller, view.factory
    try:
        record = await threads.deferToThread(factory.repository.get, ref, caller)
        lineage = await threads.deferToThread(factory.repository.lineage, record.id, caller)
    except ImageNotFound:
        raise not_found(f"no image {ref!r} is visible to you") from None
    except RepositoryError as err:
        raise bad_request(str(err)) from None
    [(record, verdict)] = await threads.deferToThread(gridvm._judged, factory.trust, [record])
    doc = record.to_dict()
    return Page("image.html.j2", {
        "image": record, "summary": gridvm._summary(view.rest_call(), record, verdict),
        "verdict": verdict, "trust_required": factory.trust.require,
        "sections": [(name, _rows(doc.get(name) or {}))
                     for name in ("general", "origin", "semantic")],
        "applications": (doc.get("idb") or {}).get("applications", []),
        "endorsements": record.endorsements, "lineage": lineage})


# -- instances ------------------------------------------------------------------------------
async def instances_page(view: View) -> Page:
    targets = view.factory.list_instances(view.caller)
    targets.sort(key=lambda t: (-t.lifecycle.entered.get("REQUESTED", 0), t.instance_id))
    now = time.time()
    rows = [{"doc": t.describe(), "timeline": timeline(t.lifecycle.history, now)}
            for t in targets[:PAGE_ROWS]]
    quotas = view.factory.quotas
    capacity = {"mine": sum(not t.state.terminal for t in targets
                            if t.owner == view.caller.user),
                "per_user": quotas.per_user, "total": quotas.total}
    if view.caller.admin:  # the site's use is the operators' business
        capacity["site"] = sum(not t.state.terminal for t in targets)
    return Page("instances.html.j2", {"instances": rows, "total": len(targets),
                                      "admin": view.caller.admin, "capacity": capacity,
                                      "pools": gridvm.pool_docs(view.factory, view.caller)})


async def instance_log(view: View, instance_id: str) -> Page:
    try:
        text = await threads.deferToThread(gridvm.console_of, view.factory, instance_id,
                                           view.caller)
    except NotFound:
        raise not_found(f"no instance {instance_id}") from None
    return Page("console.html.j2", {"instance_id": instance_id, "console": text})


def install(router: RestApp) -> None:
    router.add("GET", "login", login_form)
    router.add("POST", "login", login)
    router.add("POST", "logout", logout)
    router.add("GET", "jobs", jobs_page)
    router.add("POST", "jobs", submit_job)
    router.add("GET", "jobs/{job_id}", job_page)
    router.add("GET", "jobs/{job_id}/files/{path*}", job_file)
    router.add("POST", "jobs/{job_id}/actions/{action}", job_action)
    router.add("GET", "images", catalogue)
    router.add("GET", "images/{ref}", image_page)
    router.add("GET", "instances", instances_page)
    router.add("GET", "instances/{instance_id}/log", instance_log)
