"""Fixtures for tests that boot real VMs through libvirt + QEMU."""

from target_system.images import built_image_boot_spec
from vmm.manager import BootSpec


def boot_spec(image) -> BootSpec:
    return built_image_boot_spec(image)
