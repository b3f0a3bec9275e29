"""The failure codes: one member per code of architecture.md ("Failure reasons"), each equal
to, and serialised as, its code."""

import json

import pytest

from base.reasons import Reason

#: architecture.md, "Failure reasons", in its order
ARCHITECTURE_CODES = (
    "BAD_REQUEST", "NOT_AUTHORIZED", "INTERNAL_ERROR", "HOST_LOST", "QUOTA_EXCEEDED",
    "NO_MATCHING_IMAGE", "IMAGE_UNAVAILABLE", "IMAGE_CHECKSUM_MISMATCH", "IMAGE_UNTRUSTED",
    "HYPERVISOR_ERROR", "BOOT_TIMEOUT", "GUEST_CRASHED", "TSI_UNREACHABLE", "TSI_LOST",
    "TSI_ERROR", "STAGING_FAILED", "JOB_ABORTED", "NONZERO_EXIT", "RUNTIME_EXCEEDED",
    "SERVER_RESTARTED",
)
#: codes gridvm adds to architecture.md's list (REST's 404s; an image layers depend on;
#: CONTAINER jobs; a job no hypervisor host takes; a restore that fell back to a boot)
ADDED_CODES = ("NOT_FOUND", "IMAGE_IN_USE", "CONTAINER_UNKNOWN", "CONTAINER_FAILED",
               "NO_HOST_FITS", "RESTORE_FAILED")


def test_every_architecture_code_is_a_member_and_nothing_else_is():
    assert {member.value for member in Reason} == {*ARCHITECTURE_CODES, *ADDED_CODES}


@pytest.mark.parametrize("member", list(Reason))
def test_a_member_is_its_code(member):
    assert member.name == member.value
    assert member == member.value and str(member) == member.value
    assert Reason(member.value) is member
    assert json.dumps({"reason": member}) == f'{{"reason": "{member.value}"}}'


def test_an_unknown_code_is_refused():
    with pytest.raises(ValueError, match="NO_SUCH_REASON"):
        Reason("NO_SUCH_REASON")
