"""Fixtures for tests that boot real VMs through libvirt + QEMU."""

import pytest

from target_system.images import built_image_boot_spec
from vmm.manager import BootSpec


def boot_spec(image) -> BootSpec:
    return built_image_boot_spec(image)


NODE = "<node><cpu><mhz>2000</mhz></cpu><memory>8388608</memory></node>"


@pytest.fixture
def test_uri(tmp_path):
    """A fresh test driver per test (test:///default is shared by the whole process)."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    return f"test://{node}"
