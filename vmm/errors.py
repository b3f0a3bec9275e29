"""Errors of the VM manager, each with a failure code from architecture.md."""

from __future__ import annotations

from base.errors import GridvmError
from base.reasons import Reason


class VMMError(GridvmError):
    """Base class: ``reason`` is the failure code, ``str(err)`` the human message."""

    reason = Reason.HYPERVISOR_ERROR


class HypervisorError(VMMError):
    """libvirt refused or failed; the message is libvirt's own."""

    reason = Reason.HYPERVISOR_ERROR


class ImageUnavailable(VMMError):
    reason = Reason.IMAGE_UNAVAILABLE


class ImageChecksumMismatch(VMMError):
    reason = Reason.IMAGE_CHECKSUM_MISMATCH


class BootTimeout(VMMError):
    reason = Reason.BOOT_TIMEOUT


class GuestCrashed(VMMError):
    reason = Reason.GUEST_CRASHED


class ForeignDomain(HypervisorError):
    """The domain belongs to another gridvm site (or to no gridvm site): left alone."""

    reason = Reason.HYPERVISOR_ERROR


class RestoreFailed(VMMError):
    """An instance could not be restored from its image's snapshot (it is booted instead)."""

    reason = Reason.RESTORE_FAILED


class DamagedSnapshot(RestoreFailed):
    """libvirt or QEMU refused the snapshot's save file itself: it is dropped."""
