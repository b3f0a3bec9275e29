"""client/ is the REST client and the user commands: it imports no server package."""

from __future__ import annotations

import sys

from tests.support.imports import REPO, gridvm_imports, imported_roots


def test_client_imports_only_the_ground_floor():
    assert {module: others - {"base"} for module, others in gridvm_imports("client").items()
            if others - {"base"}} == {}


def test_client_needs_only_the_standard_library():
    foreign = {str(path.relative_to(REPO)): sorted(roots) for path in (REPO / "client").rglob(
        "*.py") if (roots := imported_roots(path) - set(sys.stdlib_module_names)
                    - {"client", "base"})}
    assert foreign == {}
