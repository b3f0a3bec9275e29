"""What a package's source imports, read from its syntax tree (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: gridvm's top-level packages
GRIDVM_PACKAGES = frozenset({"base", "image_repo", "image_builder", "vmm", "tsi_bridge",
                             "target_system", "tsf", "client", "gridvm"})


def imported_roots(path: Path) -> set[str]:
    """The top-level names every absolute ``import`` in the module at ``path`` names."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def gridvm_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``package`` (a directory below the repository), the other gridvm
    packages it imports."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        others = (imported_roots(path) & GRIDVM_PACKAGES) - {package}
        if others:
            found[str(path.relative_to(REPO))] = others
    return found
