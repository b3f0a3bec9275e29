"""A fake TSI: in-memory agents behind fake forwarded ports, and the client that talks to them.

``FakeTSINetwork`` is a ``target_system.drivers.TSIConnector``: a target system calls it for
the link to ``127.0.0.1:port``.  An agent is "plugged in" at a port when its fake VM boots
and unplugged when the VM goes (``FakeVirtualMachines`` does both); until then requests fail
with ``TSIUnreachable`` (connection refused), as with the real client.  A plugged agent
answers pings, runs submitted jobs on the clock (``job_seconds``; None: until ``finish``),
lists their status and keeps files in memory; once told ``stop_answering()`` every request
hangs until the client's ``request_timeout`` (``TSIConnectionLost``) or its close.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from twisted.internet import defer

from tsi_bridge.client import JobStatus
from tsi_bridge.errors import TSICommandFailed, TSIConnectionLost, TSIError, TSIUnreachable
from tsi_bridge.protocol import EXIT_CODE_FILE, FileInfo

VERSION = "gridvm fake TSI 1.0"


@dataclass
class FakeJob:
    """One batch job the agent was given."""

    bssid: str
    script: str
    workdir: str
    stdout: str
    stderr: str
    params: dict = field(default_factory=dict)
    ended: str | None = None  #: "finished" or "aborted" once it stopped


class FakeAgent:
    """One guest's agent, in memory: its files, its jobs, whether it answers."""

    def __init__(self, clock, *, job_seconds: float | None = 1.0, answering: bool = True):
        self.clock = clock
        self.job_seconds = job_seconds  #: how long each job runs (None: until finish())
        self.answering = answering
        self.exit_code = 0  #: what the jobs exit with
        self.output = b"hello from the fake guest\n"  #: what the jobs write to stdout
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, FakeJob] = {}  #: every job ever submitted, by BSSID
        self.requests: list[str] = []  #: the commands received, in order
        self.scripts: list[str] = []  #: the EXECUTESCRIPT scripts, in order
        self._serial = 0

    # -- what a test tells it ------------------------------------------------------------
    def stop_answering(self) -> None:
        self.answering = False

    def answer_again(self) -> None:
        self.answering = True

    def running(self) -> list[FakeJob]:
        return [job for job in self.jobs.values() if job.ended is None]

    def finish(self, bssid: str, exit_code: int | None = None) -> None:
        """The job ends: its stdout, stderr and exit code file appear in its directory."""
        job = self.jobs[bssid]
        if job.ended is not None:
            return
        job.ended = "finished"
        code = self.exit_code if exit_code is None else exit_code
        self.files[posixpath.join(job.workdir, job.stdout)] = self.output
        self.files[posixpath.join(job.workdir, job.stderr)] = b""
        self.files[posixpath.join(job.workdir, EXIT_CODE_FILE)] = f"{code}\n".encode()

    # -- what the client asks ------------------------------------------------------------
    def submit(self, script: str, uspace_dir: str, stdout: str, stderr: str,
               params: dict) -> str:
        self._serial += 1
        bssid = str(1000 + self._serial)
        self.jobs[bssid] = FakeJob(bssid, script, uspace_dir, stdout, stderr, params)
        if self.job_seconds is not None:
            self.clock.callLater(self.job_seconds, self.finish, bssid)
        return bssid

    def abort(self, bssid: str) -> None:
        job = self.jobs.get(bssid)
        if job is None or job.ended is not None:
            raise TSICommandFailed(f"no such job {bssid}")
        job.ended = "aborted"

    def read(self, path: str) -> bytes:
        if path not in self.files:
            raise TSICommandFailed(f"{path}: No such file or directory")
        return self.files[path]

    def entries(self, path: str, mode: str) -> list[FileInfo]:
        """LS: A the path itself, N a directory's entries, R every file below it."""
        path = path.rstrip("/")
        below = sorted(name for name in self.files if name.startswith(path + "/"))
        if mode == "A":
            if path in self.files:
                return [_info(path, self.files[path])]
            return [_info(path, None)] if below else []
        if mode == "N":
            below = [name for name in below if "/" not in name[len(path) + 1:]]
        return [_info(name, self.files[name]) for name in below]


def _info(path: str, data: bytes | None) -> FileInfo:
    return FileInfo(path, data is None, True, True, False, True, len(data or b""), 0,
                    "drwxr-xr-x" if data is None else "-rw-r--r--", "gridvm", "gridvm")


class FakeTSIClient:
    """The ``TSILink`` of one target system to the agent behind ``port``."""

    def __init__(self, network: FakeTSINetwork, reactor, port: int, *, user: str,
                 callback_port: int = 0, request_timeout: float = 120.0):
        self.network, self.reactor, self.port, self.user = network, reactor, port, user
        self.callback_port = callback_port
        self.request_timeout = request_timeout
        self.submitted: set[str] = set()
        self.closed = False
        #: like the official TSI: no directory streams, so stage-out goes file by file
        self.streams: bool | None = False
        self.unsupported: set[str] = set()
        #: like the official TSI: SUBMIT needs its USPACE_DIR made first
        self.submit_makes_directory = False
        self._hanging: list[defer.Deferred] = []

    @property
    def idle_workers(self) -> int:
        return 1

    def _call(self, command: str, answer: Callable[[FakeAgent], object]) -> defer.Deferred:
        """``answer(agent)`` as the TSI's reply, or the failure the real client would see."""
        if self.closed:
            return defer.fail(TSIUnreachable(f"tsi://127.0.0.1:{self.port}: client closed"))
        agent = self.network.agents.get(self.port)
        if agent is None:
            return defer.fail(TSIUnreachable(f"127.0.0.1:{self.port}: connection refused"))
        agent.requests.append(command)
        if not agent.answering:
            return self._hang(command)
        try:
            return defer.succeed(answer(agent))
        except TSIError as err:
            return defer.fail(err)

    def _hang(self, command: str) -> defer.Deferred:
        silent: defer.Deferred = defer.Deferred()
        self._hanging.append(silent)

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise TSIConnectionLost(f"{command}: no answer within {self.request_timeout:g} s")

        silent.addTimeout(self.request_timeout, self.reactor).addErrback(timed_out)
        silent.addBoth(lambda result: (self._forget(silent), result)[1])
        return silent

    def _forget(self, silent: defer.Deferred) -> None:
        if silent in self._hanging:
            self._hanging.remove(silent)

    # -- pool ----------------------------------------------------------------------------
    def start(self) -> int:
        if not self.callback_port:
            self.callback_port = self.network.next_callback_port()
        return self.callback_port

    def close(self) -> defer.Deferred:
        self.closed = True
        self.drop("client closed")
        return defer.succeed(None)

    def drop(self, why: str) -> None:
        """The requests still waiting for an answer fail (``TSIConnectionLost``)."""
        for silent in list(self._hanging):
            silent.errback(TSIConnectionLost(why))

    # -- commands ------------------------------------------------------------------------
    def ping(self) -> defer.Deferred:
        return self._call("PING", lambda agent: VERSION)

    def execute_script(self, script: str, discard_output: bool = False,
                       timeout: float | None = None) -> defer.Deferred:
        return self._call("EXECUTESCRIPT", lambda agent: (agent.scripts.append(script), "")[1])

    def submit(self, script: str, *, uspace_dir: str, stdout: str = "stdout",
               stderr: str = "stderr", **params) -> defer.Deferred:
        def submit(agent: FakeAgent) -> str:
            bssid = agent.submit(script, uspace_dir, stdout, stderr, params)
            self.submitted.add(bssid)
            return bssid

        return self._call("SUBMIT", submit)

    def track(self, bssid: str) -> None:
        self.submitted.add(bssid)

    def forget(self, bssid: str) -> None:
        self.submitted.discard(bssid)

    def get_status_listing(self, all_jobs: bool = False) -> defer.Deferred:
        return self._call("GETSTATUSLISTING", lambda agent: {
            job.bssid: JobStatus("RUNNING", "batch", "R") for job in agent.running()
            if all_jobs or job.bssid in self.submitted})

    def wait_status(self, seconds: float) -> defer.Deferred:
        """Like the official TSI: no pushed status (the runner polls)."""
        return defer.succeed(None)

    def make_directories(self, paths: list[str]) -> defer.Deferred:
        return self.execute_script("mkdir -p " + " ".join(map(shlex.quote, paths)))

    def remove_tree(self, path: str) -> defer.Deferred:
        """As the real client against the official TSI: by a script, no space answered."""
        return self.execute_script(f"rm -rf -- {shlex.quote(path)}").addCallback(
            lambda _output: None)

    def submit_with_files(self, script: str, files, **params) -> defer.Deferred:
        """Like the official TSI: no GRIDVM_SUBMIT (the runner stages in, then submits),
        remembered as the real client does."""
        self.unsupported.add("GRIDVM_SUBMIT")
        return defer.succeed(None)

    def abort_job(self, bssid: str) -> defer.Deferred:
        return self._call("ABORTJOB", lambda agent: agent.abort(bssid))

    def job_details(self, bssid: str) -> defer.Deferred:
        return self._call("GETJOBDETAILS", lambda agent: json.dumps(
            {"bssid": bssid, "ended": agent.jobs[bssid].ended if bssid in agent.jobs else None}))

    def exit_code(self, outcome_dir: str, grace: float = 120.0,
                  poll_interval: float = 1.0) -> defer.Deferred:
        """The exit code file's number, None if there is none (no waiting for it)."""
        path = posixpath.join(outcome_dir, EXIT_CODE_FILE)
        return self._call("GETFILECHUNK", lambda agent: int(agent.files[path].split()[0])
                          if path in agent.files else None)

    def ls(self, path: str, mode: str = "A") -> defer.Deferred:
        return self._call("LS", lambda agent: agent.entries(path, mode))

    # -- files ---------------------------------------------------------------------------
    def get_file_chunk(self, path: str, offset: int, length: int) -> defer.Deferred:
        return self._call("GETFILECHUNK",
                          lambda agent: agent.read(path)[offset: offset + length])

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> defer.Deferred:
        return self._call("PUTFILECHUNK", lambda agent: agent.files.__setitem__(path,
                                                                                 bytes(data)))

    def upload(self, local: str | BinaryIO, path: str, mode: int = 0o644) -> defer.Deferred:
        def upload(agent: FakeAgent) -> int:
            data = Path(local).read_bytes() if isinstance(local, str) else local.read()
            agent.files[path] = data
            return len(data)

        return self._call("PUTFILECHUNK", upload)

    def df(self, path: str) -> defer.Deferred:
        return self._call("DF", lambda agent: {"TOTAL": 1 << 30, "FREE": 1 << 29, "USER": -1})

    def get_directory(self, path: str, local_path: str,
                      timeout: float = 3600.0) -> defer.Deferred:
        return self._call("GRIDVM_GETDIRECTORY", lambda agent: _unknown_command())

    def download(self, path: str, local_path: str) -> defer.Deferred:
        def download(agent: FakeAgent) -> int:
            data = agent.read(path)
            Path(local_path).write_bytes(data)
            return len(data)

        return self._call("GETFILECHUNK", download)


class FakeTSINetwork:
    """The ``TSIConnector`` of the fakes: links to the agents plugged in at ports."""

    def __init__(self, clock, *, job_seconds: float | None = 1.0, answering: bool = True):
        self.clock = clock
        self.job_seconds = job_seconds  #: given to each agent plugged in from now on
        self.answering = answering  #: whether new agents answer
        self.agents: dict[int, FakeAgent] = {}
        self.links: list[FakeTSIClient] = []  #: every link ever made, in order
        self._callback_port = 40000

    def __call__(self, reactor, port: int, tls, *, user: str, callback_port: int = 0,
                 address: str = "127.0.0.1",
                 callback_address: str = "127.0.0.1") -> FakeTSIClient:
        link = FakeTSIClient(self, reactor, port, user=user, callback_port=callback_port)
        self.links.append(link)
        return link

    def next_callback_port(self) -> int:
        self._callback_port += 1
        return self._callback_port

    def plug(self, port: int) -> FakeAgent:
        """An agent starts behind ``port`` (its VM booted)."""
        agent = FakeAgent(self.clock, job_seconds=self.job_seconds, answering=self.answering)
        self.agents[port] = agent
        return agent

    def unplug(self, port: int) -> None:
        """The agent behind ``port`` is gone (its VM stopped)."""
        self.agents.pop(port, None)
        for link in self.links:
            if link.port == port:
                link.drop("the connection was reset")


def _unknown_command():
    raise TSICommandFailed("Unknown command GRIDVM_GETDIRECTORY")
