"""What a target system needs from the VM manager and from a TSI link.

These are the contracts ``TargetSystem`` and ``JobRunner`` are written against:
``vmm.manager.VirtualMachineManager`` and ``tsi_bridge.client.TSIClient`` fulfil them in
production, the fakes in ``tests/fakes`` in unit tests.  Every method returns a Deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO, Protocol

from twisted.internet import defer

from tsi_bridge.client import TSIClient
from tsi_bridge.tls import TLSConfig
from vmm.manager import DomainEvent, InstanceSpec


class VirtualMachines(Protocol):
    """Boots and removes the VM of one instance and reports what happens to its domain."""

    def boot(self, spec: InstanceSpec) -> defer.Deferred:
        """Fires with a ``vmm.manager.Instance`` once the agent answers; fails with a
        ``VMMError`` carrying a reason."""

    def destroy(self, instance_id: str) -> defer.Deferred:
        """Stops the domain at once and removes the instance's files (gone already: fine)."""

    def watch(self, instance_id: str, callback: Callable[[DomainEvent], None]
              ) -> Callable[[], None]:
        """Hands ``callback`` the domain's lifecycle events; returns the unsubscribe call."""

    def console_tail(self, instance_id: str, lines: int = 5) -> str:
        """The last lines of the guest's console (empty when there is none)."""


class Hosts(Protocol):
    """The hypervisor hosts a site places new instances on (``vmm.hosts.HostPool``)."""

    def views(self) -> list:
        """Every host as a ``vmm.hosts.HostView``, in configuration order."""

    def host_of(self, instance_id: str) -> str:
        """The name of the host the instance runs on ("" when none knows it)."""

    def await_instance(self, instance_id: str, host_name: str) -> defer.Deferred:
        """Fires with the ``vmm.manager.Instance`` of a restored instance once its host,
        unreachable since the start, joins with its domain; fails with a ``VMMError``
        (``HOST_LOST`` past the grace period)."""


class TSILink(Protocol):
    """The TSI commands a target system and its jobs use (see ``TSIClient``)."""

    #: whether the TSI streams a directory as one archive (gridvm's agent): None until tried
    streams: bool | None
    #: whether SUBMIT makes its USPACE_DIR itself (gridvm's agent; the official TSI only
    #: changes into it), so a job with nothing to stage needs no MKDIR before it
    submit_makes_directory: bool

    @property
    def idle_workers(self) -> int: ...

    def start(self) -> int:
        """Opens the callback listener; returns its port."""

    def close(self) -> defer.Deferred: ...

    def ping(self) -> defer.Deferred: ...

    def execute_script(self, script: str, discard_output: bool = False,
                       timeout: float | None = None) -> defer.Deferred: ...

    def submit(self, script: str, *, uspace_dir: str, **params) -> defer.Deferred: ...

    def track(self, bssid: str) -> None: ...

    def forget(self, bssid: str) -> None: ...

    def get_status_listing(self, all_jobs: bool = False) -> defer.Deferred: ...

    def wait_status(self, seconds: float) -> defer.Deferred:
        """The status listing once a job ended since the last answer, or after ``seconds``,
        pushed by gridvm's agent; None from a TSI that only answers GETSTATUSLISTING."""

    def make_directories(self, paths: list[str]) -> defer.Deferred:
        """``mkdir -p`` of each path."""

    def remove_tree(self, path: str) -> defer.Deferred:
        """``rm -rf``."""

    def abort_job(self, bssid: str) -> defer.Deferred: ...

    def job_details(self, bssid: str) -> defer.Deferred: ...

    def exit_code(self, outcome_dir: str, grace: float = 120.0,
                  poll_interval: float = 1.0) -> defer.Deferred: ...

    def ls(self, path: str, mode: str = "A") -> defer.Deferred: ...

    def get_file_chunk(self, path: str, offset: int, length: int) -> defer.Deferred: ...

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> defer.Deferred: ...

    def upload(self, local: str | BinaryIO, path: str, mode: int = 0o644) -> defer.Deferred: ...

    def download(self, path: str, local_path: str) -> defer.Deferred: ...

    def get_directory(self, path: str, local_path: str,
                      timeout: float = 3600.0) -> defer.Deferred:
        """The directory as one tar stream into ``local_path`` (gridvm's agent only)."""

    def df(self, path: str) -> defer.Deferred:
        """``{"TOTAL": bytes, "FREE": bytes, "USER": quota or -1}`` of the disk of ``path``."""


class TSIConnector(Protocol):
    """Makes the TSI link to an instance's agent, forwarded to ``address:port`` on its host;
    the agent calls back to ``callback_address`` (where the host reaches the site)."""

    def __call__(self, reactor, port: int, tls: TLSConfig, *, user: str,
                 callback_port: int = 0, address: str = "127.0.0.1",
                 callback_address: str = "127.0.0.1") -> TSILink: ...


def connect_tsi(reactor, port: int, tls: TLSConfig, *, user: str,
                callback_port: int = 0, address: str = "127.0.0.1",
                callback_address: str = "127.0.0.1") -> TSIClient:
    """The real link: a :class:`TSIClient` over mutual TLS (``callback_port`` 0: pick one)."""
    return TSIClient(reactor, address, port, tls=tls, callback_host=callback_address,
                     callback_port=callback_port, user=user, groups="NONE",
                     connect_timeout=10.0, request_timeout=120.0)
