"""Boot instances from images and know when their agent answers, or why it never will.

``VirtualMachineManager.boot(spec)`` stages the image (verified base files in the host
cache, a qcow2 overlay, a contextualization medium — as files here, or as volumes of the
host's storage pool, ``vmm.volumes``), creates the domain with isolated
user-mode networking and waits until the agent behind the forwarded port answers.  A boot
that fails ends with a reason code — ``BOOT_TIMEOUT``, ``GUEST_CRASHED`` (with the tail of
the console log), ``HYPERVISOR_ERROR``, ``IMAGE_UNAVAILABLE`` or
``IMAGE_CHECKSUM_MISMATCH`` — and leaves nothing behind: no domain, overlay, medium or
forwarded port.

Every domain records the site identity (``vmm.identity``); the manager adopts and destroys
only domains of its own identity whose name is exactly its prefix plus their instance id,
and leaves every other domain alone.  When the hypervisor connection comes back after a
loss, the domains of live instances are checked again (a vanished one is reported as a
stop), boots waiting for the connection go on, and destroys that failed are retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import libvirt
from twisted.application import service
from twisted.internet import defer, task, threads

from base.reasons import Reason
from vmm import context, injection, ports, snapshots
from vmm.consoles import ConsoleKeeper
from vmm.domain import (
    ChannelConfig,
    ClusterNicConfig,
    ControllerConfig,
    DiskConfig,
    DomainConfig,
    GridvmMetadata,
    MemballoonConfig,
    OSConfig,
    RngConfig,
    SerialFileConfig,
    UserNetConfig,
)
from vmm.errors import (
    BootTimeout,
    ForeignDomain,
    GuestCrashed,
    HypervisorError,
    ImageUnavailable,
    RestoreFailed,
    VMMError,
)
from vmm.hypervisor import DomainEvent, DomainState, Hypervisor, LifecycleEvent
from vmm.identity import load_or_create_site_id
from vmm.readiness import Probe, ProbeRace, line_probe
from vmm.restoring import SnapshotRestorer
from vmm.storage import BaseImageCache, create_overlay
from vmm.volumes import StoragePool

log = logging.getLogger(__name__)

DOMAIN_PREFIX = "gridvm-"
ROOT_DISK_SERIAL = "gridvm-root"


@dataclass(frozen=True)
class ImageFile:
    """A file of an image and the sha512 it must have."""

    path: Path
    sha512: str


@dataclass(frozen=True)
class BootSpec:
    """How an image boots: direct kernel boot, optionally with a root disk, or (no kernel)
    from a disk with its own bootloader."""

    kernel: ImageFile | None
    cmdline: str
    initrd: ImageFile | None = None
    disk: ImageFile | None = None
    disk_format: str = "qcow2"
    arch: str = "x86_64"
    #: the bases below a layered qcow2 ``disk``, lowest first (each verified and cached once)
    backing: tuple[ImageFile, ...] = ()
    #: the ``disk`` is attached read-only and shared (no overlay per instance)
    disk_readonly: bool = False

    def __post_init__(self) -> None:
        if self.kernel is None and self.disk is None:
            raise VMMError("an image without a kernel must have a disk to boot from",
                           reason=Reason.BAD_REQUEST)
        if self.disk_readonly and (self.disk is None or self.backing):
            raise VMMError("a read-only shared disk is one disk without layers below it",
                           reason=Reason.BAD_REQUEST)


@dataclass
class InstanceSpec:
    """One instance to boot: the image, its resources, its contextualization."""

    boot: BootSpec
    image: str = ""
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    vcpus: int = 1
    memory_mib: int = 256
    guest_port: int = 4433
    callback_port: int | None = None  #: the host port the guest's one guestfwd reaches
    host_port: int | None = None  #: the TSI forward on 127.0.0.1 (None: pick a free one)
    context_files: dict[str, bytes] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    host: str = ""  #: the hypervisor host placement chose ("": a one-host site's)
    #: a second NIC on a cluster's private switch (a node of a virtual cluster)
    cluster_nic: ClusterNicConfig | None = None
    boot_timeout: float = 120.0
    staging_timeout: float = 600.0
    probe: Probe | None = None
    #: told "booting" once staging is done, right before the domain is created; a Deferred it
    #: returns is waited for, and a failure (of either) ends the boot
    on_phase: Callable[[str], defer.Deferred | None] | None = None
    #: the guest runs gridvm's agent from the ``tsi/`` files of ``context_files``: it may be
    #: restored from a snapshot of its image and given them as its identity (vmm.snapshots)
    restorable: bool = False


@dataclass
class Instance:
    """A running (or adopted) instance as the VM manager knows it."""

    instance_id: str
    domain: str
    host_port: int
    callback_port: int | None
    directory: Path
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    greeting: str = ""
    address: str = "127.0.0.1"  #: where the TSI forward listens (the host's TSI address)
    started_by: str = "booted"  #: or "restored" (from a snapshot of its image)
    #: a restored guest's answer to its identity (None: booted)
    identity_ack: injection.IdentityAck | None = None

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    def console_tail(self, lines: int = 20) -> str:
        return console_tail(self.console_log, lines)


@dataclass
class AdoptedDomain:
    """A domain found at start-up: this site's own (``instance`` set) or only name-alike
    (another site's, or no gridvm domain at all: left alone)."""

    name: str
    state: DomainState
    instance: Instance | None


_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    text = _TERMINAL_ESCAPE.sub("", text.replace("\r", ""))  # systemd colours its status
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Staged:
    """An instance's files, ready for its domain (paths on its host)."""

    disks: list[DiskConfig]
    kernel: str | None
    initrd: str | None
    console: str


class VirtualMachineManager(service.Service):
    """Boots, tracks and removes the instances of one hypervisor connection.

    With a ``storage_pool`` the instance's files are volumes of that libvirt pool on the
    host (``vmm.volumes``), so that the host needs nothing but libvirtd; without, they are
    files in ``state_dir`` (the host is this machine).  ``address`` is where the host binds
    forwarded TSI ports, ``site_address`` where it reaches the site's callback listener.
    """

    name = "vmm"

    def __init__(self, hypervisor: Hypervisor, state_dir: Path, *, reactor=None,
                 prefix: str = DOMAIN_PREFIX, tb_cache_mib: int | None = 32,
                 probe_interval: float = 0.1, site_id: str | None = None,
                 destroy_timeout: float = 60.0, storage_pool: StoragePool | None = None,
                 address: str = "127.0.0.1", site_address: str = "127.0.0.1",
                 restore: bool = False):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.hypervisor = hypervisor
        self.state_dir = Path(state_dir)
        self.cache = BaseImageCache(self.state_dir / "cache")
        self.consoles = ConsoleKeeper(self.state_dir / "consoles")
        self.reactor = reactor
        self.prefix = prefix
        self.tb_cache_mib = tb_cache_mib
        self.probe_interval = probe_interval
        self.site_id = site_id or load_or_create_site_id(self.state_dir)
        self.destroy_timeout = destroy_timeout
        self.storage_pool = storage_pool
        self.address, self.site_address = address, site_address
        self.instances: dict[str, Instance] = {}
        self._undestroyed: set[str] = set()  #: instance ids whose destroy failed: retried
        #: restores instances from snapshots of their images (None: every instance boots)
        self.restorer = SnapshotRestorer(self) if restore else None
        hypervisor.add_reconnect_listener(self._after_reconnect)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Connect to the hypervisor; fires with the domains adopted from earlier runs."""
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> list[AdoptedDomain]:
        for sub in ("cache", "instances"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)
        await self.hypervisor.connect()
        return await self.adopt()

    def stopService(self):
        super().stopService()
        d = self.restorer.stop() if self.restorer is not None else defer.succeed(None)
        d.addBoth(lambda _: self.hypervisor.close())
        return d

    def instance_dir(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / instance_id

    def console_text(self, instance_id: str) -> str | None:
        """The end of the instance's console log, live or kept after it ended (None if the
        site never had one)."""
        data = self.consoles.read(instance_id, self.instance_dir(instance_id) / "console.log")
        return None if data is None else data.decode("utf-8", "replace").replace("\r", "")

    def _remove_directory(self, directory: Path) -> None:
        """Remove an instance's directory, its console log kept."""
        self.consoles.keep(directory.name, directory / "console.log")
        shutil.rmtree(directory, ignore_errors=True)

    def domain_name(self, instance_id: str) -> str:
        return f"{self.prefix}{instance_id}"

    # -- boot ------------------------------------------------------------------------------
    def boot(self, spec: InstanceSpec) -> defer.Deferred:
        """Fires with the :class:`Instance` once its agent answers; fails with a VMMError."""
        return defer.Deferred.fromCoroutine(self._boot(spec))

    async def _boot(self, spec: InstanceSpec) -> Instance:
        """Restore the instance from a snapshot of its image when there is one, else (or
        when the restore fails: the reason is logged) boot it."""
        announced = False
        if self.restorer is not None:
            try:
                snapshot = await self.restorer.usable(spec)
            except (VMMError, OSError) as err:
                log.warning("%s: no snapshot for %s (%s): booting it", Reason.RESTORE_FAILED,
                            self.domain_name(spec.instance_id), err)
                snapshot = None
            if snapshot is not None:
                phases: list[str] = []
                try:
                    return await self.restorer.restore(spec, snapshot, phases)
                except RestoreFailed as err:
                    log.warning("%s: restoring %s from snapshot %s failed, booting it "
                                "instead: %s", err.reason, self.domain_name(spec.instance_id),
                                snapshot.key, err)
                    self.restorer.failed(snapshot, err)
                announced = bool(phases)
        return await self._cold_boot(spec, announced)

    async def _cold_boot(self, spec: InstanceSpec, announced: bool = False) -> Instance:
        """``announced``: ``spec.on_phase`` was told "booting" already (by a restore)."""
        started = time.monotonic()
        name = self.domain_name(spec.instance_id)
        directory = self.instance_dir(spec.instance_id)
        timings: dict[str, float] = {}
        try:
            directory.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise VMMError(f"instance {spec.instance_id} exists already",
                           reason=Reason.BAD_REQUEST) from None
        directory.chmod(0o755)
        created = False
        try:
            staging = self._staging(spec, name, directory, started)
            staging.addTimeout(spec.staging_timeout, self.reactor)
            try:
                staged = await staging
            except defer.TimeoutError:
                raise ImageUnavailable(
                    f"staging the image took longer than {spec.staging_timeout:g} s") from None
            timings["staging"] = time.monotonic() - started
            if spec.on_phase is not None and not announced:
                await defer.maybeDeferred(spec.on_phase, "booting")
            # the hypervisor may be reconnecting: wait for it within the staging deadline
            await self.hypervisor.wait_connected(
                spec.staging_timeout - (time.monotonic() - started))

            mark = time.monotonic()
            _config, host_port = await self._create(spec, name, directory, staged)
            created = True
            timings["create"] = time.monotonic() - mark

            mark = time.monotonic()
            instance = Instance(
                instance_id=spec.instance_id, domain=name, host_port=host_port,
                callback_port=spec.callback_port, directory=directory, image=spec.image,
                labels=dict(spec.labels), created=time.time(), timings=timings,
                address=self.address,
            )
            deadline = started + spec.boot_timeout
            instance.greeting = await self._wait_ready(instance, spec, deadline)
            timings["ready"] = time.monotonic() - mark
            timings["total"] = time.monotonic() - started
        except BaseException as err:
            await self._discard(name, directory, created)
            if isinstance(err, VMMError | defer.CancelledError):
                raise
            raise VMMError(f"boot of {name} failed: {err}") from err
        self.instances[spec.instance_id] = instance
        log.info("instance %s ready in %.2f s (%s)", name, timings["total"],
                 ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
        return instance

    def _staging(self, spec: InstanceSpec, name: str, directory: Path,
                 started: float) -> defer.Deferred:
        """Stage the instance's files: in a thread as local files, or on the host's worker
        thread as volumes of its pool (once the connection is there)."""
        if self.storage_pool is None:
            return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                             self._stage, spec, directory)
        pool = self.storage_pool

        async def stage() -> Staged:
            await self.hypervisor.wait_connected(
                spec.staging_timeout - (time.monotonic() - started))
            return await self.hypervisor.run(
                lambda conn: self._stage_volumes(conn, pool, spec, name, directory))

        return defer.Deferred.fromCoroutine(stage())

    def _stage(self, spec: InstanceSpec, directory: Path) -> Staged:
        """Blocking: cache the base files, create the overlay and the medium."""
        boot = spec.boot
        kernel = self.cache.ensure(boot.kernel.path, boot.kernel.sha512) if boot.kernel else None
        initrd = self.cache.ensure(boot.initrd.path, boot.initrd.sha512) if boot.initrd else None
        overlay = medium = None
        if boot.disk is not None:
            if boot.backing:
                base = self.cache.ensure_chain([(f.path, f.sha512)
                                                for f in (*boot.backing, boot.disk)])
            else:
                base = self.cache.ensure(boot.disk.path, boot.disk.sha512)
            overlay = base if boot.disk_readonly else create_overlay(
                base, directory / "overlay.qcow2", boot.disk_format)
        if spec.context_files:
            medium = context.build_medium(spec.context_files, directory / "context.iso")
        return Staged(_disks(overlay, medium, boot), kernel and str(kernel),
                      initrd and str(initrd), str(directory / "console.log"))

    def _stage_volumes(self, conn: libvirt.virConnect, pool: StoragePool, spec: InstanceSpec,
                       name: str, directory: Path) -> Staged:
        """Worker thread: upload what the host lacks, make the instance's own volumes."""
        boot = spec.boot
        kernel = pool.base(conn, boot.kernel.path, boot.kernel.sha512) if boot.kernel else None
        initrd = pool.base(conn, boot.initrd.path, boot.initrd.sha512) if boot.initrd else None
        overlay = medium = None
        if boot.disk is not None:
            if boot.backing:  # verified and checked as a chain here, then each uploaded
                chain = (*boot.backing, boot.disk)
                self.cache.ensure_chain([(f.path, f.sha512) for f in chain])
                base = pool.base(conn, self.cache.path_for(chain[0].sha512), chain[0].sha512)
                for member in chain[1:]:
                    base = pool.layer(conn, self.cache.path_for(member.sha512), member.sha512,
                                      base, directory)
            else:
                base = pool.base(conn, boot.disk.path, boot.disk.sha512)
            overlay = base if boot.disk_readonly else pool.overlay(conn, name, base,
                                                                   boot.disk_format)
        if spec.context_files:
            local = context.build_medium(spec.context_files, directory / "context.iso")
            medium = pool.upload(conn, name, "-context.iso", local)
        return Staged(_disks(overlay, medium, boot), kernel, initrd, pool.console(conn, name))

    def domain_config(self, spec: InstanceSpec, name: str, directory: Path,
                      disks: list[DiskConfig], kernel: Path | str | None,
                      initrd: Path | str | None, host_port: int,
                      console: str | None = None) -> DomainConfig:
        """``console``: the console log's path on the host (default: in ``directory``)."""
        if kernel is None:  # the disk's own bootloader
            os_config = OSConfig(arch=spec.boot.arch, boot_devices=["hd"])
        else:
            os_config = OSConfig(arch=spec.boot.arch, kernel=str(kernel),
                                 initrd=str(initrd) if initrd else None,
                                 cmdline=spec.boot.cmdline)
        return DomainConfig(
            name=name,
            memory_kib=spec.memory_mib * 1024,
            vcpus=spec.vcpus,
            os=os_config,
            tb_cache_mib=self.tb_cache_mib,
            devices=[*disks, SerialFileConfig(path=console or str(directory / "console.log")),
                     RngConfig(), MemballoonConfig("virtio", free_page_reporting=True),
                     ControllerConfig("usb", "none")],
            network=UserNetConfig(host_port=host_port, guest_port=spec.guest_port,
                                  callback_port=spec.callback_port,
                                  host_address=self.address,
                                  callback_address=self.site_address),
            extra_qemu_args=spec.cluster_nic.qemu_args() if spec.cluster_nic else [],
            metadata=GridvmMetadata(instance_id=spec.instance_id, site=self.site_id,
                                    image=spec.image,
                                    state_dir=str(directory), created=time.time(),
                                    host_port=host_port, callback_port=spec.callback_port or 0,
                                    labels=dict(spec.labels)),
        )

    def snapshot_domain_config(self, spec: InstanceSpec, name: str, directory: Path,
                               staged: Staged, host_port: int, domain_uuid: str
                               ) -> DomainConfig:
        """The domain of a snapshot's template or of an instance restored from it: the
        instance's domain with a fixed uuid and the identity channel."""
        config = self.domain_config(spec, name, directory, staged.disks, staged.kernel,
                                    staged.initrd, host_port, staged.console)
        config.uuid = domain_uuid
        config.devices.append(ChannelConfig(path=str(directory / "identity.sock"),
                                            name=snapshots.IDENTITY_CHANNEL))
        return config

    def hardware_digest(self, spec: InstanceSpec) -> str:
        """sha256 of the snapshot domain's XML with placeholders for its per-instance
        parts (name, uuid, paths, ports, metadata)."""
        placeholder = Path("/instance")
        boot = spec.boot
        staged = Staged(_disks(placeholder / "overlay.qcow2" if boot.disk else None,
                               placeholder / "context.iso", boot),
                        "kernel" if boot.kernel else None, "initrd" if boot.initrd else None,
                        str(placeholder / "console.log"))
        config = self.snapshot_domain_config(replace(spec, callback_port=None), "instance",
                                             placeholder, staged, 0, "")
        config.metadata = None
        return hashlib.sha256(config.to_xml().encode()).hexdigest()

    async def _create(self, spec, name, directory, staged: Staged):
        last_error: Exception | None = None
        for _attempt in range(1 if spec.host_port else 3):
            host_port = spec.host_port or ports.free_port(self.address)
            config = self.domain_config(spec, name, directory, staged.disks, staged.kernel,
                                        staged.initrd, host_port, staged.console)
            try:
                await self.hypervisor.create(config)
                return config, host_port
            except HypervisorError as err:
                last_error = err
                if "forwarding rule" not in str(err):  # lost the race for the port: retry
                    raise
        raise HypervisorError(f"no free port for the TSI forward: {last_error}")

    async def _wait_ready(self, instance: Instance, spec: InstanceSpec, deadline: float,
                          race: int = 64) -> str:
        """``race``: probe attempts at once (a booting guest's network may swallow the
        first ones; a restored guest's agent listens already: one at a time)."""
        probe = spec.probe or line_probe(self.reactor)
        stopped: list[DomainEvent] = []

        def on_event(event: DomainEvent) -> None:
            if event.stopped:
                stopped.append(event)

        attempts = ProbeRace(self.reactor, probe, self.address, instance.host_port,
                             interval=self.probe_interval, limit=race)

        async def still_booting() -> None:
            if stopped:
                await self._fetch_console(instance.domain, instance.directory)
                raise self._crashed(instance, "the guest stopped while booting")
            try:
                state = await self.hypervisor.state(instance.domain)
            except HypervisorError:
                if self.hypervisor.connected:
                    raise
                state = DomainState.RUNNING  # reconnecting: the boot deadline still holds
            if not state.alive:
                await self._fetch_console(instance.domain, instance.directory)
                raise self._crashed(instance, f"the guest is {state.name.lower()}")
            if time.monotonic() >= deadline:
                await self._fetch_console(instance.domain, instance.directory)
                raise BootTimeout(
                    f"the agent in {instance.domain} did not answer within "
                    f"{spec.boot_timeout:g} s ({attempts.last_failure}); console: "
                    f"{_one_line(instance.console_tail(5))}")

        unwatch = self.watch(instance.instance_id, on_event)
        try:
            return await attempts.run(still_booting)
        finally:
            unwatch()

    def _crashed(self, instance: Instance, what: str) -> GuestCrashed:
        return GuestCrashed(f"{what}; console: {crash_summary(instance.console_tail(200))}")

    async def _discard(self, name: str, directory: Path, created: bool) -> None:
        try:
            if created:
                await self.hypervisor.destroy(name)
            await self._remove_volumes(name, directory)
        except HypervisorError:
            log.exception("could not destroy %s after a failed boot", name)
        self._remove_directory(directory)

    async def _fetch_console(self, name: str, directory: Path) -> None:
        """Copy the end of a console log volume into the instance's directory (local
        files need nothing: QEMU writes there)."""
        pool = self.storage_pool
        if pool is None:
            return
        try:
            data = await self.hypervisor.run(lambda conn: pool.console_tail(conn, name))
        except HypervisorError as err:
            log.warning("could not read the console of %s: %s", name, err)
            return
        with contextlib.suppress(OSError):
            (directory / "console.log").write_bytes(data)

    async def _remove_volumes(self, name: str, directory: Path) -> None:
        """After its domain is gone: keep the end of the console, delete the instance's
        volumes (no pool: its files go with its directory)."""
        pool = self.storage_pool
        if pool is not None:
            await self._fetch_console(name, directory)
            await self.hypervisor.run(lambda conn: pool.remove_instance(conn, name))

    # -- events --------------------------------------------------------------------------
    def watch(self, instance_id: str, callback: Callable[[DomainEvent], None]
              ) -> Callable[[], None]:
        """Hand ``callback`` every lifecycle event of the instance's domain, on the reactor
        thread, from now on; returns the call that ends the subscription (harmless twice)."""
        domain = self.domain_name(instance_id)

        def on_event(event: DomainEvent) -> None:
            if event.domain == domain:
                callback(event)

        self.hypervisor.add_listener(on_event)
        return lambda: self.hypervisor.remove_listener(on_event)

    def console_tail(self, instance_id: str, lines: int = 5) -> str:
        """The last lines of an instance's console, also while it boots."""
        return console_tail(self.instance_dir(instance_id) / "console.log", lines)

    # -- the end of an instance ----------------------------------------------------------
    def destroy(self, instance_id: str) -> defer.Deferred:
        """Stop the domain at once and remove everything the instance had on this host."""
        return defer.Deferred.fromCoroutine(self._destroy(instance_id))

    async def _destroy(self, instance_id: str) -> None:
        """Retried (also across a reconnection) until the domain is gone, for
        ``destroy_timeout`` seconds; then it fails, and is retried after the next
        reconnection."""
        name = self.domain_name(instance_id)
        deadline = self.reactor.seconds() + self.destroy_timeout
        delay = 0.5
        while True:
            try:
                await self.hypervisor.wait_connected(deadline - self.reactor.seconds())
                if await self._destroy_own(name):
                    await self._remove_volumes(name, self.instance_dir(instance_id))
                break
            except HypervisorError as err:
                if self.reactor.seconds() + delay >= deadline:
                    self._undestroyed.add(instance_id)
                    raise HypervisorError(f"could not destroy {name} within "
                                          f"{self.destroy_timeout:g} s: {err}") from err
                log.warning("destroying %s failed (%s): again in %g s", name, err, delay)
                await task.deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, 5.0)
        self._undestroyed.discard(instance_id)
        self.instances.pop(instance_id, None)
        self._remove_directory(self.instance_dir(instance_id))

    async def _destroy_own(self, name: str) -> bool:
        """Destroy ``name`` if it is this site's (True); done only once the domain has
        stopped."""
        try:
            await self.hypervisor.destroy(name, site=self.site_id)
        except ForeignDomain as err:
            log.warning("leaving alone %s: %s", name, err)
            return False
        state = await self.hypervisor.state(name)
        if state.alive:
            raise HypervisorError(f"{name} is still {state.name.lower()} after its destroy")
        return True

    @property
    def undestroyed(self) -> frozenset[str]:
        """The instances whose destroy failed: retried after the next reconnection."""
        return frozenset(self._undestroyed)

    def _after_reconnect(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._recheck())

    async def _recheck(self) -> None:
        """After a reconnection: report instances whose domain stopped or vanished while
        the connection was down (events of that time are lost), retry failed destroys."""
        for instance in list(self.instances.values()):
            try:
                state = await self.hypervisor.state(instance.domain)
            except HypervisorError as err:
                log.warning("re-checking %s after reconnecting: %s", instance.domain, err)
                continue
            if not state.alive:
                log.warning("%s is %s after reconnecting", instance.domain, state.name.lower())
                self.hypervisor.dispatch(DomainEvent(
                    instance.domain, LifecycleEvent.STOPPED, _STOPPED_FAILED))
        for instance_id in sorted(self._undestroyed):
            try:
                await self._destroy(instance_id)
                log.info("destroyed %s after reconnecting", self.domain_name(instance_id))
            except HypervisorError as err:
                log.warning("retrying the destroy of %s: %s", instance_id, err)

    def state(self, instance_id: str) -> defer.Deferred:
        return self.hypervisor.state(self.domain_name(instance_id))

    # -- adoption ------------------------------------------------------------------------
    def adopt(self) -> defer.Deferred:
        """Find the domains gridvm created earlier (name prefix + gridvm metadata)."""
        return defer.Deferred.fromCoroutine(self._adopt())

    async def _adopt(self) -> list[AdoptedDomain]:
        found: list[AdoptedDomain] = []
        for name, config, state in await self.hypervisor.list_domains(self.prefix):
            meta = config.metadata
            if meta is None or not meta.instance_id or meta.site != self.site_id or \
                    name != self.domain_name(meta.instance_id):
                log.warning("leaving alone domain %s: not this site's (site %s)", name,
                            (meta.site if meta else "") or "unrecorded")
                found.append(AdoptedDomain(name, state, None))
                continue
            instance = Instance(
                instance_id=meta.instance_id, domain=name, host_port=meta.host_port,
                callback_port=meta.callback_port or None,
                directory=Path(meta.state_dir) if meta.state_dir
                else self.instance_dir(meta.instance_id),
                image=meta.image, labels=dict(meta.labels), created=meta.created,
                address=self.address,
            )
            if state.alive:
                self.instances[meta.instance_id] = instance
            found.append(AdoptedDomain(name, state, instance))
            log.info("adopted %s (%s, TSI on %s:%d)", name, state.name.lower(),
                     instance.address, instance.host_port)
        return found

    def remove_stale_directories(self) -> list[str]:
        """Remove instance directories that no known instance owns; returns their ids."""
        removed = []
        root = self.state_dir / "instances"
        for entry in root.iterdir() if root.exists() else []:
            if entry.is_dir() and entry.name not in self.instances:
                self._remove_directory(entry)
                removed.append(entry.name)
        return removed


def _disks(root: Path | str | None, medium: Path | str | None,
           boot: BootSpec | None = None) -> list[DiskConfig]:
    """The root disk (the instance's overlay, or the image's read-only shared disk when
    ``boot`` says so) and the contextualization medium, in this order."""
    disks: list[DiskConfig] = []
    targets = iter(("vda", "vdb", "vdc"))
    if root is not None and boot is not None and boot.disk_readonly:
        disks.append(DiskConfig(source=str(root), target=next(targets),
                                driver_type=boot.disk_format, serial=ROOT_DISK_SERIAL,
                                readonly=True, shareable=True))
    elif root is not None:
        disks.append(DiskConfig(source=str(root), target=next(targets),
                                serial=ROOT_DISK_SERIAL, cache="unsafe"))
    if medium is not None:
        disks.append(DiskConfig(source=str(medium), target=next(targets), driver_type="raw",
                                serial=context.SERIAL, readonly=True))
    return disks


#: how a domain that vanished while the connection was down is reported
_STOPPED_FAILED = libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED

_CRASH_MARKERS = ("Kernel panic", "Oops", "BUG:", "Traceback", "gridvm loader:")


def crash_summary(console: str, lines: int = 8) -> str:
    """One line saying why a guest died: the kernel's panic line if there is one (its
    stack trace after it says little to a user), else the last lines of the console."""
    for line in console.splitlines():
        if any(marker in line for marker in _CRASH_MARKERS):
            return _one_line(re.sub(r"^\[\s*[\d.]+\]\s*", "", line))
    return _one_line("\n".join(console.splitlines()[-lines:]))


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-600:]
