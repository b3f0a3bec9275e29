"""base/ is the ground floor: it imports no other gridvm package."""

from tests.support.imports import gridvm_imports


def test_base_imports_no_other_gridvm_package():
    assert gridvm_imports("base") == {}
