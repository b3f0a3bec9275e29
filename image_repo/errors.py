"""Errors of the image repository, each carrying a failure reason code from architecture.md.

Every error has a one-line message; when it is about one field of a document, ``path`` names
that field (``origin.content[1].sha512``) and the message starts with it.
"""

from __future__ import annotations


class RepositoryError(Exception):
    """Base class: ``reason`` is the architecture.md failure code, ``path`` the offending field."""

    reason = "IMAGE_UNAVAILABLE"

    def __init__(self, message: str, path: str | None = None):
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class BadRequest(RepositoryError):
    """Invalid metadata, requirements or arguments (unknown, missing or ill-typed keys, ...)."""

    reason = "BAD_REQUEST"


class NotAuthorized(RepositoryError):
    """The caller may not read or change this image."""

    reason = "NOT_AUTHORIZED"


class ImageUnavailable(RepositoryError):
    """The image exists but its content cannot be used (deleted, blob missing or damaged)."""

    reason = "IMAGE_UNAVAILABLE"


class ImageNotFound(ImageUnavailable):
    """No image visible to the caller has this id, name or name:version."""


class ChecksumMismatch(RepositoryError):
    """A file's sha512 or size differs from what its metadata states."""

    reason = "IMAGE_CHECKSUM_MISMATCH"


class ImageUntrusted(RepositoryError):
    """An endorsement does not vouch for the image (its signature does not verify, it covers
    other files, it has expired), or the site's trust policy finds no endorsement it trusts."""

    reason = "IMAGE_UNTRUSTED"


class NoMatchingImage(RepositoryError):
    """No visible image satisfies the requirements; ``result`` holds the reasons per image."""

    reason = "NO_MATCHING_IMAGE"

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result
