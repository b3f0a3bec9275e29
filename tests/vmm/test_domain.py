"""The domain XML model: emits what libvirt needs and reads back what libvirt returns."""

import pytest
from lxml import etree

from vmm.domain import (
    GRIDVM_NS,
    QEMU_NS,
    ControllerConfig,
    DiskConfig,
    DomainConfig,
    GridvmMetadata,
    MemballoonConfig,
    OSConfig,
    RawDevice,
    RngConfig,
    SerialFileConfig,
    UserNetConfig,
)
from vmm.xmlsafe import parse_xml


def full_config() -> DomainConfig:
    return DomainConfig(
        name="gridvm-abc",
        memory_kib=256 * 1024,
        vcpus=2,
        os=OSConfig(kernel="/c/vmlinuz", initrd="/c/initrd.img", cmdline="console=ttyS0 quiet"),
        tb_cache_mib=32,
        devices=[
            DiskConfig(source="/i/overlay.qcow2", target="vda", serial="gridvm-root",
                       cache="unsafe"),
            DiskConfig(source="/i/context.iso", target="vdb", driver_type="raw",
                       serial="gridvm-ctx", readonly=True),
            SerialFileConfig(path="/i/console.log"),
            RngConfig(),
            MemballoonConfig("virtio", free_page_reporting=True),
            ControllerConfig("usb", "none"),
        ],
        network=UserNetConfig(host_port=40001, guest_port=4433, callback_port=40002),
        metadata=GridvmMetadata(instance_id="abc", image="img-1", state_dir="/i",
                                created=1700000000.5, host_port=40001,
                                callback_port=40002, labels={"owner": "alice"}),
    )


def test_round_trip_is_lossless():
    config = full_config()
    again = DomainConfig.from_xml(config.to_xml())
    assert again == config
    assert again.to_xml() == config.to_xml()


def test_emitted_xml_has_what_libvirt_needs():
    root = etree.fromstring(full_config().to_xml())
    assert root.get("type") == "qemu"  # software emulation: nested KVM hangs here
    assert root.findtext("memory") == str(256 * 1024)
    assert root.find("os/type").get("arch") == "x86_64"
    assert root.findtext("os/kernel") == "/c/vmlinuz"
    assert root.find("features/acpi") is not None
    assert root.find("features/tcg/tb-cache").text == "32"
    assert root.findtext("on_reboot") == "destroy"
    disks = root.findall("devices/disk")
    assert [d.findtext("serial") for d in disks] == ["gridvm-root", "gridvm-ctx"]
    assert disks[1].find("readonly") is not None
    assert root.find("devices/serial").get("type") == "file"
    assert root.find("devices/rng/backend").text == "/dev/urandom"
    assert root.find("devices/controller").get("model") == "none"  # no USB bus
    balloon = root.find("devices/memballoon")  # freed guest pages go back to the host
    assert (balloon.get("model"), balloon.get("freePageReporting")) == ("virtio", "on")
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev
    assert "hostfwd=tcp:127.0.0.1:40001-:4433" in netdev
    assert "guestfwd=tcp:10.0.2.100:40002-cmd:" in netdev
    assert "TCP4:127.0.0.1:40002,,nodelay" in netdev
    assert args[args.index("-device") + 1].endswith("bus=pci.0,addr=0x10")
    sandbox = args[args.index("-sandbox") + 1]
    assert "spawn" not in sandbox and "obsolete=deny" in sandbox
    assert root.find(f"metadata/{{{GRIDVM_NS}}}instance").get("id") == "abc"


def test_no_callback_port_means_no_guest_forward():
    args = UserNetConfig(host_port=1234).qemu_args()
    assert "guestfwd" not in args[1]
    assert UserNetConfig.from_qemu_args(args) == UserNetConfig(host_port=1234)


LIBVIRT_STYLE = """<domain type='qemu' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>gridvm-x</name>
  <uuid>0b0e0e0e-1111-2222-3333-444455556666</uuid>
  <memory unit='MiB'>128</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><kernel>/k</kernel></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='pci' index='0' model='pci-root'><alias name='pci.0'/></controller>
    <disk type='network' device='disk'><source protocol='nbd' name='x'/></disk>
    <!-- a comment -->
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>"""


def test_parses_libvirt_documents_and_keeps_unknown_devices():
    config = DomainConfig.from_xml(LIBVIRT_STYLE)
    assert config.name == "gridvm-x"
    assert config.memory_kib == 128 * 1024
    assert config.os.machine == "pc-i440fx-7.2"
    assert config.metadata is None and config.network is None
    assert [type(d) for d in config.devices] == [RawDevice, RawDevice, RawDevice, RawDevice]
    out = etree.fromstring(config.to_xml())
    assert out.find("devices/controller").get("model") == "pci-root"
    assert out.find("devices/disk/source").get("protocol") == "nbd"


def test_rejects_a_document_that_is_not_a_domain():
    with pytest.raises(ValueError, match="not a libvirt domain"):
        DomainConfig.from_xml("<network/>")


def test_parser_does_not_expand_entities():
    evil = ("<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
            "<domain><name>&x;</name></domain>")
    config = DomainConfig.from_xml(evil)
    assert "root:" not in (config.name or "")


def test_parser_reports_malformed_xml():
    with pytest.raises(ValueError, match="invalid XML"):
        parse_xml("<domain><name></domain>")


def test_a_disk_with_its_own_bootloader_boots_from_hd_without_a_kernel():
    config = full_config()
    config.os = OSConfig(boot_devices=["hd"])
    root = etree.fromstring(config.to_xml().encode())
    os_el = root.find("os")
    assert [b.get("dev") for b in os_el.findall("boot")] == ["hd"]
    assert os_el.find("kernel") is None and os_el.find("initrd") is None
    assert os_el.find("cmdline") is None
    assert DomainConfig.from_xml(config.to_xml()) == config
    # the isolated network is the same as for a direct kernel boot
    assert UserNetConfig.from_qemu_args(
        [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]) == config.network
