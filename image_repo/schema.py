"""The image metadata schema: general, origin, semantic, IDB and TSI groups.

``validate(doc)`` reads a JSON document strictly into :class:`ImageMetadata`; an unknown,
missing, mistyped or ill-typed key raises :class:`~image_repo.errors.BadRequest` naming its
path.  ``ImageMetadata(...).to_dict()`` builds a document from Python (the image builder
does this), ``ContentRef.for_file`` describes a file.  docs/image-metadata.md explains every
field; its tables come from the ``doc`` texts below.

Field names follow ViCE (general/origin/semantic) and OpenStack Glance where Glance has a
name (``architecture``, ``hypervisor_type``, ``os_hash_algo``, ``os_hash_value``, ``size``).
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from base.unicore import OFFICIAL_PROPERTY_KEYS
from image_repo.errors import BadRequest
from image_repo.strict import document, from_json, join, spec, to_json
from image_repo.versions import Version

SCHEMA_VERSION = 1
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"
NAME_HINT = "a name of letters, digits and . _ + - (at most 128, no ':' or '/')"
SHA512_PATTERN = r"[0-9a-f]{128}"
SHA512_HINT = "128 lowercase hex digits (sha512)"
PERMISSION_PATTERN = r"r?w?"
PERMISSION_HINT = "'rw', 'r', 'w' or ''"
STATUSES = ("active", "deprecated", "deleted")
ARCHITECTURES = ("x86_64", "aarch64", "armv7l", "i686", "ppc64le", "s390x", "riscv64")
HYPERVISOR_TYPES = ("qemu", "kvm", "xen", "lxc", "vmware", "hyperv", "firecracker",
                    "cloud-hypervisor")
CONTENT_TYPES = ("qcow2", "raw", "iso", "kernel+initramfs", "oci", "sif")
ROLES = ("kernel", "initrd", "disk", "iso", "container", "other")
#: roles an image of each content type must have among its content refs
REQUIRED_ROLES = {"qcow2": ("disk",), "raw": ("disk",), "iso": ("iso",),
                  "kernel+initramfs": ("kernel", "initrd"), "oci": ("container",),
                  "sif": ("container",)}
#: OCI runtimes a VM image may offer to run CONTAINER jobs (crun's and runc's command line)
CONTAINER_RUNTIMES = ("crun", "runc")
#: content types that are container images: they run inside a VM image, never boot on their own
CONTAINER_CONTENT_TYPES = ("oci", "sif")


def _timestamp_problem(text: str) -> str | None:
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return f"expected an ISO 8601 time like 2024-05-01T12:00:00Z, got {text!r}"
    if stamp.tzinfo is None:
        return f"expected a time with a zone (…Z or +01:00), got {text!r}"
    return None


def _absolute_path_problem(text: str) -> str | None:
    if not text.startswith("/") or posixpath.normpath(text) != text.rstrip("/") or "\0" in text:
        return f"expected a normalised absolute path, got {text!r}"
    return None


def _nonblank_problem(text: str) -> str | None:
    return "must not be empty" if not text.strip() else None


def _unique_problem(items: list[str]) -> str | None:
    seen = set()
    for item in items:
        if item in seen:
            return f"{item!r} is listed twice"
        seen.add(item)
    return None


# --------------------------------------------------------------------------- general ---------

@document
class Permissions:
    """Read/write rights of the owner, the group and everybody else (like Unix ``rw``)."""

    owner: str = spec("rw", pattern=PERMISSION_PATTERN, hint=PERMISSION_HINT,
                      doc="rights of the owner")
    group: str = spec("r", pattern=PERMISSION_PATTERN, hint=PERMISSION_HINT,
                      doc="rights of members of the image's group")
    others: str = spec("", pattern=PERMISSION_PATTERN, hint=PERMISSION_HINT,
                       doc="rights of everybody else (still subject to the image's VOs)")


@document
class Counters:
    """Usage counters, maintained by the repository."""

    deployments: int = spec(0, minimum=0, doc="instances booted from this image")
    exports: int = spec(0, minimum=0, doc="times the image was exported or downloaded")


@document
class Rating:
    """One user's rating of the image."""

    user: str = spec(check=_nonblank_problem, doc="who rated")
    score: int = spec(minimum=1, maximum=5, doc="1 (poor) to 5 (excellent)")
    comment: str | None = spec(None, doc="free text")


@document
class General:
    """ViCE table I: identity, lifecycle, ownership and description."""

    name: str = spec(pattern=NAME_PATTERN, hint=NAME_HINT,
                     doc="image name; versions of one name form a lineage")
    version: int | None = spec(None, minimum=1,
                               doc="1, 2, 3 … per name; filled in at registration")
    base_image: str | None = spec(None, doc="id of the image this version was derived from "
                                  "(a name:version is resolved at registration)")
    status: Literal["active", "deprecated", "deleted"] | None = spec(
        None, doc="lifecycle state; 'active' at registration")
    created: str | None = spec(None, check=_timestamp_problem,
                               doc="registration time (ISO 8601, set by the repository)")
    updated: str | None = spec(None, check=_timestamp_problem,
                               doc="last status or counter change (set by the repository)")
    owner: str | None = spec(None, check=_nonblank_problem,
                             doc="owning user; the registering caller when omitted")
    group: str | None = spec(None, check=_nonblank_problem,
                             doc="owning group; the caller's first group when omitted")
    permissions: Permissions | None = spec(None, doc="owner/group/others read-write rights; "
                                           "default owner rw, group r, others none")
    title: str | None = spec(None, doc="one-line title")
    description: str | None = spec(None, doc="free text")
    communities: list[str] = spec(default_factory=list, check=_unique_problem,
                                  doc="scientific communities the image is made for")
    purposes: list[str] = spec(default_factory=list, check=_unique_problem,
                               doc="what the image is for (teaching, analysis, …)")
    counters: Counters | None = spec(None, doc="deployments and exports (repository-kept)")
    ratings: list[Rating] = spec(default_factory=list, doc="users' ratings 1-5 "
                                 "(repository-kept)")


# --------------------------------------------------------------------------- origin ----------

@document
class ContentRef:
    """One file of the image: its name, role, sha512 and size."""

    file: str = spec(pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}",
                     hint="a plain file name (no directories)", doc="file name")
    role: Literal["kernel", "initrd", "disk", "iso", "container", "other"] = spec(
        doc="what the file is for")
    sha512: str = spec(pattern=SHA512_PATTERN, hint=SHA512_HINT, doc="sha512 of the file")
    size: int = spec(minimum=0, doc="size in bytes")

    @classmethod
    def for_file(cls, path: str | Path, role: str) -> ContentRef:
        """Describe a file on disk (reads it once to hash it)."""
        path = Path(path)
        digest = hashlib.sha512()
        size = 0
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return cls(file=path.name, role=role, sha512=digest.hexdigest(), size=size)  # type: ignore[arg-type]


@document
class Hardware:
    """Virtual hardware: CPUs, memory and disk."""

    vcpus: int | None = spec(None, minimum=1, doc="virtual CPUs")
    memory_mib: int | None = spec(None, minimum=1, doc="memory in MiB (Glance min_ram)")
    disk_gib: float | None = spec(None, minimum=0, doc="disk in GiB, may be fractional "
                                  "(Glance min_disk)")


@document
class Boot:
    """How the image boots: directly from a kernel (the content files to boot and the kernel
    command line), or from a disk with its own bootloader."""

    mode: Literal["kernel", "bootloader"] | None = spec(
        None, doc="kernel: direct kernel boot; bootloader: the disk boots itself (a standard "
        "cloud image). Default: kernel when boot.kernel is given, else bootloader")
    kernel: str | None = spec(None, doc="content file with role kernel (Glance kernel_id)")
    initrd: str | None = spec(None, doc="content file with role initrd (Glance ramdisk_id)")
    cmdline: str | None = spec(None, doc="kernel command line (Glance os_command_line)")
    readonly_disk: bool | None = spec(
        None, doc="the disk is attached read-only and shared by every instance (no overlay "
        "per instance): the guest keeps its writes in memory, e.g. a tmpfs overlay")


@document
class Origin:
    """ViCE table II: how the image is made and run, and what its content is."""

    runtime_technology: Literal["vm", "container"] | None = spec(
        None, doc="virtual machine or container")
    runtime_implementation: str | None = spec(None, doc="e.g. qemu, docker, apptainer")
    management_layer: str | None = spec(None, doc="e.g. libvirt, openstack, kubernetes")
    image_type: Literal["implicit", "declarative"] | None = spec(
        None, doc="implicit: a ready disk/file system; declarative: built from a recipe")
    content_type: Literal["qcow2", "raw", "iso", "kernel+initramfs", "oci", "sif"] = spec(
        doc="format of the content (Glance disk_format)")
    content: list[ContentRef] = spec(default_factory=list,
                                     doc="the files of the image, each with role, sha512, size")
    source_url: str | None = spec(None, check=_nonblank_problem,
                                  doc="where the image comes from, e.g. docker://debian:12 "
                                  "(matched against a CONTAINER job's IMAGE_URL)")
    os_hash_algo: Literal["sha512"] | None = spec(None, doc="always sha512 (Glance)")
    os_hash_value: str | None = spec(None, pattern=SHA512_PATTERN, hint=SHA512_HINT,
                                     doc="content digest: sha512 over the content manifest "
                                     "(computed when omitted, checked when given)")
    size: int | None = spec(None, minimum=0, doc="total bytes of the content (computed when "
                            "omitted, checked when given)")
    architecture: str | None = spec(None, choices=ARCHITECTURES, doc="CPU architecture")
    hypervisor_type: str | None = spec(None, choices=HYPERVISOR_TYPES,
                                       doc="hypervisor the image is made for")
    virtual_hardware: Hardware | None = spec(None, doc="default size of an instance")
    minimal_hardware: Hardware | None = spec(None, doc="least an instance needs to work")
    boot: Boot | None = spec(None, doc="direct kernel boot (kernel, initrd, command line) or "
                             "a disk's own bootloader")
    backing_image: str | None = spec(None, check=_nonblank_problem,
                                     doc="the registered qcow2 image (id or name:version; "
                                     "an id once registered) whose disk is the backing file "
                                     "of this image's qcow2 disk: a layered image")

    def check(self, path: str) -> None:
        files = {}
        for i, ref in enumerate(self.content):
            if ref.file in files:
                raise BadRequest(f"file {ref.file!r} is listed twice",
                                 join(join(path, "content"), i))
            files[ref.file] = ref
        if not self.content and self.source_url is None:
            raise BadRequest("an image needs content files or a source_url",
                             join(path, "content"))
        roles = {ref.role for ref in self.content}
        if self.content:
            for role in REQUIRED_ROLES[self.content_type]:
                if role not in roles:
                    raise BadRequest(f"content type {self.content_type!r} needs a content file "
                                     f"with role {role!r}", join(path, "content"))
        self._check_boot_mode(path, roles)
        if self.boot is not None and self.boot.readonly_disk and self.content \
                and "disk" not in roles:
            raise BadRequest("a read-only disk needs a content file with role 'disk'",
                             join(join(path, "boot"), "readonly_disk"))
        if self.backing_image is not None and self.content_type != "qcow2":
            raise BadRequest(f"a layered image is qcow2, not {self.content_type!r}",
                             join(path, "backing_image"))
        if self.boot is not None:
            for key in ("kernel", "initrd"):
                name = getattr(self.boot, key)
                if name is None:
                    continue
                where = join(join(path, "boot"), key)
                if name not in files:
                    raise BadRequest(f"{name!r} is not one of the content files", where)
                if files[name].role != key:
                    raise BadRequest(f"{name!r} has role {files[name].role!r}, not {key!r}",
                                     where)
        self._check_hardware(path)

    @property
    def boot_mode(self) -> str:
        """``kernel`` or ``bootloader``: as stated, else kernel when a content file has role
        kernel."""
        if self.boot is not None and self.boot.mode is not None:
            return self.boot.mode
        return "kernel" if any(ref.role == "kernel" for ref in self.content) else "bootloader"

    def _check_boot_mode(self, path: str, roles: set[str]) -> None:
        if self.boot is None or self.boot.mode is None:
            return
        where = join(join(path, "boot"), "mode")
        if self.boot.mode == "kernel":
            if self.content and "kernel" not in roles:
                raise BadRequest("boot mode 'kernel' needs a content file with role 'kernel'",
                                 where)
            return
        if self.boot.kernel or self.boot.initrd:
            raise BadRequest("boot mode 'bootloader' boots the disk itself: leave out "
                             "boot.kernel and boot.initrd (or use mode 'kernel')", where)
        if self.content_type not in ("qcow2", "raw"):
            raise BadRequest(f"boot mode 'bootloader' needs a qcow2 or raw disk, not content "
                             f"type {self.content_type!r}", where)

    def _check_hardware(self, path: str) -> None:
        if self.virtual_hardware and self.minimal_hardware:
            for key in ("vcpus", "memory_mib", "disk_gib"):
                default = getattr(self.virtual_hardware, key)
                least = getattr(self.minimal_hardware, key)
                if default is not None and least is not None and default < least:
                    raise BadRequest(f"{default} is below minimal_hardware.{key} {least}",
                                     join(join(path, "virtual_hardware"), key))


# --------------------------------------------------------------------------- semantic --------

@document
class OperatingSystem:
    """The guest operating system (Glance os_distro, os_version)."""

    distro: str | None = spec(None, pattern=r"[a-z0-9][a-z0-9._-]*",
                              hint="a lowercase distribution name like debian, ubuntu, rocky",
                              doc="distribution, lowercase (Glance os_distro)")
    version: str | None = spec(None, pattern=r"[0-9A-Za-z][0-9A-Za-z.+~_-]*",
                               hint="a version like 12 or 22.04", doc="release (Glance os_version)")
    family: Literal["linux", "windows", "bsd", "other"] | None = spec(None,
                                                                       doc="OS family")


@document
class Package:
    """An installed software package."""

    name: str = spec(check=_nonblank_problem, doc="package name")
    version: str | None = spec(None, doc="installed version")


@document
class ContainerRuntime:
    """The OCI runtime a VM image offers: CONTAINER jobs run their container image with it."""

    name: Literal["crun", "runc"] = spec(doc="the runtime (crun or runc: the OCI command line)")
    executable: str = spec(check=_absolute_path_problem, doc="its absolute path in the image")
    version: str | None = spec(None, doc="its version")


@document
class Semantic:
    """ViCE table III: what the image is for and what it contains."""

    execution_type: Literal["service", "job", "interactive"] | None = spec(
        None, doc="long-running service, batch job, or interactive session")
    user_interaction: Literal["none", "optional", "required"] | None = spec(
        None, doc="whether a user interacts while the image runs")
    user_interface: Literal["none", "cli", "gui", "web"] | None = spec(
        None, doc="how a user interacts")
    os: OperatingSystem | None = spec(None, doc="operating system")
    software: list[Package] = spec(default_factory=list, doc="installed packages with versions")
    service_dependencies: list[str] = spec(default_factory=list, check=_unique_problem,
                                           doc="services the image needs at run time")
    vos: list[str] = spec(default_factory=list, check=_unique_problem,
                          doc="virtual organisations the image is for; when set, only their "
                          "members (and the owner) see it")
    container_runtime: ContainerRuntime | None = spec(
        None, doc="the OCI runtime that runs CONTAINER jobs' container images in this image")


# --------------------------------------------------------------------------- IDB -------------

@document
class Application:
    """An application the image provides (UNICORE IDB entry)."""

    name: str = spec(pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*",
                     hint="an application name like python3 or CONTAINER",
                     doc="ApplicationName in a UNICORE job")
    version: str | None = spec(None, pattern=r"[0-9A-Za-z][0-9A-Za-z.+:~_-]*",
                               hint="a version like 3.11.2", doc="ApplicationVersion")
    executable: str | None = spec(None, check=_absolute_path_problem,
                                  doc="absolute path of the program in the guest")
    arguments: list[str] = spec(default_factory=list, doc="default arguments")
    environment: dict[str, str] = spec(default_factory=dict, doc="environment variables")
    description: str | None = spec(None, doc="free text")

    @property
    def parsed(self) -> Version | None:
        """``version`` as a comparable :class:`~image_repo.versions.Version`."""
        return Version(self.version) if self.version else None


@document
class ResourceLimits:
    """The most a job on this image may ask for; a missing limit is no limit."""

    cpus: int | None = spec(None, minimum=1, doc="most CPUs")
    memory_mib: int | None = spec(None, minimum=1, doc="most memory in MiB")
    disk_gib: int | None = spec(None, minimum=0, doc="most disk in GiB")
    runtime_s: int | None = spec(None, minimum=1, doc="longest run time in seconds")


@document
class Idb:
    """The image's IDB: applications and resource limits."""

    applications: list[Application] = spec(default_factory=list, doc="applications provided")
    resource_limits: ResourceLimits | None = spec(None, doc="most a job may ask for")

    def check(self, path: str) -> None:
        seen = set()
        for i, app in enumerate(self.applications):
            key = (app.name.lower(), app.version)
            if key in seen:
                label = f"{app.name} {app.version}" if app.version else app.name
                raise BadRequest(f"{label} is listed twice", join(join(path, "applications"), i))
            seen.add(key)


# --------------------------------------------------------------------------- TSI -------------

_PROPERTY_KEY = re.compile(r"[A-Za-z0-9._/-]{1,100}")


def _start_command_problem(argv: list[str]) -> str | None:
    if not 1 <= len(argv) <= 32:
        return f"expected 1 to 32 words (the program, then its arguments), got {len(argv)}"
    if _absolute_path_problem(argv[0]):
        return f"the program must be an absolute path, got {argv[0]!r}"
    for word in argv:
        if not word or len(word) > 1024 or any(c in word for c in "\0\n\r"):
            return f"each word is 1 to 1024 characters on one line, got {word[:40]!r}"
    return None


def _property_keys_problem(keys: dict[str, str]) -> str | None:
    for setting, key in keys.items():
        if setting not in OFFICIAL_PROPERTY_KEYS:
            return (f"unknown setting {setting!r}; settings are "
                    f"{', '.join(OFFICIAL_PROPERTY_KEYS)}")
        if not _PROPERTY_KEY.fullmatch(key):
            return f"{setting}: {key!r} is not a property key (letters, digits, . _ / -)"
    return None

@document
class TsiSetup:
    """How the TSI agent in the guest is set up."""

    protocol_version: str | None = spec(None, pattern=r"[0-9]+(\.[0-9]+)*",
                                        hint="a version like 10.1", doc="TSI protocol version")
    port: int | None = spec(None, minimum=1, maximum=65535, doc="port the agent listens on")
    tls_required: bool | None = spec(None, doc="the agent accepts only mutual-TLS connections")
    user: str | None = spec(None, pattern=r"[a-z_][a-z0-9_-]*", hint="a Unix user name",
                            doc="user jobs run as")
    group: str | None = spec(None, pattern=r"[a-z_][a-z0-9_-]*", hint="a Unix group name",
                             doc="group jobs run as")
    workdir_root: str | None = spec(None, check=_absolute_path_problem,
                                    doc="directory below which job directories are made")
    contextualization: Literal["gridvm", "cloud-init"] | None = spec(
        None, doc="how the agent gets into the guest: gridvm (the image starts gridvm's agent "
        "from its own files; default) or cloud-init (a NoCloud medium creates the job user "
        "and starts the agent it carries; the image needs cloud-init and python3)")
    boot_timeout_s: int | None = spec(None, minimum=1, maximum=3600,
                                      doc="longest the guest may take from start to the "
                                      "agent's first answer (default: the site's)")
    flavour: Literal["gridvm", "unicore"] | None = spec(
        None, doc="which TSI the image runs: gridvm (gridvm's agent, default) or unicore (a "
        "TSI of the image's own that speaks the UNICORE TSI protocol, configured by a "
        "tsi.properties file and started by start_command)")
    start_command: list[str] = spec(default_factory=list, check=_start_command_problem,
                                    doc="unicore: how the TSI is started, as argv (an absolute "
                                    "program first); the site appends the properties file's "
                                    "path. It must stay in the foreground")
    properties_file: str | None = spec(None, check=_absolute_path_problem,
                                       doc="unicore: where the TSI expects its properties; the "
                                       "site copies its file there first (default: the TSI "
                                       "reads it from the contextualization medium)")
    property_keys: dict[str, str] = spec(default_factory=dict,
                                         doc="unicore: key names that differ from the official "
                                         "TSI's (setting → key, e.g. my_port → tsi.my_port)")

    def check(self, path: str) -> None:
        unicore_only = ("start_command", "properties_file", "property_keys")
        problem = _property_keys_problem(self.property_keys)
        if problem:
            raise BadRequest(problem, join(path, "property_keys"))
        if self.flavour != "unicore":
            for key in unicore_only:
                if getattr(self, key):
                    raise BadRequest("is only for flavour 'unicore'", join(path, key))
            return
        if not self.start_command:
            raise BadRequest("flavour 'unicore' needs the command that starts the TSI",
                             join(path, "start_command"))
        if self.tls_required is False:
            raise BadRequest("flavour 'unicore' speaks mutual TLS with the instance's "
                             "certificate", join(path, "tls_required"))


# --------------------------------------------------------------------------- document --------

@document
class ImageMetadata:
    """A whole metadata document."""

    schema_version: Literal[1] = spec(SCHEMA_VERSION, doc="version of this schema (1)")
    general: General = spec(doc="ViCE table I")
    origin: Origin = spec(doc="ViCE table II")
    semantic: Semantic = spec(default_factory=Semantic, doc="ViCE table III")
    idb: Idb = spec(default_factory=Idb, doc="applications and resource limits")
    tsi: TsiSetup | None = spec(None, doc="TSI agent set-up")

    def check(self, path: str) -> None:
        if (self.semantic.container_runtime is not None
                and self.origin.content_type in CONTAINER_CONTENT_TYPES):
            raise BadRequest("a container image cannot offer a container runtime: a VM image "
                             "does", join(join(path, "semantic"), "container_runtime"))
        if self.tsi is None or self.tsi.contextualization != "cloud-init":
            return
        where = join(join(path, "tsi"), "contextualization")
        names = {p.name.lower() for p in self.semantic.software} | {
            a.name.lower() for a in self.idb.applications}
        for needed in ("cloud-init", "python3"):
            if needed not in names:
                raise BadRequest(f"contextualization 'cloud-init' starts the agent with python3 "
                                 f"through cloud-init: list {needed!r} in semantic.software "
                                 f"(or idb.applications)", where)
        if self.origin.runtime_technology == "container":
            raise BadRequest("contextualization 'cloud-init' is for virtual machines", where)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without empty or unset fields)."""
        return to_json(self)

    def copy(self) -> ImageMetadata:
        return copy.deepcopy(self)

    @property
    def files(self) -> dict[str, ContentRef]:
        return {ref.file: ref for ref in self.origin.content}


def validate(doc: Any) -> ImageMetadata:
    """Read a metadata document strictly; raises BadRequest naming the offending path."""
    return from_json(ImageMetadata, doc)


def content_digest(content: list[ContentRef]) -> str:
    """``origin.os_hash_value``: sha512 over one line per file, ``role file sha512 size``."""
    manifest = "".join(f"{r.role} {r.file} {r.sha512} {r.size}\n" for r in content)
    return hashlib.sha512(manifest.encode()).hexdigest()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


__all__ = [
    "ARCHITECTURES", "CONTENT_TYPES", "ROLES", "STATUSES", "Application", "Boot", "ContentRef",
    "Counters", "General", "Hardware", "Idb", "ImageMetadata", "OperatingSystem", "Origin",
    "Package", "Permissions", "Rating", "ResourceLimits", "Semantic", "TsiSetup",
    "content_digest", "merge_patch", "validate",
]
