"""The image builder knows no job and no site: it may use image_repo's metadata types and
the agent's files (tsi_bridge), nothing of tsf, target_system, vmm, client or the entry."""

from __future__ import annotations

from tests.support.imports import gridvm_imports


def test_builder_imports_no_job_site_or_vm_package():
    allowed = {"base", "image_repo", "tsi_bridge"}
    assert {module: others - allowed for module, others in gridvm_imports("image_builder")
            .items() if others - allowed} == {}
