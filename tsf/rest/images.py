"""Creators' resources: registering images, new versions, status, IDB applications and
endorsements (the reading side is ``gridvm.py``'s ``GET images``).

``POST images`` (a metadata document) registers: 201 with the image when the store holds
every file already, else 201 with a *pending registration* (``Location …/images/uploads/
{id}``) listing the files it waits for; ``PUT images/uploads/{id}/files/{name}`` sends one
(its sha512 and size checked; 400 ``IMAGE_CHECKSUM_MISMATCH`` naming the file, the
registration waits for another try); the last one makes the image (201, ``Location`` the
image).  ``GET``/``DELETE images/uploads/{id}``: state, cancel.  An identical document sent
again answers 200 with what it made (or the pending registration).  ``?dryRun=true`` on
``POST images`` and ``PATCH images/{ref}`` answers with the validated document (and the
predecessor's) and changes nothing.

``PATCH images/{ref}`` (``application/merge-patch+json``): a new version.
``POST images/{ref}/applications`` / ``DELETE images/{ref}/applications/{name}[/{version}]``:
a new version with one IDB application more or less.  ``POST images/{ref}/actions/deprecate``
(or ``activate``), ``DELETE images/{ref}``.  ``POST images/{ref}/endorsements``,
``DELETE images/{ref}/endorsements/{fingerprint}``.  ``GET images/{ref}/bundle``: the image
and its bases as a bundle (image_repo.bundle); ``POST images/bundles``: import one.

Only users with the ``creator`` or ``admin`` role may, and only within the image's
permissions (image_repo.access); the repository and ``image_repo.uploads`` decide, these
handlers translate.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import threads

from base.identity import Caller
from base.reasons import Reason
from image_repo import bundle
from image_repo.errors import (
    ImageInUse,
    ImageNotFound,
    ImageUnavailable,
    NotAuthorized,
    QuotaExceeded,
    RepositoryError,
    UploadNotFound,
)
from image_repo.repository import ImageRecord
from image_repo.uploads import Outcome, PendingRegistration
from tsf.rest.app import Call, RestApp
from tsf.rest.http import JSON, Response, RestError, Stream, iso, link, str_param

MERGE_PATCH = "application/merge-patch+json"
TAR = "application/x-tar"
WRITER_ROLES = ("creator", "admin")


def _writer(call: Call) -> Caller:
    """The caller, when their role lets them register and change images."""
    caller = call.caller
    if call.principal.role not in WRITER_ROLES:
        raise RestError(403, f"{caller.user} may not register or change images: that needs "
                             "the creator role (users.json) or admin", Reason.NOT_AUTHORIZED)
    return caller


def _http_error(err: RepositoryError) -> RestError:
    if isinstance(err, ImageNotFound | UploadNotFound):
        status = 404
    elif isinstance(err, NotAuthorized):
        status = 403
    elif isinstance(err, QuotaExceeded):
        status = 413
    elif isinstance(err, ImageUnavailable | ImageInUse):
        status = 409
    else:
        status = 400
    return RestError(status, str(err), err.reason)


async def _blocking(function: Callable[..., Any], *args: Any) -> Any:
    """Run a repository call in a thread; its errors become HTTP errors."""
    try:
        return await threads.deferToThread(function, *args)
    except RepositoryError as err:
        raise _http_error(err) from None


def _dry_run(call: Call) -> bool:
    return (str_param(call.args, "dryRun") or "").lower() in ("true", "1", "yes")


def _image_doc(call: Call, record: ImageRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "version": record.version,
            "ref": record.ref, "status": record.status, "owner": record.owner,
            "metadata": record.to_dict(),
            "_links": {"self": link(call.url("images", record.id))}}


def _pending_doc(call: Call, pending: PendingRegistration) -> dict[str, Any]:
    url = call.url("images", "uploads", pending.id)
    files = {name: {"size": ref.size, "sha512": ref.sha512, "path": f"origin.content[{i}]",
                    "received": name in pending.received,
                    "href": call.url("images", "uploads", pending.id, "files", name)}
             for name, (i, ref) in pending.expected.items()}
    return {"id": pending.id, "status": "WAITING_FOR_FILES", "name": pending.name,
            "owner": pending.caller.user, "expires": iso(pending.expires), "files": files,
            "missing": pending.missing, "metadata": pending.document,
            "_links": {"self": link(url)}}


def _outcome(call: Call, outcome: Outcome) -> Response:
    status = 200 if outcome.existing else 201
    if outcome.image is not None:
        url = call.url("images", outcome.image.id)
        return Response(status, json=_image_doc(call, outcome.image), headers={"Location": url})
    assert outcome.pending is not None
    url = call.url("images", "uploads", outcome.pending.id)
    return Response(status, json=_pending_doc(call, outcome.pending), headers={"Location": url})


def _preview(call: Call, document: dict[str, Any], caller: Caller) -> dict[str, Any]:
    repository = call.app.repository
    meta = repository.preview(document, caller)
    return {"dryRun": True, "metadata": meta.to_dict(),
            "files": {ref.file: {"size": ref.size, "sha512": ref.sha512,
                                 "inStore": repository.store.has(ref.sha512)}
                      for ref in meta.origin.content}}


def _predecessor(record: ImageRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {"predecessor": {"id": record.id, "ref": record.ref,
                            "metadata": record.metadata.to_dict()}}


def _newest(call: Call, document: dict[str, Any], caller: Caller) -> ImageRecord | None:
    """The newest visible, not deleted image of the document's name (what it follows)."""
    name = (document.get("general") or {}).get("name")
    if not isinstance(name, str):
        return None
    records = call.app.repository.list(caller, name=name)
    return records[-1] if records else None


async def register_image(call: Call) -> Response:
    caller = _writer(call)
    document = call.json("metadata document")
    if _dry_run(call):
        preview = await _blocking(_preview, call, document, caller)
        newest = await _blocking(_newest, call, document, caller)
        return Response(json={**preview, **_predecessor(newest)})
    outcome = await _blocking(call.app.uploads.begin, document, caller)
    return _outcome(call, outcome)


async def new_version(call: Call, ref: str) -> Response:
    caller = _writer(call)
    content_type = (call.header("content-type") or "").split(";")[0].strip().lower()
    if content_type not in (MERGE_PATCH, JSON):
        raise RestError(415, f"a new version is a JSON merge patch: send Content-Type "
                             f"{MERGE_PATCH}, not {content_type or 'none'}", Reason.BAD_REQUEST)
    patch = call.json("merge patch")
    repository = call.app.repository
    document = await _blocking(repository.derive, ref, patch, caller)
    if _dry_run(call):
        source = await _blocking(repository.get, ref, caller)
        preview = await _blocking(_preview, call, document, caller)
        return Response(json={**preview, **_predecessor(source)})
    outcome = await _blocking(call.app.uploads.begin, document, caller)
    return _outcome(call, outcome)


async def get_upload(call: Call, upload_id: str) -> Response:
    caller = call.caller
    pending = await _blocking(call.app.uploads.get, upload_id, caller)
    return Response(json=_pending_doc(call, pending))


async def cancel_upload(call: Call, upload_id: str) -> Response:
    caller = call.caller
    await _blocking(call.app.uploads.cancel, upload_id, caller)
    return Response.no_content()


async def put_upload_file(call: Call, upload_id: str, name: str) -> Response:
    caller = _writer(call)
    limit = call.app.limits.max_image_file
    request = call.request
    if getattr(request, "too_large", False) or getattr(request, "received", 0) > limit:
        raise RestError(413, f"{name} exceeds the limit of {limit} bytes for one image file "
                             "(limits.image_file_mib)", Reason.BAD_REQUEST)
    content = request.content or io.BytesIO()
    content.seek(0, io.SEEK_END)
    length = content.tell()
    content.seek(0)
    outcome = await _blocking(call.app.uploads.receive, upload_id, name, content,
                              length, caller)
    if outcome.image is not None:
        return _outcome(call, outcome)
    assert outcome.pending is not None
    return Response(json=_pending_doc(call, outcome.pending))


async def image_action(call: Call, ref: str, action: str) -> Response:
    caller = _writer(call)
    statuses = {"deprecate": "deprecated", "activate": "active"}
    if action not in statuses:
        raise RestError(404, f"no action {action!r}; actions: {', '.join(statuses)}",
                        Reason.NOT_FOUND)
    call.json(f"{action} parameters")
    repository = call.app.repository
    record = await _blocking(repository.set_status, ref, statuses[action], caller)
    return Response(json=_image_doc(call, record))


async def delete_image(call: Call, ref: str) -> Response:
    caller = _writer(call)
    record = await _blocking(call.app.repository.delete, ref, caller)
    return Response(json=_image_doc(call, record))


async def add_application(call: Call, ref: str) -> Response:
    caller = _writer(call)
    application = call.json("application")
    repository = call.app.repository
    record = await _blocking(repository.add_application, ref, application, caller)
    return Response(201, json=_image_doc(call, record),
                    headers={"Location": call.url("images", record.id)})


async def remove_application(call: Call, ref: str, name: str,
                             version: str | None = None) -> Response:
    caller = _writer(call)
    repository = call.app.repository
    record = await _blocking(repository.remove_application, ref, name, version, caller)
    return Response(json=_image_doc(call, record),
                    headers={"Location": call.url("images", record.id)})


async def attach_endorsement(call: Call, ref: str) -> Response:
    caller = _writer(call)
    endorsement = call.json("endorsement")
    repository = call.app.repository
    stored = await _blocking(repository.endorse, ref, endorsement, caller)
    record = await _blocking(repository.get, ref, caller)
    doc = {k: v for k, v in stored.to_dict().items()
           if k not in ("statement", "signature", "certificate")}
    return Response(201, json=doc, headers={
        "Location": call.url("images", record.id, "endorsements", stored.fingerprint)})


async def withdraw_endorsement(call: Call, ref: str, fingerprint: str) -> Response:
    caller = _writer(call)
    repository = call.app.repository
    await _blocking(repository.withdraw, ref, fingerprint, caller)
    return Response.no_content()


async def export_bundle(call: Call, ref: str) -> Response:
    """The image and its visible bases as a bundle (image_repo.bundle), streamed from a
    file that is unlinked at once (nothing is left behind if the client goes away)."""
    caller = call.caller
    repository = call.app.repository

    def export() -> tuple[BinaryIO, int, str]:
        directory = repository.store.open_staging()
        try:
            path = bundle.export_bundle(repository, ref, caller, directory / "bundle.tar")
            handle = path.open("rb")
            return handle, path.stat().st_size, repository.get(ref, caller).ref
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    handle, size, image = await _blocking(export)

    async def read(offset: int, count: int) -> bytes:
        def pread() -> bytes:
            data = os.pread(handle.fileno(), count, offset)
            if offset + len(data) >= size:
                handle.close()
            return data

        return await threads.deferToThread(pread)

    name = image.replace(":", "-") + ".gridvm-bundle.tar"
    return Response(stream=Stream(read, 0, size), headers={
        "Content-Type": TAR, "Content-Disposition": f'attachment; filename="{name}"'})


async def import_bundle(call: Call) -> Response:
    """Register the images of an uploaded bundle (creators and administrators; the bundle's
    bytes count against the caller's quota)."""
    caller = _writer(call)
    limit = call.app.limits.max_image_file
    request = call.request
    if getattr(request, "too_large", False) or getattr(request, "received", 0) > limit:
        raise RestError(413, f"the bundle exceeds the limit of {limit} bytes "
                             "(limits.image_file_mib)", Reason.BAD_REQUEST)
    repository = call.app.repository
    uploads = call.app.uploads
    content = request.content or io.BytesIO()

    def register() -> bundle.ImportResult:
        content.seek(0, io.SEEK_END)
        uploads.check_quota(caller, content.tell())
        content.seek(0)
        directory = repository.store.open_staging()
        try:
            path = directory / "upload.tar"
            with path.open("wb") as target:
                shutil.copyfileobj(content, target, 1 << 20)
            return bundle.import_bundle(repository, path, caller, max_bytes=limit)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    result = await _blocking(register)
    return Response(201 if result.imported else 200, json={
        "imported": [_image_doc(call, r) for r in result.imported],
        "skipped": result.skipped, "endorsements": result.endorsements,
        "leftOut": result.left_out})


def install(app: RestApp) -> None:
    app.add("POST", "images", register_image)
    app.add("POST", "images/bundles", import_bundle)
    app.add("GET", "images/{ref}/bundle", export_bundle)
    app.add("GET", "images/uploads/{upload_id}", get_upload)
    app.add("DELETE", "images/uploads/{upload_id}", cancel_upload)
    app.add("PUT", "images/uploads/{upload_id}/files/{name}", put_upload_file)
    app.add("PATCH", "images/{ref}", new_version)
    app.add("DELETE", "images/{ref}", delete_image)
    app.add("POST", "images/{ref}/actions/{action}", image_action)
    app.add("POST", "images/{ref}/applications", add_application)
    app.add("DELETE", "images/{ref}/applications/{name}", remove_application)
    app.add("DELETE", "images/{ref}/applications/{name}/{version}", remove_application)
    app.add("POST", "images/{ref}/endorsements", attach_endorsement)
    app.add("DELETE", "images/{ref}/endorsements/{fingerprint}", withdraw_endorsement)
