"""Shared test configuration and the guest images every VM test boots."""

import os
from pathlib import Path

import pytest

from image_repo.builder import build_image

#: Below /var/tmp so that QEMU, running as libvirt-qemu, can reach the files.
TEST_ROOT = Path("/var/tmp/gridvm-test")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vm`` need libvirtd with QEMU; skip them only where there is none."""
    if os.path.exists("/var/run/libvirt/libvirt-sock") or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="libvirtd is not running (run scripts/setup-host.sh)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def built_images() -> dict:
    """Both image kinds, built once (and cached across runs below TEST_ROOT)."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    return {kind: build_image(kind, output_root=TEST_ROOT / "images")
            for kind in ("initramfs", "qcow2")}
