"""Which registered container image a CONTAINER job's IMAGE_URL names.

A container image is registered like any image (content type ``oci``, one content file with
role ``container``: an OCI archive, its sha512 and size checked by the store; permissions,
VOs, endorsements), with the reference it came from in ``origin.source_url``
(``docker://debian:12``).  IMAGE_URL names it by that reference or by its id, name or
name:version; of several versions the newest the caller may see wins.  On a site that
requires endorsements only a trusted one is taken.
"""

from __future__ import annotations

from image_repo.errors import RepositoryError
from image_repo.repository import ImageRecord, ImageRepository
from image_repo.schema import CONTAINER_CONTENT_TYPES
from image_repo.trust import TrustPolicy
from target_system.containers import ContainerToRun
from target_system.jobdesc import JobDescriptionError

#: container content types gridvm runs (an OCI archive; SIF images need apptainer)
RUNNABLE = ("oci",)


def is_container(record: ImageRecord) -> bool:
    return record.metadata.origin.content_type in CONTAINER_CONTENT_TYPES


def _named(repository: ImageRepository, url: str, caller) -> list[ImageRecord]:
    """Visible, undeleted container images ``url`` names, newest first."""
    try:
        record = repository.get(url, caller)
    except (RepositoryError, ValueError):
        record = None
    if record is not None and record.status != "deleted" and is_container(record):
        return [record]
    found = [r for r in repository.list(caller)
             if r.status != "deleted" and is_container(r)
             and r.metadata.origin.source_url == url]
    return sorted(found, key=lambda r: (r.status != "active", -r.created.timestamp(),
                                        -r.version))


def find_container(repository: ImageRepository, url: str, caller,
                   trust: TrustPolicy) -> ContainerToRun | None:
    """Blocking (call in a thread): the container image ``url`` names, or None when it
    names none the caller may use; JobDescriptionError when it is not runnable here."""
    records = _named(repository, url, caller)
    if not records:
        return None
    untrusted = ""
    for record in records:
        if trust.require:
            verdict = repository.assess(record.id, caller, trust)
            if not verdict.trusted:
                untrusted = f"{record.ref} is not trusted: {verdict.message}"
                continue
        return _to_run(repository, record, caller)
    raise JobDescriptionError("Parameters.IMAGE_URL", untrusted)


def _to_run(repository: ImageRepository, record: ImageRecord, caller) -> ContainerToRun:
    origin = record.metadata.origin
    if origin.content_type not in RUNNABLE:
        raise JobDescriptionError("Parameters.IMAGE_URL", f"{record.ref} is a "
                                  f"{origin.content_type} image: this site runs OCI images")
    archives = [ref for ref in origin.content if ref.role == "container"]
    if len(archives) != 1:
        raise JobDescriptionError("Parameters.IMAGE_URL", f"{record.ref} has no single OCI "
                                  f"archive (a content file with role 'container')")
    [archive] = archives
    try:
        path = repository.content_paths(record.id, caller)[archive.file]
    except RepositoryError as err:
        raise JobDescriptionError("Parameters.IMAGE_URL", str(err)) from None
    return ContainerToRun(image_id=record.id, ref=record.ref, source_url=origin.source_url,
                          file=archive.file, sha512=archive.sha512, size=archive.size,
                          architecture=origin.architecture, path=path)
