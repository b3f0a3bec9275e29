"""An image whose root disk is attached read-only and shared (the erofs micro guest): every
instance gets the one cached file, never an overlay or a copy of its own."""

import hashlib
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from base.reasons import Reason
from vmm.domain import DiskConfig, DomainConfig
from vmm.errors import VMMError
from vmm.hypervisor import Hypervisor
from vmm.manager import BootSpec, ImageFile, InstanceSpec, VirtualMachineManager


def image_file(path: Path, data: bytes) -> ImageFile:
    path.write_bytes(data)
    return ImageFile(path, hashlib.sha512(data).hexdigest())


def test_each_instance_gets_the_one_cached_disk_read_only_and_shareable(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    boot = BootSpec(kernel=image_file(images / "vmlinuz", b"kernel"), cmdline="quiet",
                    initrd=image_file(images / "initrd.img", b"loader"),
                    disk=image_file(images / "root.erofs", b"erofs" * 100), disk_format="raw",
                    disk_readonly=True)
    vmm = VirtualMachineManager(Hypervisor("test:///default", Clock()), tmp_path / "state",
                                reactor=Clock())
    roots = []
    for instance_id in ("one", "two"):
        directory = tmp_path / instance_id
        directory.mkdir()
        staged = vmm._stage(InstanceSpec(boot=boot, instance_id=instance_id,
                                         context_files={"a.txt": b"a"}), directory)
        root, medium = staged.disks
        assert (root.serial, root.driver_type, root.readonly, root.shareable, root.cache) == (
            "gridvm-root", "raw", True, True, None)
        assert medium.serial == "gridvm-ctx"
        assert not (directory / "overlay.qcow2").exists()
        roots.append(root.source)
    assert roots[0] == roots[1]  # one file for every instance
    assert Path(roots[0]).is_relative_to(tmp_path / "state")  # the verified cache's copy
    assert Path(roots[0]).read_bytes() == b"erofs" * 100


def test_a_shareable_read_only_disk_survives_the_domain_xml():
    disk = DiskConfig(source="/c/root.erofs", target="vda", driver_type="raw",
                      serial="gridvm-root", readonly=True, shareable=True)
    xml = DomainConfig(name="gridvm-x", devices=[disk]).to_xml()
    assert "<readonly/>" in xml and "<shareable/>" in xml and "cache=" not in xml
    assert DomainConfig.from_xml(xml).disks() == [disk]


@pytest.mark.parametrize("layers", [0, 1])
def test_a_read_only_disk_is_one_disk_without_layers(tmp_path, layers):
    base = ImageFile(tmp_path / "base.qcow2", "0" * 128)
    with pytest.raises(VMMError) as err:
        BootSpec(kernel=base, cmdline="", disk=base if layers else None,
                 backing=(base,) * layers, disk_readonly=True)
    assert err.value.reason == Reason.BAD_REQUEST
