"""One target system: a VM instance, the TSI link to its agent, and its health.

``TargetSystem.start()`` walks REQUESTED → STAGING → BOOTING → CONNECTING → READY: it issues
a fresh certificate for the instance, puts the agent's configuration on the
contextualization medium, opens the instance's callback port, boots the VM (readiness is a
mutual-TLS probe of the agent), then creates a TSI worker and pings it.  Every phase has a
deadline; any failure ends in FAILED with a reason code, and the VM, its files and its ports
are gone.  While READY or BUSY, a ping every ``HealthPolicy.interval`` seconds with a budget
of missed pings, plus its domain's lifecycle events (``vmm.watch``), decide whether it is
still alive; it ends when idle too long or at the end of its lease.  ``reconnect()`` takes
it back after a server restart through the same TSI connect path as the bring-up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from base.errors import GridvmError
from base.reasons import Reason
from image_repo.repository import BackingFile
from image_repo.schema import ImageMetadata
from target_system.contextualization import (
    UNICORE,
    image_deadlines,
    medium_files,
    restorable,
    tsi_files,
    tsi_flavour,
)
from target_system.drivers import TSIConnector, TSILink, VirtualMachines, connect_tsi
from target_system.health import HealthCheck, HealthPolicy, Timer
from target_system.images import boot_spec
from target_system.lifecycle import InstanceState, Lifecycle, Transition, instance_lifecycle
from target_system.nodes import NodeIdentity
from tsi_bridge.ca import CertificateAuthority, IssuedCertificate
from tsi_bridge.readiness import first_ping_probe, probe_agent
from tsi_bridge.tls import TLSConfig
from vmm import ports
from vmm.domain import ClusterNicConfig
from vmm.errors import VMMError
from vmm.manager import DomainEvent, Instance, InstanceSpec

log = logging.getLogger(__name__)

S = InstanceState


@dataclass
class Deadlines:
    """Seconds each phase may take (architecture.md: nothing waits forever)."""

    staging: float = 600.0
    booting: float = 180.0
    connecting: float = 60.0
    draining: float = 60.0

    def as_states(self) -> dict[InstanceState, float]:
        return {S.STAGING: self.staging, S.BOOTING: self.booting,
                S.CONNECTING: self.connecting, S.DRAINING: self.draining}


@dataclass
class TsiSettings:
    """The TSI setup of an image (its metadata's ``tsi`` group), with gridvm's defaults."""

    port: int = 4433
    tls_required: bool = True
    user: str = "gridvm"
    group: str | None = None
    workdir_root: str = "/home/gridvm/jobs"

    @classmethod
    def from_metadata(cls, metadata: ImageMetadata | None) -> TsiSettings:
        settings = cls()
        tsi = metadata.tsi if metadata is not None else None
        for key in ("port", "tls_required", "user", "group", "workdir_root"):
            if tsi is not None and getattr(tsi, key) is not None:
                setattr(settings, key, getattr(tsi, key))
        return settings


@dataclass
class SiteCredentials:
    """The site's CA and the server certificate TSI links present."""

    ca: CertificateAuthority
    server: IssuedCertificate

    @classmethod
    def load_or_create(cls, directory: Path) -> SiteCredentials:
        ca = CertificateAuthority.load_or_create(directory)
        server_dir = Path(directory) / "server"
        cert, key = server_dir / "server.pem", server_dir / "server.key"
        if cert.exists() and key.exists():
            server = IssuedCertificate(cert.read_bytes(), key.read_bytes())
        else:
            server_dir.mkdir(parents=True, exist_ok=True)
            server = ca.issue_server()
            server.write(cert, key)
        return cls(ca, server)

    def client_tls(self, instance_cert_pem: bytes) -> TLSConfig:
        """Our side of a TSI link, pinned to one instance's certificate."""
        return TLSConfig(self.server.cert_pem, self.server.key_pem, self.ca.cert_pem,
                         instance_cert_pem)


@dataclass
class ImageToBoot:
    """What the factory hands over: an image's metadata and where its files are
    (``metadata`` is None for the image of a recovered instance that is gone)."""

    image_id: str
    name: str
    metadata: ImageMetadata | None
    paths: Mapping[str, Path]
    #: the bases below a layered image's disk, lowest first
    backing: tuple[BackingFile, ...] = ()


class TargetSystem:
    """One VM instance and the TSI link to its agent.

    ``vmm`` boots, watches and removes the VM (a :class:`~target_system.drivers.
    VirtualMachines`); ``tsi_connector`` makes the TSI link to its agent (the real
    :func:`~target_system.drivers.connect_tsi` unless a test hands in a fake).
    """

    def __init__(self, *, instance_id: str, owner: str, image: ImageToBoot,
                 vmm: VirtualMachines, credentials: SiteCredentials, reactor,
                 vcpus: int = 1, memory_mib: int = 256, deadlines: Deadlines | None = None,
                 health: HealthPolicy | None = None, labels: Mapping[str, str] | None = None,
                 extra_context: Mapping[str, bytes] | None = None,
                 admit: Callable[[], Awaitable[None]] | None = None,
                 settings: TsiSettings | None = None,
                 tsi_connector: TSIConnector = connect_tsi, host: str = "",
                 address: str = "127.0.0.1", callback_address: str = "127.0.0.1",
                 node: NodeIdentity | None = None,
                 cluster_nic: ClusterNicConfig | None = None,
                 job_environment: Mapping[str, str] | None = None):
        self.instance_id, self.owner, self.image = instance_id, owner, image
        #: the hypervisor host it runs on ("": a one-host site's), where that host binds
        #: the TSI forward, and where it reaches the site's callback listener
        self.host, self.address, self.callback_address = host, address, callback_address
        #: after a server restart: the host it waits for (unreachable since the start);
        #: it takes no job until its VM is found there again
        self.awaiting_host = ""
        self.vmm, self.credentials, self.reactor = vmm, credentials, reactor
        self.vcpus, self.memory_mib = vcpus, memory_mib
        self.deadlines = image_deadlines(deadlines or Deadlines(), image.metadata)
        self.health = health or HealthPolicy()
        self.labels = dict(labels or {})
        #: extra files for the contextualization medium, e.g. site start-up hooks
        #: ``init.d/NAME`` (run as root in the guest before the agent starts)
        self.extra_context = dict(extra_context or {})
        #: a last check once the image is staged, right before the VM is created (the
        #: factory re-checks the image's trust here); raising InstanceFailed refuses the boot
        self.admit = admit
        self.settings = settings or TsiSettings.from_metadata(image.metadata)
        self.tsi_connector = tsi_connector
        #: its place in a virtual cluster and the NIC on the cluster's switch (None: alone)
        self.node, self.cluster_nic = node, cluster_nic
        #: variables every job here gets (a cluster's node list)
        self.job_environment = dict(job_environment or {})
        self.lifecycle: Lifecycle = instance_lifecycle(reactor, self.deadlines.as_states())
        self.lifecycle.listeners.append(self._on_transition)
        self.lifecycle.timeout_detail = self._console_excerpt
        self.tsi: TSILink | None = None
        self.vm: Instance | None = None
        self.instance_cert_pem: bytes | None = None
        self.jobs: set[str] = set()  #: ids of jobs running here
        self.listeners: list[Callable[[TargetSystem, Transition], None]] = []
        self.detached = False  #: let go of (server stopping), the VM keeps running
        self.keep_idle = False  #: never ended for being idle (a warm pool's instance)
        self.retiring: str | None = None  #: why it takes no new job (it ends after its last one)
        self._pings = HealthCheck(reactor, self.health, instance_id,
                                  lambda: self.tsi.ping(), self._lost)
        self._idle_timer = Timer(reactor)
        self._lease_timer = Timer(reactor)
        self._unwatch: Callable[[], None] | None = None
        self._started: defer.Deferred | None = None
        #: run once the agent answers, before READY (a pool's warm-up job), for half the
        #: CONNECTING deadline at most; its failure is logged, not the instance's
        self.prime: Callable[[TargetSystem], Awaitable[None]] | None = None

    def __repr__(self) -> str:
        return (f"<TargetSystem {self.instance_id} of {self.owner} ({self.image.name}, "
                f"{self.state.name})>")

    def _console_excerpt(self, state: InstanceState) -> str:
        """The end of the guest's console log, for a boot that never reached the agent."""
        if state not in (S.BOOTING, S.CONNECTING):
            return ""
        tail = self.vmm.console_tail(self.instance_id, 5)
        text = " | ".join(line.strip() for line in tail.splitlines() if line.strip())
        return f"console: {text[-400:]}" if text else "console: (empty)"

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> InstanceState:
        return self.lifecycle.state

    @property
    def usable(self) -> bool:
        return self.state in (S.READY, S.BUSY) and not self.awaiting_host

    def describe(self) -> dict[str, Any]:
        """What an operator or the owner sees: state, reason, health, phase timings."""
        return {
            "id": self.instance_id, "owner": self.owner, "image": self.image.name,
            "imageId": self.image.image_id, "state": self.state.name,
            "reason": self.lifecycle.reason, "message": self.lifecycle.message,
            "health": {"missedPings": self._pings.missed, "budget": self.health.missed_budget,
                       "roundTripSeconds": self._pings.round_trip},
            "jobs": sorted(self.jobs), "created": self.lifecycle.entered.get("REQUESTED"),
            "phases": {k: round(v, 3) for k, v in self.lifecycle.phase_seconds().items()},
            "domain": self.vm.domain if self.vm else None,
            #: "restored" (from a snapshot of its image) or "booted"
            "startedBy": getattr(self.vm, "started_by", "booted") if self.vm else None,
            "host": self.host, **({"awaitingHost": True} if self.awaiting_host else {}),
            **({"cluster": {"id": self.node.cluster, "node": self.node.name,
                            "role": self.node.role, "address": self.node.address}}
               if self.node else {}),
        }

    def _on_transition(self, transition: Transition) -> None:
        log.info("instance %s: %s -> %s%s", self.instance_id, transition.previous.name,
                 transition.state.name,
                 f" ({transition.reason}: {transition.message})" if transition.reason else "")
        if transition.state not in (S.READY, S.BUSY):
            self._pings.stop()
        for listener in list(self.listeners):
            listener(self, transition)
        if transition.state is S.FAILED and not self.detached:
            # A deadline or a health check failed the instance: take everything down.
            self.reactor.callLater(0, lambda: defer.ensureDeferred(self._teardown()))
        if transition.state is S.READY:
            self._arm_idle()

    # -- bring-up --------------------------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Fires when READY; fails with the instance's reason once it is FAILED."""
        if self._started is None:
            if self.usable:  # taken back after a server restart: up already
                self._started = defer.succeed(self)
            else:
                self._started = defer.Deferred.fromCoroutine(self._start())
        return self._started

    async def _start(self) -> TargetSystem:
        try:
            await self._bring_up()
        except Exception as err:
            reason = getattr(err, "reason", None) or Reason.HYPERVISOR_ERROR
            self.lifecycle.fail(reason, str(err))
        if self.state is not S.READY:
            await self._teardown()
            raise InstanceFailed(self.lifecycle.reason or Reason.HYPERVISOR_ERROR,
                                 self.lifecycle.message or "the instance did not start")
        return self

    def _still(self, *states: InstanceState) -> None:
        """Stop the bring-up (or reconnect) if a deadline or a crash moved the instance on."""
        if self.state not in states:
            raise InstanceFailed(self.lifecycle.reason or Reason.HYPERVISOR_ERROR,
                                 self.lifecycle.message)

    async def _bring_up(self) -> None:
        life = self.lifecycle
        life.advance(S.STAGING)
        host_port = ports.free_port(self.address)
        issued = self.credentials.ca.issue_instance(self.instance_id)
        self.instance_cert_pem = issued.cert_pem
        callback_port = self._open_tsi(host_port)
        files = tsi_files(self.image.metadata, self.credentials.ca, self.credentials.server,
                          issued, callback_port=callback_port, listen_port=self.settings.port,
                          job_user=self.settings.user, job_group=self.settings.group,
                          workdir_root=self.settings.workdir_root)
        files = medium_files(self.image.metadata, self.instance_id, files,
                             job_user=self.settings.user, job_group=self.settings.group,
                             workdir_root=self.settings.workdir_root)
        tls = self.credentials.client_tls(issued.cert_pem)
        if tsi_flavour(self.image.metadata) == UNICORE:  # answers no line: its first PING
            assert self.tsi is not None
            probe = first_ping_probe(self.reactor, self.tsi.ping, timeout=10.0)
        else:
            def probe(host: str, port: int) -> defer.Deferred:
                return probe_agent(self.reactor, host, port, tls, timeout=5.0)
        spec = InstanceSpec(
            boot=boot_spec(self.image.metadata, self.image.paths, self.image.backing),
            image=self.image.image_id,
            instance_id=self.instance_id, vcpus=self.vcpus, memory_mib=self.memory_mib,
            guest_port=self.settings.port, callback_port=callback_port, host_port=host_port,
            context_files={**self.extra_context, **files},
            labels={"owner": self.owner, "image_name": self.image.name, **self.labels},
            host=self.host,
            cluster_nic=self.cluster_nic,
            restorable=restorable(self.image.metadata) and self.cluster_nic is None,
            staging_timeout=self.deadlines.staging,
            boot_timeout=self.deadlines.staging + self.deadlines.booting,
            probe=probe,
            on_phase=lambda phase: defer.Deferred.fromCoroutine(self._staged()),
        )
        self._watch_domain()
        self.vm = await self.vmm.boot(spec)
        if self.state is not S.BOOTING:  # a deadline passed while the boot finished
            await self._destroy_vm()
            self._still(S.BOOTING)
        life.advance(S.CONNECTING)
        await self._reach_agent(self.reactor.seconds() + self.deadlines.connecting,
                                S.CONNECTING)
        if self.prime is not None:
            try:  # within half the phase's deadline: a slow warm-up must not fail the boot
                await defer.ensureDeferred(self.prime(self)).addTimeout(
                    self.deadlines.connecting / 2, self.reactor)
            except Exception as err:
                log.info("instance %s: priming failed: %s", self.instance_id, err)
            self._still(S.CONNECTING)
        life.advance(S.READY)
        self._pings.start()
        if self.health.lease:
            self._lease_timer.arm(self.health.lease, self._lease_expired)

    async def _staged(self) -> None:
        """The image is staged: admit the boot (or fail the instance), then BOOTING."""
        self._still(S.STAGING)
        if self.admit is not None:
            try:
                await self.admit()
            except InstanceFailed as err:
                self.lifecycle.fail(err.reason, str(err))
                raise
            self._still(S.STAGING)
        self.lifecycle.advance(S.BOOTING)

    # -- the TSI link (bring-up and reconnect) ---------------------------------------------
    def _open_tsi(self, host_port: int, callback_port: int = 0) -> int:
        """Make the TSI link to the agent behind ``host_port``, pinned to the instance's
        certificate, and open its callback listener; returns the callback port."""
        assert self.instance_cert_pem is not None
        tls = self.credentials.client_tls(self.instance_cert_pem)
        self.tsi = self.tsi_connector(self.reactor, host_port, tls, user=self.settings.user,
                                      callback_port=callback_port, address=self.address,
                                      callback_address=self.callback_address)
        # gridvm's agent makes a job's USPACE_DIR at SUBMIT; an image's own TSI does not
        self.tsi.submit_makes_directory = tsi_flavour(self.image.metadata) != UNICORE
        return self.tsi.start()

    async def _reach_agent(self, deadline: float, *states: InstanceState) -> None:
        """Ping until the agent answers: TSI_UNREACHABLE once ``deadline`` passes, the
        instance's own reason once it leaves ``states`` (a phase deadline, a crash)."""
        assert self.tsi is not None
        while True:
            try:
                await self.tsi.ping().addTimeout(self.health.ping_timeout, self.reactor)
                break
            except Exception as err:
                self._still(*states)
                if self.reactor.seconds() >= deadline:
                    raise InstanceFailed(Reason.TSI_UNREACHABLE,
                                         f"no answer from the agent: {err}") from err
                log.debug("instance %s: TSI not reachable yet: %s", self.instance_id, err)
                await task.deferLater(self.reactor, 0.5, lambda: None)
        self._still(*states)

    # -- after a server restart -------------------------------------------------------------
    @classmethod
    def restore(cls, row: Mapping[str, Any], image: ImageToBoot, vm: Instance | None,
                **kwargs) -> TargetSystem:
        """A target system as saved by ``target_system.store``, around the VM that vmm
        adopted (``vm`` None: the domain is gone)."""
        target = cls(instance_id=row["id"], owner=row["owner"], image=image,
                     vcpus=row["vcpus"], memory_mib=row["memory_mib"], **kwargs)
        target.vm = vm
        target.host = row.get("host") or ""
        if vm is not None:
            target.address = vm.address
        target.instance_cert_pem = (row["instance_cert"] or "").encode() or None
        target.lifecycle.restore(S[row["state"]], row["history"], row["reason"],
                                 row["message"] or "")
        return target

    def reconnect(self) -> defer.Deferred:
        """Take a READY/BUSY instance back: reconnect its TSI link on the same ports.

        Fires with the target system once it answers; otherwise it ends FAILED
        (``GUEST_CRASHED`` when its domain vanished while the server was down,
        ``TSI_UNREACHABLE`` when the agent does not answer, ``SERVER_RESTARTED`` when it
        was still being set up) and its VM is removed.
        """
        return defer.Deferred.fromCoroutine(self._reconnect())

    async def _reconnect(self) -> TargetSystem:
        if self.state not in (S.READY, S.BUSY):
            self.lifecycle.fail(Reason.SERVER_RESTARTED, f"the server restarted while the "
                                f"instance was {self.state.name}")
        elif self.vm is None:
            self.lifecycle.fail(Reason.GUEST_CRASHED, "the VM vanished while the server was down")
        elif not self.instance_cert_pem:
            self.lifecycle.fail(Reason.SERVER_RESTARTED, "no certificate saved for the TSI link")
        if self.lifecycle.terminal:
            await self._teardown()
            return self
        assert self.vm is not None
        self._watch_domain()
        try:
            self._open_tsi(self.vm.host_port, self.vm.callback_port or 0)
            await self._reach_agent(self.reactor.seconds() + self.deadlines.connecting,
                                    S.READY, S.BUSY)
        except Exception as err:
            self.lifecycle.fail(getattr(err, "reason", None) or Reason.TSI_UNREACHABLE,
                                f"after the restart: {err}")
            await self._teardown()
            return self
        log.info("instance %s reconnected after the restart", self.instance_id)
        self._pings.start()
        if self.state is S.READY:
            self._arm_idle()
        return self

    # -- health ----------------------------------------------------------------------------
    def _watch_domain(self) -> None:
        if self._unwatch is None:
            self._unwatch = self.vmm.watch(self.instance_id, self._on_domain_event)

    def _unwatch_domain(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()

    def _on_domain_event(self, event: DomainEvent) -> None:
        if event.host_lost and not self.lifecycle.terminal:
            self.lifecycle.fail(Reason.HOST_LOST, event.host_lost)
            return
        if self.vm is None:
            return
        if event.stopped and self.state in (S.CONNECTING, S.READY, S.BUSY):
            tail = self.vm.console_tail(3).replace("\n", " | ")
            self.lifecycle.fail(Reason.GUEST_CRASHED, f"the VM stopped ({event.event.name.lower()})"
                                                 f"; console: {tail[-300:]}")

    def _lost(self, message: str) -> None:
        if self.usable:
            self.lifecycle.fail(Reason.TSI_LOST, message)

    def _arm_idle(self) -> None:
        self._idle_timer.cancel()
        if self.health.idle_timeout and not self.jobs and not self.keep_idle:
            self._idle_timer.arm(self.health.idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.state is S.READY and not self.jobs and not self.keep_idle:
            log.info("instance %s idle for %g s: terminating", self.instance_id,
                     self.health.idle_timeout)
            self.terminate()

    def _lease_expired(self) -> None:
        if self.usable:
            self.terminate("lease expired")

    # -- jobs ------------------------------------------------------------------------------
    def claim(self, job_id: str) -> None:
        """A job starts here: READY → BUSY."""
        if not self.usable:
            raise InstanceFailed(self.lifecycle.reason or Reason.TSI_UNREACHABLE,
                                 f"instance {self.instance_id} is {self.state.name}")
        self.jobs.add(job_id)
        self._idle_timer.cancel()
        if self.state is S.READY:
            self.lifecycle.advance(S.BUSY)

    def release(self, job_id: str) -> None:
        """A job ended here: BUSY → READY when it was the last (ended if retiring)."""
        self.jobs.discard(job_id)
        if not self.jobs and self.state is S.BUSY:
            self.lifecycle.advance(S.READY)
        if not self.jobs and self.retiring and self.usable:
            self.terminate(self.retiring)

    async def has_room(self, minimum: int, space: dict[str, int] | None = None) -> bool:
        """Whether the job directories' file system has ``minimum`` bytes free (one that
        reports no size, like ramfs, counts as roomy); if not, the instance is retired.
        ``space``: that file system's DF figures when the caller has them already."""
        if self.tsi is None:
            return True
        if space is None:
            space = await self.tsi.df(self.settings.workdir_root)
        if space["TOTAL"] <= 0 or space["FREE"] >= minimum:
            return True
        self.retiring = (f"only {space['FREE']} of {space['TOTAL']} bytes free for job "
                         f"directories (it keeps {minimum})")
        log.info("instance %s retired: %s", self.instance_id, self.retiring)
        return False

    # -- the end ---------------------------------------------------------------------------
    def terminate(self, why: str = "") -> defer.Deferred:
        """DRAINING → TERMINATED: close the TSI link and remove the VM and its files."""
        return defer.Deferred.fromCoroutine(self._terminate(why))

    async def _terminate(self, why: str) -> None:
        if self.lifecycle.terminal:
            return
        if self.state in (S.READY, S.BUSY):
            self.lifecycle.advance(S.DRAINING, why)
        elif self.state is not S.DRAINING:
            self.lifecycle.fail(Reason.HYPERVISOR_ERROR, why or "terminated before it was ready")
            return
        destroyed = await self._teardown()
        if self.state is S.DRAINING and destroyed:
            self.lifecycle.advance(S.TERMINATED, why)
        elif self.state is S.DRAINING:  # its domain may still run: never TERMINATED then
            self.lifecycle.fail(Reason.HYPERVISOR_ERROR, "its VM could not be destroyed (the "
                                "site retries after reconnecting to the hypervisor)")

    def detach(self) -> defer.Deferred:
        """Let go of the instance without ending it (the server stops; the VM and its jobs
        keep running and are re-adopted at the next start)."""
        self.detached = True
        self._stop_watching()
        client, self.tsi = self.tsi, None
        return client.close() if client is not None else defer.succeed(None)

    def _stop_watching(self) -> None:
        """No more pings, timers, deadlines or domain events."""
        self._pings.stop()
        self._idle_timer.cancel()
        self._lease_timer.cancel()
        self.lifecycle.cancel()
        self._unwatch_domain()

    async def _teardown(self) -> bool:
        """Stop everything and destroy the VM; False when the VM could not be destroyed."""
        self._stop_watching()
        if self.tsi is not None:
            client, self.tsi = self.tsi, None
            try:
                await client.close()
            except Exception:
                log.exception("closing the TSI link of %s", self.instance_id)
        destroyed = await self._destroy_vm()
        self.lifecycle.cancel()
        return destroyed

    async def _destroy_vm(self) -> bool:
        try:
            await self.vmm.destroy(self.instance_id)
        except VMMError as err:
            log.error("destroying instance %s: %s", self.instance_id, err)
            return False
        return True


class InstanceFailed(GridvmError):
    """An instance is not (or no longer) usable; ``reason`` is the failure code."""

    def __init__(self, reason: Reason | str, message: str):
        super().__init__(message, reason=reason)
