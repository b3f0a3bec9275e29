"""Errors of the VM manager, each with a failure code from architecture.md."""

from __future__ import annotations


class VMMError(Exception):
    """Base class: ``reason`` is the failure code, ``str(err)`` the human message."""

    reason = "HYPERVISOR_ERROR"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


class HypervisorError(VMMError):
    """libvirt refused or failed; the message is libvirt's own."""

    reason = "HYPERVISOR_ERROR"


class ImageUnavailable(VMMError):
    reason = "IMAGE_UNAVAILABLE"


class ImageChecksumMismatch(VMMError):
    reason = "IMAGE_CHECKSUM_MISMATCH"


class BootTimeout(VMMError):
    reason = "BOOT_TIMEOUT"


class GuestCrashed(VMMError):
    reason = "GUEST_CRASHED"
