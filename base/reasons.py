"""Failure reasons: the one set of codes every failure that reaches a user carries.

The codes are architecture.md's (plus ``NOT_FOUND`` for REST's 404s, the two codes of
CONTAINER jobs and ``NO_HOST_FITS`` for a job no hypervisor host takes).  ``Reason`` is a
``StrEnum``: a member compares equal to its code, serialises as it in JSON, and a stored
code reads back with ``Reason(code)``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why something failed; the value is the code clients see."""

    #: the request itself is wrong (bad key, value, size, state for the action)
    BAD_REQUEST = "BAD_REQUEST"
    #: not authenticated, or not allowed to do this
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    #: no such job, instance, image or file — or not the caller's (the two look the same)
    NOT_FOUND = "NOT_FOUND"
    #: a defect of gridvm: logged with its traceback, never shown with exception text
    INTERNAL_ERROR = "INTERNAL_ERROR"
    #: the hypervisor host of an instance became unreachable
    HOST_LOST = "HOST_LOST"
    #: no hypervisor host can take a new instance (every host's reason is attached)
    NO_HOST_FITS = "NO_HOST_FITS"
    #: a per-user or site limit on instances or kept state is reached
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    #: no visible image satisfies the requirements (the why-not per image is attached)
    NO_MATCHING_IMAGE = "NO_MATCHING_IMAGE"
    #: the image exists but its content cannot be used (deleted, missing, damaged)
    IMAGE_UNAVAILABLE = "IMAGE_UNAVAILABLE"
    #: the image is the base of layered images and cannot be deleted before them
    IMAGE_IN_USE = "IMAGE_IN_USE"
    #: a file's sha512 or size differs from its metadata
    IMAGE_CHECKSUM_MISMATCH = "IMAGE_CHECKSUM_MISMATCH"
    #: no endorsement the site trusts vouches for the image
    IMAGE_UNTRUSTED = "IMAGE_UNTRUSTED"
    #: libvirt refused or failed
    HYPERVISOR_ERROR = "HYPERVISOR_ERROR"
    #: the guest did not become ready within its deadline
    BOOT_TIMEOUT = "BOOT_TIMEOUT"
    #: restoring an instance from its image's memory snapshot failed (it boots instead)
    RESTORE_FAILED = "RESTORE_FAILED"
    #: the domain stopped or crashed under a running instance
    GUEST_CRASHED = "GUEST_CRASHED"
    #: no TSI worker could be reached in the guest
    TSI_UNREACHABLE = "TSI_UNREACHABLE"
    #: a TSI connection broke or its health budget ran out
    TSI_LOST = "TSI_LOST"
    #: the TSI answered a command with a failure
    TSI_ERROR = "TSI_ERROR"
    #: files could not be moved into or out of the job's directory
    STAGING_FAILED = "STAGING_FAILED"
    #: the job was aborted by its owner, an operator or the site
    JOB_ABORTED = "JOB_ABORTED"
    #: the job's executable exited with a non-zero code
    NONZERO_EXIT = "NONZERO_EXIT"
    #: the job ran longer than its Runtime
    RUNTIME_EXCEEDED = "RUNTIME_EXCEEDED"
    #: the server restarted and could not take the work back
    SERVER_RESTARTED = "SERVER_RESTARTED"
    #: a CONTAINER job's IMAGE_URL names no container image (nor VM image) the caller may use
    CONTAINER_UNKNOWN = "CONTAINER_UNKNOWN"
    #: the container could not be run: its archive damaged, for another architecture, or
    #: the runtime in the guest failed before the job's command started
    CONTAINER_FAILED = "CONTAINER_FAILED"
