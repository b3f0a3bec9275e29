"""Booting a disk with its own bootloader (a standard cloud image): the domain it gets."""

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from base.reasons import Reason
from vmm.domain import DiskConfig
from vmm.errors import VMMError
from vmm.hypervisor import Hypervisor
from vmm.manager import BootSpec, ImageFile, InstanceSpec, VirtualMachineManager, console_tail

DISK = ImageFile(Path("/images/disk.qcow2"), "0" * 128)


def manager(state_dir: Path) -> VirtualMachineManager:
    """A manager that only writes domain XML (its hypervisor is never connected)."""
    return VirtualMachineManager(Hypervisor("test:///default", Clock()), state_dir,
                                 reactor=Clock())


def test_a_bootloader_disk_boots_from_hd_through_the_firmware(tmp_path):
    vmm = manager(tmp_path)
    spec = InstanceSpec(boot=BootSpec(kernel=None, cmdline="", disk=DISK), instance_id="abc",
                        callback_port=40002)
    root = DiskConfig(source=str(tmp_path / "overlay.qcow2"), serial="gridvm-root")
    config = vmm.domain_config(spec, "gridvm-abc", tmp_path, [root], None, None, 40001)
    assert config.os.kernel is None and config.os.initrd is None and config.os.cmdline is None
    assert config.os.boot_devices == ["hd"]
    assert config.disks()[0].target == "vda"
    xml = config.to_xml()
    assert "<boot dev=\"hd\"/>" in xml and "<kernel>" not in xml
    assert "restrict=on" in xml and "guestfwd=tcp:10.0.2.100:40002" in xml


def test_a_kernel_boot_keeps_its_kernel_and_has_no_boot_device(tmp_path):
    spec = InstanceSpec(boot=BootSpec(kernel=DISK, cmdline="quiet"), instance_id="abc")
    config = manager(tmp_path).domain_config(spec, "gridvm-abc", tmp_path, [],
                                             Path("/c/vmlinuz"), None, 40001)
    assert config.os.kernel == "/c/vmlinuz" and config.os.cmdline == "quiet"
    assert config.os.boot_devices == []


def test_an_image_with_neither_kernel_nor_disk_cannot_boot():
    with pytest.raises(VMMError) as err:
        BootSpec(kernel=None, cmdline="")
    assert err.value.reason == Reason.BAD_REQUEST


def test_the_console_tail_has_no_terminal_colours(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mcloud-init\x1b[0m.\r\n"
                    b"\x1b[K[   12.5] login\r\n")
    assert console_tail(log) == "[  OK  ] Started cloud-init.\n[   12.5] login"
