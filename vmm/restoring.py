"""Cold start by restore: instances brought up from a memory snapshot of their image.

``SnapshotRestorer.usable(spec)`` finds the snapshot of a restorable instance's key (out-of-
date snapshots of the same image and hardware are deleted); with none, one is built in the
background (one build at a time, with a deadline) and the instance boots.
``restore(spec, snapshot)`` restores a new domain from the snapshot through a FIFO
(``vmm.snapshots``) and injects the instance's identity over the identity channel
(``vmm.injection``); the agent's ack, sent once it listens, is its readiness (no probe).
A restore that fails raises
``RestoreFailed`` having removed what it made; the VM manager then boots the instance.
libvirt calls that take long (restore, save) run in threads on connections of their own,
so that concurrent restores do not queue behind one another on the manager's connection.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt
from twisted.internet import defer, threads
from twisted.python import failure

from base.reasons import Reason
from vmm import ports
from vmm.errors import BootTimeout, DamagedSnapshot, GuestCrashed, RestoreFailed, VMMError
from vmm.injection import Identity, inject
from vmm.snapshots import (
    AWAIT_IDENTITY_FILE,
    QUIESCENT_LINE,
    SaveFeeder,
    Snapshot,
    SnapshotKey,
    SnapshotStore,
    copy_sparse,
    guest_sources_digest,
    identity_replacements,
)

if TYPE_CHECKING:
    from vmm.manager import Instance, InstanceSpec, Staged, VirtualMachineManager

log = logging.getLogger(__name__)

#: the context files a restored guest can take as its identity (the rest is read at boot)
IDENTITY_PREFIX = "tsi/"
AGENT_CONFIG = "tsi/agent.conf"
#: the translation cache of restored instances: within its first job a restored guest
#: translates ~43 MB of code (identity, TLS handshakes, SUBMIT), which flushed the 32 MiB cache
#: of booted instances twice on the way (``bench/restore.py``)
RESTORED_TB_CACHE_MIB = 64
#: seconds before a snapshot whose build failed is built again
RETRY_FAILED_BUILD = 600.0


class SnapshotRestorer:
    """The snapshots of one VM manager's instances, and their restores."""

    def __init__(self, manager: VirtualMachineManager, *, build_timeout: float = 180.0,
                 identity_timeout: float = 15.0):
        self.manager = manager
        self.store = SnapshotStore(manager.state_dir / "snapshots")
        self.build_timeout, self.identity_timeout = build_timeout, identity_timeout
        self.builds: dict[str, defer.Deferred] = {}  #: key digest -> build in progress
        self._build_lock = defer.DeferredLock()
        self._versions: tuple[int, int] | None = None
        self._sources = guest_sources_digest()
        self._told_why_not: set[str] = set()
        self._failed_builds: dict[str, float] = {}  #: key digest -> when its build failed
        #: the template domain being booted and saved now, if any
        self.building_domain: str | None = None
        #: probe a restored agent after its ack too (what was done before the ack counted
        #: as readiness; bench/restore.py measures both in one run)
        self.probe_after_ack = False
        #: the TCG translation cache of a restored domain (None: the VM manager's); a restored
        #: guest translates its whole cold path at once, more than a booted one keeps hot
        self.tb_cache_mib: int | None = RESTORED_TB_CACHE_MIB

    # -- which snapshot --------------------------------------------------------------------
    def why_not_restorable(self, spec: InstanceSpec) -> str:
        """Why the instance must boot ("" if it may be restored)."""
        if not spec.restorable:
            return "its image's TSI or contextualization cannot take an identity after start"
        if not self.manager.hypervisor.uri.startswith("qemu"):
            return "its hypervisor is not QEMU"
        if self.manager.storage_pool is not None:
            return "its host keeps instance files as volumes of a storage pool"
        if spec.cluster_nic is not None:
            return "it is a node of a virtual cluster"
        if AGENT_CONFIG not in spec.context_files:
            return f"its medium has no {AGENT_CONFIG}"
        boot_time = sorted(p for p in spec.context_files if not p.startswith(IDENTITY_PREFIX))
        if boot_time:
            return f"its guest reads {', '.join(boot_time[:3])} at boot"
        return ""

    async def key(self, spec: InstanceSpec) -> tuple[SnapshotKey, str]:
        """The instance's snapshot key and slot (what one snapshot at a time is kept for)."""
        if self._versions is None:
            self._versions = await self.manager.hypervisor.run(
                lambda conn: (conn.getVersion(), conn.getLibVersion()))
        boot = spec.boot
        files = tuple(f.sha512 for f in (boot.kernel, boot.initrd, *boot.backing, boot.disk)
                      if f is not None)
        key = SnapshotKey(
            image_files=files, guest_sources=self._sources, qemu_version=self._versions[0],
            libvirt_version=self._versions[1], memory_mib=spec.memory_mib, vcpus=spec.vcpus,
            machine="pc", domain_xml=self.manager.hardware_digest(spec))
        slot = f"{spec.image or files[0][:16]}/{spec.memory_mib}MiB/{spec.vcpus}cpu"
        return key, slot

    async def usable(self, spec: InstanceSpec) -> Snapshot | None:
        """The snapshot to restore ``spec`` from, or None (it boots; a snapshot for the
        instances after it is then built in the background)."""
        why = self.why_not_restorable(spec)
        if why:
            if spec.restorable and spec.image not in self._told_why_not:
                self._told_why_not.add(spec.image)
                log.info("instances of %s boot rather than restore: %s", spec.image, why)
            return None
        key, slot = await self.key(spec)
        await threads.deferToThread(self.store.invalidate, slot, key.digest)
        snapshot = self.store.find(key.digest)
        if snapshot is None:
            self.build_in_background(spec, key, slot)
            return None
        if len(snapshot.name) != len(self.manager.domain_name(spec.instance_id)):
            log.info("instance %s boots: its domain name is not as long as snapshot %s's",
                     spec.instance_id, snapshot.key)
            return None
        return snapshot

    def failed(self, snapshot: Snapshot, err: RestoreFailed) -> None:
        """A restore from ``snapshot`` failed: a damaged save file is dropped (and built
        anew for the next instance)."""
        if isinstance(err, DamagedSnapshot):
            log.warning("dropping snapshot %s after a failed restore", snapshot.key)
            self.store.delete(snapshot.key)

    # -- building ----------------------------------------------------------------------------
    def build_in_background(self, spec: InstanceSpec, key: SnapshotKey, slot: str) -> None:
        """Build the snapshot of ``key`` after the builds before it; a key whose build
        failed is tried again only after ``RETRY_FAILED_BUILD`` seconds."""
        failed_at = self._failed_builds.get(key.digest)
        if key.digest in self.builds or (
                failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_BUILD):
            return
        d = self._build_lock.run(self.build, spec, key, slot)
        self.builds[key.digest] = d

        def done(result):
            self.builds.pop(key.digest, None)
            if isinstance(result, failure.Failure):
                self._failed_builds[key.digest] = time.monotonic()
                log.warning("building snapshot %s of %s failed: %s", key.digest, slot,
                            result.getErrorMessage())
            return None

        d.addBoth(done)

    def build(self, spec: InstanceSpec, key: SnapshotKey, slot: str) -> defer.Deferred:
        """Fires with the :class:`Snapshot` of ``key`` once built (at once if there is)."""
        return defer.Deferred.fromCoroutine(self._build(spec, key, slot))

    async def _build(self, spec: InstanceSpec, key: SnapshotKey, slot: str) -> Snapshot:
        existing = self.store.find(key.digest)
        if existing is not None:
            return existing
        from vmm.manager import InstanceSpec as Spec

        manager = self.manager
        started = time.monotonic()
        template_id = ("s" + uuid.uuid4().hex)[:len(spec.instance_id)]
        template = Spec(boot=_template_boot(spec.boot), image=spec.image,
                        instance_id=template_id,
                        vcpus=spec.vcpus, memory_mib=spec.memory_mib, guest_port=spec.guest_port,
                        context_files={AWAIT_IDENTITY_FILE: b"1\n"},
                        labels={"snapshot": key.digest})
        name = manager.domain_name(template_id)
        directory = manager.instance_dir(template_id)
        directory.mkdir(parents=True, mode=0o755)
        building = self.store.building(key.digest)
        domain_uuid = str(uuid.uuid4())
        created = False
        try:
            staged = await threads.deferToThread(manager._stage, template, directory)
            config = manager.snapshot_domain_config(template, name, directory, staged,
                                                    ports.free_port(manager.address),
                                                    domain_uuid)
            created = True
            self.building_domain = name
            await manager.hypervisor.create(config)
            await self._wait_quiescent(name, directory, started + self.build_timeout)
            save = building / "memory.save"
            await threads.deferToThread(self._with_connection,
                                        lambda conn: conn.lookupByName(name).save(str(save)))
            created = False  # saving stopped it
            await threads.deferToThread(self._keep_files, directory, building, staged)
            snapshot = self.store.commit(building, key.digest, slot, name, domain_uuid)
        finally:
            self.building_domain = None
            if created:
                await manager.hypervisor.destroy(name)
            shutil.rmtree(building, ignore_errors=True)
            manager._remove_directory(directory)
        log.info("snapshot %s of %s built in %.1f s (%d MB saved)", key.digest, slot,
                 time.monotonic() - started, snapshot.save_bytes // 1_000_000)
        return snapshot

    def stop(self) -> defer.Deferred:
        """Destroy the template of a build under way (the site stops: it would be left
        running until the next start found it an orphan)."""
        name = self.building_domain
        if name is None:
            return defer.succeed(None)
        log.info("stopping: destroying snapshot template %s", name)
        d = self.manager.hypervisor.destroy(name)
        d.addErrback(lambda f: log.warning("destroying snapshot template %s: %s", name,
                                           f.getErrorMessage()))
        return d

    @staticmethod
    def _keep_files(directory: Path, building: Path, staged: Staged) -> None:
        if (directory / "overlay.qcow2").exists():
            copy_sparse(directory / "overlay.qcow2", building / "disk.qcow2")
        shutil.copyfile(directory / "context.iso", building / "medium.iso")

    async def _wait_quiescent(self, name: str, directory: Path, deadline: float) -> None:
        manager = self.manager
        while True:
            if QUIESCENT_LINE in manager.console_tail(directory.name, 20):
                return
            state = await manager.hypervisor.state(name)
            if not state.alive:
                raise GuestCrashed(f"the snapshot template {name} stopped: "
                                   f"{manager.console_tail(directory.name, 5)}")
            if time.monotonic() >= deadline:
                raise BootTimeout(f"the snapshot template {name} did not reach its quiescent "
                                  f"point within {self.build_timeout:g} s")
            await _sleep(manager.reactor, 0.2)

    def _with_connection(self, fn):
        """Blocking: ``fn(connection)`` on a connection of its own."""
        try:
            conn = libvirt.open(self.manager.hypervisor.uri)
        except libvirt.libvirtError as err:
            raise RestoreFailed(f"libvirt: {err.get_error_message()}") from None
        try:
            return fn(conn)
        except libvirt.libvirtError as err:
            raise RestoreFailed(f"libvirt: {err.get_error_message()}") from None
        finally:
            conn.close()

    # -- restoring ---------------------------------------------------------------------------
    def restore(self, spec: InstanceSpec, snapshot: Snapshot,
                phases: list[str]) -> defer.Deferred:
        """Fires with the ready :class:`Instance`; fails with ``RestoreFailed`` (nothing
        left behind) or, when ``spec.on_phase`` fails, with its error."""
        return defer.Deferred.fromCoroutine(self._restore(spec, snapshot, phases))

    async def _restore(self, spec: InstanceSpec, snapshot: Snapshot,
                       phases: list[str]) -> Instance:
        from vmm.manager import Instance

        manager = self.manager
        started = time.monotonic()
        name = manager.domain_name(spec.instance_id)
        directory = manager.instance_dir(spec.instance_id)
        try:
            directory.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise VMMError(f"instance {spec.instance_id} exists already",
                           reason=Reason.BAD_REQUEST) from None
        directory.chmod(0o755)
        timings: dict[str, float] = {}
        created = phase_failed = False
        try:
            staged = await threads.deferToThread(self._stage, spec, snapshot, directory)
            timings["staging"] = time.monotonic() - started
            if spec.on_phase is not None:
                phases.append("booting")
                phase_failed = True
                await defer.maybeDeferred(spec.on_phase, "booting")
                phase_failed = False
            host_port = spec.host_port or ports.free_port(manager.address)
            config = manager.snapshot_domain_config(spec, name, directory, staged, host_port,
                                                    str(uuid.uuid4()))
            if self.tb_cache_mib and config.tb_cache_mib:  # TCG: not part of the guest ABI
                config.tb_cache_mib = self.tb_cache_mib
            mark = time.monotonic()
            created = True
            await threads.deferToThread(self._restore_domain, snapshot, config, directory)
            timings["restore"] = time.monotonic() - mark
            mark = time.monotonic()
            identity = Identity(spec.instance_id, dict(spec.context_files),
                                hostname=f"gridvm-{spec.instance_id}"[:63])
            ack = await threads.deferToThread(inject, directory / "identity.sock", identity,
                                              self.identity_timeout)
            timings["identity"] = time.monotonic() - mark
            timings["total"] = time.monotonic() - started
            # The ack is the readiness: the agent sends it once it listens with the new
            # identity, so no probe's TLS handshake goes before the site's TSI link's.
            instance = Instance(
                instance_id=spec.instance_id, domain=name, host_port=host_port,
                callback_port=spec.callback_port, directory=directory, image=spec.image,
                labels=dict(spec.labels), created=time.time(), timings=timings,
                address=manager.address, started_by="restored", identity_ack=ack,
                greeting=f"ok {ack.instance_id}")
            if self.probe_after_ack:
                mark = time.monotonic()
                instance.greeting = await manager._wait_ready(
                    instance, spec, started + spec.boot_timeout, race=1)
                timings["ready"] = time.monotonic() - mark
                timings["total"] = time.monotonic() - started
        except BaseException as err:
            await manager._discard(name, directory, created)
            if phase_failed or isinstance(err, RestoreFailed | defer.CancelledError):
                raise
            raise RestoreFailed(f"{type(err).__name__}: {err}") from err
        manager.instances[spec.instance_id] = instance
        log.info("instance %s restored from snapshot %s in %.2f s (%s)", name, snapshot.key,
                 timings["total"], ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
        return instance

    def _stage(self, spec: InstanceSpec, snapshot: Snapshot, directory: Path) -> Staged:
        """Blocking: the cached kernel and initrd, the instance's own copies of the
        snapshot-time overlay (none for a read-only shared disk) and of the template
        medium."""
        from vmm.manager import Staged, _disks

        boot, cache = spec.boot, self.manager.cache
        kernel = cache.ensure(boot.kernel.path, boot.kernel.sha512) if boot.kernel else None
        initrd = cache.ensure(boot.initrd.path, boot.initrd.sha512) if boot.initrd else None
        root = None
        if boot.disk is not None and boot.backing:  # the overlay's backing chain
            cache.ensure_chain([(f.path, f.sha512) for f in (*boot.backing, boot.disk)])
        elif boot.disk is not None:
            base = cache.ensure(boot.disk.path, boot.disk.sha512)
            if boot.disk_readonly:  # the image's shared disk itself: nothing to copy
                root = base
        if root is None and snapshot.disk is not None:
            root = directory / "overlay.qcow2"
            copy_sparse(snapshot.disk, root)
        medium = directory / "context.iso"
        shutil.copyfile(snapshot.medium, medium)
        medium.chmod(0o600)
        return Staged(_disks(root, medium, boot), kernel and str(kernel), initrd and str(initrd),
                      str(directory / "console.log"))

    def _restore_domain(self, snapshot: Snapshot, config, directory: Path) -> None:
        """Blocking: restore ``config``'s domain from the snapshot's save file."""
        fifo = directory / "memory.fifo"
        feeder = SaveFeeder(snapshot.memory, fifo,
                            identity_replacements(snapshot, config.name, config.uuid)).start()
        xml = config.to_xml()
        try:
            self._with_connection(lambda conn: conn.restoreFlags(str(fifo), xml, 0))
        except RestoreFailed as err:
            if feeder.error is not None:
                raise RestoreFailed(f"{err} (feeding the save file: {feeder.error})") from None
            raise DamagedSnapshot(str(err)) from None
        finally:
            feeder.stop()
        if feeder.error is not None:
            raise RestoreFailed(f"feeding the save file: {feeder.error}")


def _template_boot(boot):
    """The template boots with freed memory zeroed: zero pages cost the save file, and
    the restore, next to nothing."""
    from dataclasses import replace

    if boot.kernel is None or "init_on_free=" in boot.cmdline:
        return boot
    return replace(boot, cmdline=f"{boot.cmdline} init_on_free=1")


def _sleep(reactor, seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
