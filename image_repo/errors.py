"""Errors of the image repository, each carrying a failure reason code from architecture.md.

Every error has a one-line message; when it is about one field of a document, ``path`` names
that field (``origin.content[1].sha512``) and the message starts with it.
"""

from __future__ import annotations

from base.errors import GridvmError
from base.reasons import Reason


class RepositoryError(GridvmError):
    """Base class: ``reason`` is the failure code, ``path`` the offending field."""

    reason = Reason.IMAGE_UNAVAILABLE

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class BadRequest(RepositoryError):
    """Invalid metadata, requirements or arguments (unknown, missing or ill-typed keys, ...)."""

    reason = Reason.BAD_REQUEST


class NotAuthorized(RepositoryError):
    """The caller may not read or change this image."""

    reason = Reason.NOT_AUTHORIZED


class ImageUnavailable(RepositoryError):
    """The image exists but its content cannot be used (deleted, blob missing or damaged)."""

    reason = Reason.IMAGE_UNAVAILABLE


class ImageInUse(RepositoryError):
    """The image cannot be deleted: layered images are built on it."""

    reason = Reason.IMAGE_IN_USE


class ImageNotFound(ImageUnavailable):
    """No image visible to the caller has this id, name or name:version."""


class ChecksumMismatch(RepositoryError):
    """A file's sha512 or size differs from what its metadata states."""

    reason = Reason.IMAGE_CHECKSUM_MISMATCH


class ImageUntrusted(RepositoryError):
    """An endorsement does not vouch for the image (its signature does not verify, it covers
    other files, it has expired), or the site's trust policy finds no endorsement it trusts."""

    reason = Reason.IMAGE_UNTRUSTED


class NoMatchingImage(RepositoryError):
    """No visible image satisfies the requirements; ``result`` holds the reasons per image."""

    reason = Reason.NO_MATCHING_IMAGE

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class QuotaExceeded(RepositoryError):
    """A user's images would take more of the store than the site allows."""

    reason = Reason.QUOTA_EXCEEDED


class UploadNotFound(RepositoryError):
    """No pending registration of the caller has this id (or it expired)."""

    reason = Reason.NOT_FOUND
