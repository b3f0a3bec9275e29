"""Storages and files: each job's working directory as the storage ``<jobid>-uspace``.

``GET files[/path]`` lists or stats (JSON) or downloads (octet-stream, with ``Range``),
chosen by ``Accept``; ``PUT`` uploads (Content-Length or chunked; parents are created);
``POST files/dir`` makes a directory; ``DELETE`` removes; ``actions/copy|rename`` move files
inside the storage.  Where the files are (inputs, guest, site storage) is
``target_system.jobfiles``' business; so is keeping paths inside the job directory.
"""

from __future__ import annotations

import re

from base.reasons import Reason
from target_system.jobfiles import FileMissing, JobFiles, PathError, WrongKind, confine
from tsf.errors import NotFound
from tsf.imports import USPACE_SUFFIX
from tsf.rest.app import Call, RestApp
from tsf.rest.http import (
    JSON,
    STREAM_CHUNK,
    Response,
    RestError,
    Stream,
    bad_request,
    check_keys,
    int_param,
    link,
    not_found,
    str_param,
)
from tsf.rest.jobs import find_job
from tsf.rest.sites import paging_links

SUFFIX = USPACE_SUFFIX
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
#: Where a byte position of 19 digits or more lies: beyond any file.
_BEYOND = 1 << 63


def _job_of(call: Call, storage_id: str):
    if not storage_id.endswith(SUFFIX):
        raise not_found(f"no storage {storage_id}")
    try:
        return find_job(call, storage_id[: -len(SUFFIX)])
    except (NotFound, RestError):
        raise not_found(f"no storage {storage_id}") from None


def _files(call: Call, job) -> JobFiles:
    factory = call.app.factory
    return JobFiles(job, lambda instance_id: factory.instances[instance_id])


def _rel(path: list[str] | str, from_url: bool = True) -> str:
    """A path inside the storage; 400 for ``..``, absolute paths (``files//etc``), NUL."""
    text = "/".join(path) if isinstance(path, list) else path
    try:
        if from_url and text.startswith("/"):
            raise PathError(f"absolute paths are not allowed: {text!r}")
        return confine(text)
    except PathError as err:
        raise bad_request(str(err)) from None


async def _guard(coroutine):
    """Map the file errors onto HTTP errors."""
    try:
        return await coroutine
    except PathError as err:
        raise bad_request(str(err)) from None
    except FileMissing as err:
        raise not_found(str(err)) from None
    except WrongKind as err:
        raise bad_request(str(err)) from None


async def list_storages(call: Call) -> Response:
    caller = call.caller
    show_all = (str_param(call.args, "filter") or "").lower() == "all"
    jobs = call.app.factory.list_jobs(caller) if show_all else []
    jobs.sort(key=lambda j: (j.submitted, j.job_id))
    offset = int_param(call.args, "offset", 0)
    num = int_param(call.args, "num", 200, 1, call.app.limits.max_page)
    page = jobs[offset: offset + num]
    return Response(json={
        "storages": [call.url("storages", j.job_id + SUFFIX) for j in page],
        "_links": paging_links(call, "storages", offset, num, len(jobs),
                               "&filter=all" if show_all else "")})


async def get_storage(call: Call, storage_id: str) -> Response:
    job = _job_of(call, storage_id)
    url = call.url("storages", storage_id)
    where = _files(call, job).store().where
    return Response(json={
        "resourceStatus": "READY", "resourceStatusMessage": "N/A",
        "mountPoint": job.workdir or f"/{storage_id}", "protocols": ["BFT"], "umask": "77",
        "description": f"working directory of job {job.job_id}", "metadataSupported": "false",
        "filesystemDescription": f"gridvm job directory (now served from the {where})",
        "freeSpace": -1, "usableSpace": -1, "owner": job.owner, "acl": [], "tags": [],
        "_links": {"self": link(url), "files": link(f"{url}/files", "files"),
                   "action:copy": link(f"{url}/actions/copy"),
                   "action:rename": link(f"{url}/actions/rename"),
                   "job": link(call.url("jobs", job.job_id), "the job")},
    })


def _entry_doc(call: Call, storage_id: str, entry) -> dict:
    doc = entry.describe()
    doc["_links"] = {"self": link(call.url("storages", storage_id, "files", entry.path)
                                  if entry.path else call.url("storages", storage_id, "files"))}
    return doc


async def get_file(call: Call, storage_id: str, path: list[str]) -> Response:
    job = _job_of(call, storage_id)
    return await _guard(_read_where_it_is(call, storage_id, _files(call, job), _rel(path)))


async def _read_where_it_is(call: Call, storage_id: str, files: JobFiles, rel: str
                            ) -> Response:
    """A read of the job's files, tried once more when they moved from the guest to site
    storage while it was under way (the runner removes the guest's copy right after)."""
    store = files.store()
    try:
        return await _read(call, storage_id, store, rel)
    except FileMissing:
        now = files.store()
        if type(now) is type(store):
            raise
        return await _read(call, storage_id, now, rel)


async def _read(call: Call, storage_id: str, store, rel: str) -> Response:
    if call.wants_bytes():
        return await _download(call, store, rel)
    entry = await store.stat(rel)
    doc = _entry_doc(call, storage_id, entry)
    if entry.is_dir:
        entries = await store.listdir(rel)
        offset = int_param(call.args, "offset", 0)
        num = int_param(call.args, "num", 10000, 1, 100000)
        doc["content"] = {("/" + e.path + ("/" if e.is_dir else "")): e.describe()
                          for e in entries[offset: offset + num]}
    return Response(json=doc, headers={"Accept-Ranges": "bytes"})


def _position(digits: str) -> int | None:
    """A byte position of a Range (None when absent); one of 19 digits or more lies beyond
    every file, however many digits it has."""
    if not digits:
        return None
    return int(digits) if len(digits.lstrip("0")) < 19 else _BEYOND


async def _download(call: Call, store, rel: str) -> Response:
    entry = await store.stat(rel)
    if entry.is_dir:
        raise RestError(406, f"{rel or '/'} is a directory: ask for application/json to list "
                             "it", Reason.BAD_REQUEST)
    size = entry.size
    start, end, partial = 0, size - 1, False
    header = call.header("range")
    if header:
        match = _RANGE.match(header.strip())
        if not match or match.groups() == ("", ""):
            raise RestError(416, f"unsupported Range {header!r}: use bytes=a-b, bytes=a- or "
                                 "bytes=-n", Reason.BAD_REQUEST,
                            {"Content-Range": f"bytes */{size}"})
        first, last = (_position(text) for text in match.groups())
        if first is not None:
            start = first
            end = min(last, size - 1) if last is not None else size - 1
        else:
            start = max(0, size - last)
        if start >= size or start > end:
            raise RestError(416, f"Range {header!r} is outside the file ({size} bytes)",
                            Reason.BAD_REQUEST, {"Content-Range": f"bytes */{size}"})
        partial = True
    length = max(0, end - start + 1)
    headers = {"Accept-Ranges": "bytes"}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if length <= STREAM_CHUNK:
        return Response(206 if partial else 200, data=await store.read(rel, start, length),
                        headers=headers)

    async def read(offset: int, count: int) -> bytes:
        return await _guard(store.read(rel, offset, count))

    return Response(206 if partial else 200, stream=Stream(read, start, length),
                    headers=headers)


async def put_file(call: Call, storage_id: str, path: list[str]) -> Response:
    job = _job_of(call, storage_id)
    rel = _rel(path)
    content_type = (call.header("content-type") or "").lower()
    if content_type.startswith(JSON):
        return await _set_properties(call, job, rel)
    if not rel:
        raise bad_request("give a file name: PUT .../files/<name>")
    call.app.factory.check_storage(call.caller)  # a user at their storage limit: 403
    await _guard(_files(call, job).store().write(rel, call.body_file()))
    return Response.no_content()


async def _set_properties(call: Call, job, rel: str) -> Response:
    doc = call.json("file properties")
    check_keys(doc, {"permissions", "group", "metadata"})
    await _guard(_files(call, job).store().stat(rel))
    return Response(json={key: "not supported by this site" for key in doc})


async def make_directory(call: Call, storage_id: str, path: list[str]) -> Response:
    job = _job_of(call, storage_id)
    rel = _rel(path)
    call.json("mkdir parameters")
    if not rel:
        raise bad_request("give a directory name: POST .../files/<dir>")
    await _guard(_files(call, job).store().mkdir(rel))
    return Response.created(call.url("storages", storage_id, "files", rel))


async def delete_file(call: Call, storage_id: str, path: list[str]) -> Response:
    job = _job_of(call, storage_id)
    await _guard(_files(call, job).store().delete(_rel(path)))
    return Response.no_content()


async def storage_action(call: Call, storage_id: str, action: str) -> Response:
    job = _job_of(call, storage_id)
    if action not in ("copy", "rename"):
        raise not_found(f"no action {action!r}; actions: copy, rename")
    doc = call.json(f"{action} parameters")
    check_keys(doc, {"from", "to"})
    for key in ("from", "to"):
        if not isinstance(doc.get(key), str) or not doc[key].strip("/"):
            raise bad_request(f"{key!r} must name a file in the storage")
    source, target = _rel(doc["from"], from_url=False), _rel(doc["to"], from_url=False)
    if source == target:
        raise bad_request("'from' and 'to' are the same file")
    await _guard(_files(call, job).store().move(source, target, copy=action == "copy"))
    return Response.no_content()


def install(app: RestApp) -> None:
    app.add("GET", "storages", list_storages)
    app.add("GET", "storages/{storage_id}", get_storage)
    app.add("GET", "storages/{storage_id}/files/{path*}", get_file)
    app.add("PUT", "storages/{storage_id}/files/{path*}", put_file)
    app.add("POST", "storages/{storage_id}/files/{path*}", make_directory)
    app.add("DELETE", "storages/{storage_id}/files/{path*}", delete_file)
    app.add("POST", "storages/{storage_id}/actions/{action}", storage_action)
