"""libvirt domain XML as small classes that both emit and parse (after Nova's config.py).

Every class turns itself into an lxml element with ``format_dom()`` and reads one back
with ``parse_dom()``; ``DomainConfig.to_xml()`` / ``DomainConfig.from_xml()`` round-trip
whole documents.  Devices gridvm does not model (libvirt adds controllers, inputs, …) are
kept as they are, so a document read from libvirt is written back unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from lxml import etree

from vmm.xmlsafe import parse_xml

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
GRIDVM_NS = "https://gridvm.dev/xmlns/instance/1"
GUEST_TSI_ADDRESS = "10.0.2.100"  #: the one guest-side address that reaches the host
SOCAT = "/usr/bin/socat"
#: QEMU's seccomp sandbox as libvirt sets it, but allowing QEMU to spawn the callback relay
#: (libvirt's own sandbox is switched off in qemu.conf by scripts/setup-host.sh).  The relay
#: needs setsid(), which "elevateprivileges=deny" (and "=children") forbid; QEMU runs as the
#: unprivileged libvirt-qemu user under no_new_privs, so set*id could not elevate anyway.
QEMU_SANDBOX = "on,obsolete=deny,resourcecontrol=deny"


def _text(parent: etree._Element, tag: str, value: object) -> etree._Element:
    child = etree.SubElement(parent, tag)
    child.text = str(value)
    return child


def _memory_kib(element: etree._Element) -> int:
    factors = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
               "m": 1024, "mib": 1024, "mb": 1000**2 / 1024, "g": 1024**2, "gib": 1024**2}
    unit = element.get("unit", "KiB").lower()
    return int(int(element.text) * factors.get(unit, 1))


class ConfigObject:
    """Base of all XML config classes."""

    root_name = ""

    def format_dom(self) -> etree._Element:
        raise NotImplementedError

    def parse_dom(self, element: etree._Element) -> None:
        raise NotImplementedError

    def to_xml(self, pretty: bool = True) -> str:
        return etree.tostring(self.format_dom(), pretty_print=pretty, encoding="unicode")

    @classmethod
    def from_dom(cls, element: etree._Element):
        obj = cls.__new__(cls)
        cls.__init__(obj)
        obj.parse_dom(element)
        return obj

    @classmethod
    def from_xml(cls, text: str | bytes):
        return cls.from_dom(parse_xml(text))


@dataclass(eq=True)
class OSConfig(ConfigObject):
    """Direct kernel boot (kernel, optional initrd, command line), or firmware boot from
    the devices in ``boot_devices`` (e.g. ``["hd"]``: a disk with its own bootloader)."""

    root_name = "os"
    arch: str = "x86_64"
    machine: str = "pc"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devices: list[str] = field(default_factory=list)

    def format_dom(self) -> etree._Element:
        os_el = etree.Element("os")
        typ = _text(os_el, "type", "hvm")
        typ.set("arch", self.arch)
        typ.set("machine", self.machine)
        for tag in ("kernel", "initrd", "cmdline"):
            if getattr(self, tag) is not None:
                _text(os_el, tag, getattr(self, tag))
        for dev in self.boot_devices:
            etree.SubElement(os_el, "boot", dev=dev)
        return os_el

    def parse_dom(self, element: etree._Element) -> None:
        typ = element.find("type")
        if typ is not None:
            self.arch = typ.get("arch", self.arch)
            self.machine = typ.get("machine", self.machine)
        for tag in ("kernel", "initrd", "cmdline"):
            child = element.find(tag)
            setattr(self, tag, child.text if child is not None else None)
        self.boot_devices = [boot.get("dev", "") for boot in element.findall("boot")]


@dataclass(eq=True)
class DiskConfig(ConfigObject):
    """A file-backed virtio disk, found in the guest by its serial."""

    root_name = "disk"
    source: str = ""
    target: str = "vda"
    driver_type: str = "qcow2"
    device: str = "disk"
    serial: str | None = None
    readonly: bool = False
    cache: str | None = None
    #: several domains attach the same file (read-only: no lock, no label restored)
    shareable: bool = False

    def format_dom(self) -> etree._Element:
        disk = etree.Element("disk", type="file", device=self.device)
        driver = etree.SubElement(disk, "driver", name="qemu", type=self.driver_type)
        if self.cache:
            driver.set("cache", self.cache)
        etree.SubElement(disk, "source", file=self.source)
        etree.SubElement(disk, "target", dev=self.target, bus="virtio")
        if self.serial:
            _text(disk, "serial", self.serial)
        if self.readonly:
            etree.SubElement(disk, "readonly")
        if self.shareable:
            etree.SubElement(disk, "shareable")
        return disk

    def parse_dom(self, element: etree._Element) -> None:
        self.device = element.get("device", "disk")
        driver = element.find("driver")
        if driver is not None:
            self.driver_type = driver.get("type", self.driver_type)
            self.cache = driver.get("cache")
        source = element.find("source")
        self.source = source.get("file", "") if source is not None else ""
        target = element.find("target")
        if target is not None:
            self.target = target.get("dev", self.target)
        serial = element.find("serial")
        self.serial = serial.text if serial is not None else None
        self.readonly = element.find("readonly") is not None
        self.shareable = element.find("shareable") is not None


@dataclass(eq=True)
class SerialFileConfig(ConfigObject):
    """The serial console written to a file: the boot log for failure messages."""

    root_name = "serial"
    path: str = ""

    def format_dom(self) -> etree._Element:
        serial = etree.Element("serial", type="file")
        etree.SubElement(serial, "source", path=self.path)
        etree.SubElement(serial, "target", port="0")
        return serial

    def parse_dom(self, element: etree._Element) -> None:
        source = element.find("source")
        self.path = source.get("path", "") if source is not None else ""


@dataclass(eq=True)
class RngConfig(ConfigObject):
    """virtio-rng: without it Python's start-up in the guest waits for entropy."""

    root_name = "rng"
    backend: str = "/dev/urandom"

    def format_dom(self) -> etree._Element:
        rng = etree.Element("rng", model="virtio")
        _text(rng, "backend", self.backend).set("model", "random")
        return rng

    def parse_dom(self, element: etree._Element) -> None:
        backend = element.find("backend")
        if backend is not None and backend.text:
            self.backend = backend.text


@dataclass(eq=True)
class MemballoonConfig(ConfigObject):
    """The balloon device; with ``free_page_reporting`` the guest hands the pages it frees
    back to the host (QEMU discards them), so an idle guest holds only what it uses."""

    root_name = "memballoon"
    model: str = "none"
    free_page_reporting: bool = False

    def format_dom(self) -> etree._Element:
        element = etree.Element("memballoon", model=self.model)
        if self.free_page_reporting:
            element.set("freePageReporting", "on")
        return element

    def parse_dom(self, element: etree._Element) -> None:
        self.model = element.get("model", "none")
        self.free_page_reporting = element.get("freePageReporting") == "on"


@dataclass(eq=True)
class ControllerConfig(ConfigObject):
    """A controller; gridvm uses it to switch off the USB bus libvirt adds by default."""

    root_name = "controller"
    type: str = "usb"
    model: str = "none"

    def format_dom(self) -> etree._Element:
        return etree.Element("controller", type=self.type, model=self.model)

    def parse_dom(self, element: etree._Element) -> None:
        self.type = element.get("type", "usb")
        self.model = element.get("model", "none")


@dataclass(eq=True)
class ChannelConfig(ConfigObject):
    """A virtio-serial port whose host end is a unix socket QEMU listens on (the guest
    sees ``/dev/virtio-ports/<name>``): the channel a restored instance's identity comes by.
    Written only: read back from libvirt it stays a :class:`RawDevice`."""

    root_name = "channel"
    path: str = ""
    name: str = ""

    def format_dom(self) -> etree._Element:
        channel = etree.Element("channel", type="unix")
        etree.SubElement(channel, "source", mode="bind", path=self.path)
        etree.SubElement(channel, "target", type="virtio", name=self.name)
        return channel

    def parse_dom(self, element: etree._Element) -> None:
        source, target = element.find("source"), element.find("target")
        self.path = source.get("path", "") if source is not None else ""
        self.name = target.get("name", "") if target is not None else ""


class RawDevice(ConfigObject):
    """A device gridvm does not model, kept verbatim."""

    def __init__(self, element: etree._Element | None = None):
        self.element = element

    def format_dom(self) -> etree._Element:
        assert self.element is not None
        return etree.fromstring(etree.tostring(self.element))

    def parse_dom(self, element: etree._Element) -> None:
        self.element = element

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawDevice) and etree.tostring(self.element) == etree.tostring(
            other.element)

    def __repr__(self) -> str:
        return f"RawDevice(<{self.element.tag if self.element is not None else '?'}>)"


DEVICE_CLASSES: dict[str, type[ConfigObject]] = {
    "disk": DiskConfig, "serial": SerialFileConfig, "rng": RngConfig,
    "memballoon": MemballoonConfig,
}


@dataclass(eq=True)
class UserNetConfig:
    """Isolated QEMU user-mode networking, passed through ``<qemu:commandline>``.

    libvirt 9.0 cannot forward ports on ``<interface type='user'>``, so the netdev and its
    virtio NIC go on QEMU's command line.  ``restrict=on`` cuts the guest off from the host;
    ``hostfwd`` brings the TSI port out on 127.0.0.1, and one ``guestfwd`` lets the guest
    reach exactly the instance's callback port through 10.0.2.100.  The NIC needs an
    explicit PCI address or libvirt's own devices fail to start.
    """

    host_port: int = 0
    guest_port: int = 4433
    callback_port: int | None = None
    pci_slot: int = 0x10
    host_address: str = "127.0.0.1"  #: where the host binds the TSI forward
    callback_address: str = "127.0.0.1"  #: where the host reaches the site's callback port

    def qemu_args(self) -> list[str]:
        netdev = (f"user,id=gridvmnet,net=10.0.2.0/24,restrict=on,"
                  f"hostfwd=tcp:{self.host_address}:{self.host_port}-:{self.guest_port}")
        if self.callback_port:
            # One relay process per guest connection (a chardev target would be a single
            # stream, but a TSI worker needs two connections and a pool needs more).
            # ",," is QEMU's escaped comma.
            netdev += (f",guestfwd=tcp:{GUEST_TSI_ADDRESS}:{self.callback_port}"
                       f"-cmd:{SOCAT} STDIO "
                       f"TCP4:{self.callback_address}:{self.callback_port},,nodelay")
        device = f"virtio-net-pci,netdev=gridvmnet,bus=pci.0,addr={self.pci_slot:#x}"
        return ["-netdev", netdev, "-device", device]

    @classmethod
    def from_qemu_args(cls, args: list[str]) -> UserNetConfig | None:
        net = None
        for flag, value in itertools.pairwise(args):
            if flag == "-netdev" and value.startswith("user,id=gridvmnet"):
                net = cls()
                for part in value.split(","):
                    key, _, val = part.partition("=")
                    if key == "hostfwd":
                        host, guest = val.removeprefix("tcp:").split("-:")
                        net.host_address, _, port = host.rpartition(":")
                        net.host_port = int(port)
                        net.guest_port = int(guest)
                    elif key == "guestfwd":
                        net.callback_port = int(val.split("-", 1)[0].rsplit(":", 1)[1])
                        relay = val.split("TCP4:", 1)[-1]
                        if ":" in relay:
                            net.callback_address = relay.rsplit(":", 1)[0]
            elif flag == "-device" and value.startswith("virtio-net-pci,netdev=gridvmnet") \
                    and net is not None:
                net.pci_slot = int(value.rsplit("addr=", 1)[1], 16)
        return net


@dataclass(eq=True)
class ClusterNicConfig:
    """A second virtio NIC on a cluster's private switch (``vmm.switch``), passed through
    ``<qemu:commandline>``: ``-netdev dgram`` between the node's own unix socket and the
    switch's, so frames never touch a host interface.  Its MAC tells the guest which NIC
    is the cluster's.  The arguments stay in the domain's extra QEMU arguments."""

    local_socket: str = ""
    switch_socket: str = ""
    mac: str = ""
    pci_slot: int = 0x11

    def qemu_args(self) -> list[str]:
        netdev = (f"dgram,id=gridvmcluster,local.type=unix,local.path={self.local_socket},"
                  f"remote.type=unix,remote.path={self.switch_socket}")
        device = (f"virtio-net-pci,netdev=gridvmcluster,mac={self.mac},bus=pci.0,"
                  f"addr={self.pci_slot:#x}")
        return ["-netdev", netdev, "-device", device]


@dataclass(eq=True)
class GridvmMetadata(ConfigObject):
    """What gridvm records in the domain so it can adopt the domain after a restart."""

    root_name = "instance"
    instance_id: str = ""
    site: str = ""  #: the identity of the site that created the domain (see vmm.identity)
    image: str = ""
    state_dir: str = ""
    created: float = 0.0
    host_port: int = 0  #: the TSI port forwarded on 127.0.0.1
    callback_port: int = 0  #: the host port the guest's callbacks reach (0: none)
    labels: dict[str, str] = field(default_factory=dict)

    def format_dom(self) -> etree._Element:
        el = etree.Element(f"{{{GRIDVM_NS}}}instance", nsmap={"gridvm": GRIDVM_NS})
        el.set("id", self.instance_id)
        for tag in ("site", "image", "state_dir", "created", "host_port", "callback_port"):
            _text(el, f"{{{GRIDVM_NS}}}{tag}", getattr(self, tag))
        for key, value in sorted(self.labels.items()):
            _text(el, f"{{{GRIDVM_NS}}}label", value).set("name", key)
        return el

    def parse_dom(self, element: etree._Element) -> None:
        self.instance_id = element.get("id", "")
        self.site = element.findtext(f"{{{GRIDVM_NS}}}site", "")
        self.image = element.findtext(f"{{{GRIDVM_NS}}}image", "")
        self.state_dir = element.findtext(f"{{{GRIDVM_NS}}}state_dir", "")
        self.created = float(element.findtext(f"{{{GRIDVM_NS}}}created", "0") or 0)
        self.host_port = int(element.findtext(f"{{{GRIDVM_NS}}}host_port", "0") or 0)
        self.callback_port = int(element.findtext(f"{{{GRIDVM_NS}}}callback_port", "0") or 0)
        self.labels = {el.get("name"): el.text or ""
                       for el in element.findall(f"{{{GRIDVM_NS}}}label")}


@dataclass(eq=True)
class DomainConfig(ConfigObject):
    """A whole domain: software-emulated (``type='qemu'``) unless told otherwise."""

    root_name = "domain"
    name: str = ""
    uuid: str | None = None
    virt_type: str = "qemu"
    memory_kib: int = 256 * 1024
    vcpus: int = 1
    os: OSConfig = field(default_factory=OSConfig)
    acpi: bool = True
    tb_cache_mib: int | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "destroy"
    on_crash: str = "destroy"
    devices: list[ConfigObject] = field(default_factory=list)
    network: UserNetConfig | None = None
    qemu_sandbox: str | None = QEMU_SANDBOX
    extra_qemu_args: list[str] = field(default_factory=list)
    metadata: GridvmMetadata | None = None

    def format_dom(self) -> etree._Element:
        dom = etree.Element("domain", type=self.virt_type, nsmap={"qemu": QEMU_NS})
        _text(dom, "name", self.name)
        if self.uuid:
            _text(dom, "uuid", self.uuid)
        if self.metadata is not None:
            etree.SubElement(dom, "metadata").append(self.metadata.format_dom())
        _text(dom, "memory", self.memory_kib).set("unit", "KiB")
        _text(dom, "vcpu", self.vcpus)
        dom.append(self.os.format_dom())
        features = etree.SubElement(dom, "features")
        if self.acpi:
            etree.SubElement(features, "acpi")
        if self.tb_cache_mib and self.virt_type == "qemu":
            tcg = etree.SubElement(features, "tcg")
            _text(tcg, "tb-cache", self.tb_cache_mib).set("unit", "MiB")
        for tag in ("on_poweroff", "on_reboot", "on_crash"):
            _text(dom, tag, getattr(self, tag))
        devices = etree.SubElement(dom, "devices")
        for device in self.devices:
            devices.append(device.format_dom())
        args = (self.network.qemu_args() if self.network else []) + self.extra_qemu_args
        if self.qemu_sandbox:
            args += ["-sandbox", self.qemu_sandbox]
        if args:
            cmdline = etree.SubElement(dom, f"{{{QEMU_NS}}}commandline")
            for arg in args:
                etree.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
        return dom

    def parse_dom(self, element: etree._Element) -> None:
        if element.tag != "domain":
            raise ValueError(f"not a libvirt domain: <{element.tag}>")
        self.virt_type = element.get("type", "qemu")
        self.name = element.findtext("name", "")
        self.uuid = element.findtext("uuid")
        memory = element.find("memory")
        if memory is not None:
            self.memory_kib = _memory_kib(memory)
        self.vcpus = int(element.findtext("vcpu", "1"))
        os_el = element.find("os")
        if os_el is not None:
            self.os = OSConfig.from_dom(os_el)
        features = element.find("features")
        self.acpi = features is not None and features.find("acpi") is not None
        tb = features.find("tcg/tb-cache") if features is not None else None
        self.tb_cache_mib = _memory_kib(tb) // 1024 if tb is not None else None
        for tag in ("on_poweroff", "on_reboot", "on_crash"):
            setattr(self, tag, element.findtext(tag, getattr(self, tag)))
        self.devices = []
        for device in element.find("devices") if element.find("devices") is not None else []:
            if not isinstance(device.tag, str):
                continue  # comments
            cls = DEVICE_CLASSES.get(device.tag)
            if device.tag == "controller" and device.get("type") == "usb" and \
                    device.get("model") == "none":
                cls = ControllerConfig
            if (cls is DiskConfig and device.get("type") != "file") or \
                    (cls is SerialFileConfig and device.get("type") != "file"):
                cls = None
            self.devices.append(cls.from_dom(device) if cls else RawDevice(device))
        args = [arg.get("value", "") for arg in element.iterfind(f"{{{QEMU_NS}}}commandline/"
                                                                 f"{{{QEMU_NS}}}arg")]
        self.network = UserNetConfig.from_qemu_args(args)
        self.qemu_sandbox = None
        if "-sandbox" in args[:-1]:
            at = args.index("-sandbox")
            self.qemu_sandbox = args[at + 1]
            args = args[:at] + args[at + 2:]
        self.extra_qemu_args = _without_network_args(args) if self.network else args
        instance = element.find(f"metadata/{{{GRIDVM_NS}}}instance")
        self.metadata = GridvmMetadata.from_dom(instance) if instance is not None else None

    def disks(self) -> list[DiskConfig]:
        return [d for d in self.devices if isinstance(d, DiskConfig)]

    def console_log(self) -> str | None:
        return next((d.path for d in self.devices if isinstance(d, SerialFileConfig)), None)


def _without_network_args(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for flag, value in zip(args, [*args[1:], ""], strict=True):
        if skip:
            skip = False
            continue
        if (flag == "-netdev" and value.startswith("user,id=gridvmnet")) or \
                (flag == "-device" and value.startswith("virtio-net-pci,netdev=gridvmnet")):
            skip = True
            continue
        kept.append(flag)
    return kept
