"""The image lists this site publishes (HEPiX format, S/MIME-signed by the site's list key).

``GET BASE/imagelists/public``: the site's public images (readable by "others", no VO), for
anyone.  ``GET BASE/imagelists/selection?image=REF&image=REF…``: a list of chosen images
the caller may read.  ``GET BASE/imagelists/files/{id}/{file}``: a content file the lists
point to (``hv:uri``), for whoever may read the image.
"""

from __future__ import annotations

import datetime

from twisted.internet import threads

from base.reasons import Reason
from image_repo import imagelist
from image_repo.errors import ImageNotFound, RepositoryError
from image_repo.oaipmh import ANONYMOUS
from tsf.rest.app import Call, RestApp
from tsf.rest.http import OCTET, Response, RestError, Stream, bad_request, not_found

SMIME = "text/plain; charset=utf-8"  #: a MIME message (multipart/signed) in clear text
MAX_SELECTION = 1000


def _caller(call: Call):
    return ANONYMOUS if call.principal.anonymous else call.caller


def _signed(call: Call, records, identifier: str, title: str, kind: str) -> bytes:
    signer = call.app.list_signer
    exchange = call.app.exchange
    days = exchange.list_lifetime_days if exchange else 28.0
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    built = imagelist.build(
        records, imagelist.Endorser(signer.endorser_dn, signer.ca_dn,
                                    f"gridvm site {call.app.site_name}"),
        identifier=identifier, created=now, expires=now + datetime.timedelta(days=days),
        url_of=lambda record, name: call.url("imagelists", "files", record.id, name),
        title=title, uri=call.url("imagelists", kind))
    return signer.sign(built.to_json())


async def public_list(call: Call) -> Response:
    repository = call.app.repository

    def build() -> bytes:
        records = repository.list(ANONYMOUS)
        return _signed(call, records, imagelist.image_identifier(
            f"{call.app.site_name}/public"), f"public images of {call.app.site_name}", "public")

    return Response(data=await threads.deferToThread(build), content_type=SMIME)


async def selection_list(call: Call) -> Response:
    caller = _caller(call)
    refs = [v.decode("utf-8", "replace") for v in call.args.get(b"image", [])]
    if not refs:
        raise bad_request("image: name at least one image (image=REF&image=REF…)")
    if len(refs) > MAX_SELECTION:
        raise bad_request(f"image: at most {MAX_SELECTION} images, got {len(refs)}")
    repository = call.app.repository

    def build() -> bytes:
        records = [repository.get(ref, caller) for ref in refs]
        return _signed(call, records, imagelist.image_identifier(
            f"{call.app.site_name}/selection/{','.join(sorted(r.id for r in records))}"),
            f"images of {call.app.site_name} chosen by {caller.user}", "selection")

    try:
        data = await threads.deferToThread(build)
    except ImageNotFound as err:
        raise not_found(err.message) from None
    except RepositoryError as err:
        raise RestError(400, str(err), err.reason) from None
    return Response(data=data, content_type=SMIME)


async def content_file(call: Call, image_id: str, name: str) -> Response:
    repository = call.app.repository
    try:
        paths = await threads.deferToThread(repository.content_paths, image_id, _caller(call))
    except ImageNotFound as err:
        raise not_found(err.message) from None
    except RepositoryError as err:
        raise RestError(409 if err.reason == Reason.IMAGE_UNAVAILABLE else 400, str(err),
                        err.reason) from None
    path = paths.get(name)
    if path is None:
        raise not_found(f"image {image_id} has no file {name!r}")
    size = path.stat().st_size

    async def read(offset: int, length: int) -> bytes:
        def chunk() -> bytes:
            with path.open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)

        return await threads.deferToThread(chunk)

    return Response(stream=Stream(read, 0, size), content_type=OCTET,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def install(app: RestApp) -> None:
    app.add("GET", "imagelists/public", public_list)
    app.add("GET", "imagelists/selection", selection_list)
    app.add("GET", "imagelists/files/{image_id}/{name}", content_file)

