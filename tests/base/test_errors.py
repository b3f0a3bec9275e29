"""GridvmError: a one-line message and a Reason, a class default an instance may override."""

import pytest

from base.errors import GridvmError
from base.reasons import Reason


class Refused(GridvmError):
    reason = Reason.NOT_AUTHORIZED


def test_the_message_is_the_string_and_the_default_reason_is_internal():
    err = GridvmError("something broke")
    assert str(err) == err.message == "something broke"
    assert err.reason is Reason.INTERNAL_ERROR


def test_a_subclass_default_and_an_instance_reason():
    assert Refused("no").reason is Reason.NOT_AUTHORIZED
    assert Refused("no", reason=Reason.QUOTA_EXCEEDED).reason is Reason.QUOTA_EXCEEDED
    assert Refused.reason is Reason.NOT_AUTHORIZED  # the instance's reason stays its own


def test_a_code_given_as_text_becomes_its_member():
    assert GridvmError("late", reason="BOOT_TIMEOUT").reason is Reason.BOOT_TIMEOUT
    with pytest.raises(ValueError):
        GridvmError("x", reason="NOT_A_CODE")


def test_every_package_error_derives_from_it():
    from client.errors import CliError
    from image_builder.errors import BuildError
    from image_repo.errors import RepositoryError
    from tsi_bridge.errors import TSIError
    from vmm.errors import VMMError

    for error in (CliError, BuildError, RepositoryError, TSIError, VMMError):
        assert issubclass(error, GridvmError), error
