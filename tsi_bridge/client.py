"""The Twisted TSI client: one ``TSIClient`` per TSI endpoint (one VM instance's agent, or an
official UNICORE TSI).

* Worker creation follows the shepherd handshake: ``newtsiprocess <port>`` in one write, then
  two callbacks to this endpoint's own listener (command, then data).  Creation is serialised
  per endpoint; the listener port is given (gridvm reserves one per instance) or picked.
* A pool of up to ``pool_size`` workers; idle workers are reused, broken ones discarded.
* Every request has a deadline.  ``TSI_FAILED`` -> TSICommandFailed (TSI_ERROR), a broken or
  silent worker -> TSIConnectionLost (TSI_LOST), no worker -> TSIUnreachable.
* Only our extensions-free commands are used, so it works against the official TSI too.

All public methods return Deferreds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

from twisted.internet import defer, threads

from base.reasons import Reason
from tsi_bridge import protocol
from tsi_bridge.callbacks import CallbackListener
from tsi_bridge.channels import TSIWorker
from tsi_bridge.errors import TSICommandFailed, TSIConnectionLost, TSIError, TSIUnreachable
from tsi_bridge.line_exchange import exchange_line
from tsi_bridge.tls import TLSConfig

DEFAULT_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class JobStatus:
    """One line of a status listing."""

    state: str
    queue: str
    raw: str


@dataclass(frozen=True)
class DirectoryArchive:
    """What a GRIDVM_GETDIRECTORY stream held: regular files and their bytes, and one
    ``(kind, escaped name, detail)`` per file skipped (SKIPPED), cut short (INCOMPLETE) or
    left out of the report (OMITTED)."""

    files: int
    bytes: int
    problems: list[tuple[str, str, str]]
    #: the DF figures (as ``remove_tree``'s) once the agent removed the directory after the
    #: stream (``then_remove``); None when it is still there
    removed: dict[str, int] | None = None


def _deferred(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(method(*args, **kwargs))

    return wrapper


class TSIClient:
    """A client for one TSI endpoint ``host:port``.

    ``tls``: a TLSConfig (own cert/key, CA, and the instance's certificate pinned) or None
    for plain TCP.  ``callback_port``: the port the TSI calls back to (0: pick a free one;
    our agent may also have one pinned in its config).  ``user``/``groups``: the
    ``#TSI_IDENTITY`` sent with every request.
    """

    def __init__(self, reactor, host: str, port: int, *, tls: TLSConfig | None = None,
                 callback_host: str = "127.0.0.1", callback_port: int = 0,
                 user: str = "nobody", groups: str = "NONE", pool_size: int = 4,
                 connect_timeout: float = 10.0, callback_timeout: float = 15.0,
                 request_timeout: float = 180.0, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.reactor, self.host, self.port, self.tls = reactor, host, port, tls
        self.user = protocol.check_token("user", user)
        self.groups = protocol.check_token("groups", groups)
        self.pool_size, self.chunk_size = pool_size, chunk_size
        self.connect_timeout, self.callback_timeout = connect_timeout, callback_timeout
        self.request_timeout = request_timeout
        self.listener = CallbackListener(reactor, callback_host, callback_port, tls)
        self.name = f"tsi://{host}:{port}"
        self.submitted: set[str] = set()
        self._create_lock = defer.DeferredLock()
        self._idle: list[TSIWorker] = []
        self._count = 0
        self._waiters: deque[defer.Deferred] = deque()
        self._serial = 0
        self._closed = False
        #: whether the TSI streams directories (GRIDVM_GETDIRECTORY): None until tried
        self.streams: bool | None = None
        #: whether SUBMIT makes its USPACE_DIR (gridvm's agent does; whoever knows the TSI
        #: is gridvm's sets it): a job with nothing to stage then needs no MKDIR first
        self.submit_makes_directory = False
        #: our extensions the TSI answered as unknown (the official TSI): not sent again
        self.unsupported: set[str] = set()
        self._ended_seen = -1  #: the agent's count of ended jobs at its last WAITSTATUS

    # ------------------------------------------------------------------ pool

    def start(self) -> int:
        """Start the callback listener now (otherwise it starts with the first worker)."""
        return self.listener.start()

    @_deferred
    async def new_worker(self) -> TSIWorker:
        """Create one worker (serialised per endpoint); raises TSIUnreachable."""
        async with self._create_lock:
            if self._closed:
                raise TSIUnreachable(f"{self.name}: client closed")
            port = self.listener.start()
            expected = self.listener.expect_worker(self.callback_timeout)
            try:
                answer = await exchange_line(self.reactor, self.host, self.port,
                                             f"newtsiprocess {port}\n".encode(), self.tls,
                                             self.connect_timeout)
            except BaseException:
                expected.cancel()
                expected.addErrback(lambda _f: None)
                raise
            if not answer.startswith("OK"):
                expected.cancel()
                expected.addErrback(lambda _f: None)
                raise TSIUnreachable(f"{self.name} refused newtsiprocess: {answer[:80]!r}")
            command, data = await expected
            self._serial += 1
            return TSIWorker(self.reactor, command, data, f"{self.name}#{self._serial}")

    async def _acquire(self, first: bool = False) -> TSIWorker:
        """An idle worker, a new one, or the next one freed (``first``: before the requests
        already waiting, as a health check's PING behind a queue of jobs)."""
        while self._idle:
            worker = self._idle.pop()
            if worker.broken is None:
                return worker
        if self._count >= self.pool_size:
            waiter: defer.Deferred = defer.Deferred()
            if first:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            waiter.addTimeout(self.request_timeout, self.reactor)
            try:
                worker = await waiter
            except defer.TimeoutError:
                raise TSIUnreachable(f"{self.name}: no worker free within "
                                     f"{self.request_timeout:g} s") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if worker is not None:
                return worker
        else:
            self._count += 1
        try:
            worker = await self.new_worker()
        except BaseException:
            self._slot_freed()
            raise
        worker.on_broken = self._broken
        return worker

    def _slot_freed(self) -> None:
        """A worker slot became free: let a waiter create a worker, else shrink."""
        if self._waiters:
            self._waiters.popleft().callback(None)
        else:
            self._count -= 1

    def _broken(self, worker: TSIWorker) -> None:
        if worker in self._idle:
            self._idle.remove(worker)
            self._slot_freed()

    def _release(self, worker: TSIWorker) -> None:
        if worker.broken is not None:
            self._slot_freed()
        elif self._waiters:
            self._waiters.popleft().callback(worker)
        elif self._closed:
            worker.close()
        else:
            self._idle.append(worker)

    async def _with_worker(self, use, first: bool = False):
        worker = await self._acquire(first)
        try:
            return await use(worker)
        finally:
            self._release(worker)

    @property
    def idle_workers(self) -> int:
        return len(self._idle)

    @_deferred
    async def close(self) -> None:
        """Close all workers and the listener (running jobs are not touched)."""
        self._closed = True
        while self._waiters:
            self._waiters.popleft().errback(TSIConnectionLost(f"{self.name}: client closed"))
        for worker in list(self._idle):
            worker.on_broken = None
            worker.close()
        self._idle.clear()
        await self.listener.stop()

    # ------------------------------------------------------------------ plumbing

    def _message(self, body: str) -> bytes:
        return protocol.build_request(body, self.user, self.groups)

    async def _request(self, body: str, what: str, timeout: float | None = None,
                       first: bool = False):
        message = self._message(body)
        return await self._with_worker(
            lambda w: w.request(message, what, timeout or self.request_timeout), first)

    async def _extension(self, name: str, body: str, timeout: float | None = None):
        """The reply to one of our extensions, or None once the TSI does not know it (then
        remembered, so the caller's standard way is used from then on)."""
        if name in self.unsupported:
            return None
        try:
            return await self._request(body, name, timeout)
        except TSICommandFailed as err:
            if "Unknown #TSI_" in err.message or f"#TSI_{name} is not supported" in err.message:
                self.unsupported.add(name)
                return None
            raise

    # ------------------------------------------------------------------ commands

    @_deferred
    async def ping(self) -> str:
        """The TSI's version string; the PING takes the next free worker before requests
        already waiting (it tells whether the TSI answers, not how long its queue is)."""
        return (await self._request(protocol.ping_body(), "PING", first=True)).payload.strip()

    @_deferred
    async def execute_script(self, script: str, discard_output: bool = False,
                             timeout: float | None = None) -> str:
        """Run ``script`` with bash in the TSI; returns its combined output."""
        reply = await self._request(protocol.execute_script_body(script, discard_output),
                                    "EXECUTESCRIPT", timeout)
        return reply.payload

    @_deferred
    async def submit(self, script: str, *, uspace_dir: str, outcome_dir: str | None = None,
                     stdout: str = "stdout", stderr: str = "stderr",
                     job_name: str = "UNICORE_Job", email: str | None = None,
                     runtime: int | None = None, memory_mb: int | None = None,
                     nodes: int | None = None, processors_per_node: int | None = None,
                     total_processors: int | None = None, queue: str | None = None,
                     project: str | None = None, umask: str | None = None,
                     extra: dict[str, object] | None = None,
                     shebang: str = "#!/bin/bash") -> str:
        """Submit a batch job with the ``#TSI_*`` parameters UNICORE/X sends; returns the
        BSSID, which is remembered as ours (see ``get_status_listing``)."""
        params = _submit_params(
            uspace_dir=uspace_dir, outcome_dir=outcome_dir, stdout=stdout, stderr=stderr,
            job_name=job_name, email=email, runtime=runtime, memory_mb=memory_mb,
            nodes=nodes, processors_per_node=processors_per_node,
            total_processors=total_processors, queue=queue, project=project, umask=umask,
            extra=extra)
        reply = await self._request(protocol.submit_body(script, params, shebang), "SUBMIT")
        return self._submitted(reply)

    @_deferred
    async def submit_with_files(self, script: str, files: list[tuple[str, bytes, int]], *,
                                uspace_dir: str, **params) -> str | None:
        """``submit`` (its keyword arguments, but ``shebang``) with ``uspace_dir`` made and
        ``files`` (name relative to it, content, mode) written first, all in one exchange
        (GRIDVM_SUBMIT); None from a TSI without it (then make the directory, write the
        files and ``submit``, one by one)."""
        body = protocol.gridvm_submit_body(
            script, _submit_params(uspace_dir=uspace_dir, **params), files)
        reply = await self._extension("GRIDVM_SUBMIT", body)
        return None if reply is None else self._submitted(reply)

    def _submitted(self, reply: protocol.Reply) -> str:
        """The BSSID a SUBMIT answered, remembered as ours."""
        bssid = reply.payload.strip()
        if not bssid or len(bssid.split()) != 1:
            raise TSIError(f"SUBMIT returned no job id: {reply.payload[:80]!r}")
        self.submitted.add(bssid)
        return bssid

    @_deferred
    async def wait_status(self, seconds: float) -> dict[str, JobStatus] | None:
        """The status listing (as ``get_status_listing``) as soon as a job has ended since
        the last answer (the first call answers at once), at the latest after ``seconds``
        — pushed by our agent (GRIDVM_WAITSTATUS); None from a TSI that only answers
        GETSTATUSLISTING (poll that instead)."""
        seconds = min(seconds, protocol.MAX_JOB_WAIT)
        reply = await self._extension(
            "GRIDVM_WAITSTATUS", protocol.wait_status_body(self._ended_seen, seconds),
            seconds + self.request_timeout)
        if reply is None:
            return None
        try:
            self._ended_seen, listing = protocol.parse_wait_status(reply.payload)
        except protocol.ProtocolError as err:
            raise TSIError(f"{self.name}: {err}") from None
        return {b: JobStatus(*entry) for b, entry in listing.items() if b in self.submitted}

    def track(self, bssid: str) -> None:
        """Treat ``bssid`` as ours (e.g. a job re-adopted after a server restart)."""
        self.submitted.add(bssid)

    def forget(self, bssid: str) -> None:
        self.submitted.discard(bssid)

    @_deferred
    async def get_status_listing(self, all_jobs: bool = False) -> dict[str, JobStatus]:
        """``{bssid: JobStatus}`` of our jobs still known to the TSI (a finished job is
        absent).  Other ids (other servers' jobs, the official TSI's zombies) are dropped
        unless ``all_jobs``."""
        reply = await self._request(protocol.status_listing_body(), "GETSTATUSLISTING")
        listing = protocol.parse_status_listing(reply.payload)
        return {bssid: JobStatus(*entry) for bssid, entry in listing.items()
                if all_jobs or bssid in self.submitted}

    def _ours(self, bssid: str) -> None:
        if bssid not in self.submitted:
            raise TSIError(f"job {bssid} was not submitted through this client",
                           reason=Reason.BAD_REQUEST)

    @_deferred
    async def abort_job(self, bssid: str) -> None:
        self._ours(bssid)
        await self._request(protocol.job_command_body("ABORTJOB", bssid), "ABORTJOB")

    @_deferred
    async def hold_job(self, bssid: str) -> None:
        self._ours(bssid)
        await self._request(protocol.job_command_body("HOLDJOB", bssid), "HOLDJOB")

    @_deferred
    async def resume_job(self, bssid: str) -> None:
        self._ours(bssid)
        await self._request(protocol.job_command_body("RESUMEJOB", bssid), "RESUMEJOB")

    @_deferred
    async def job_details(self, bssid: str) -> str:
        reply = await self._request(protocol.job_command_body("GETJOBDETAILS", bssid),
                                    "GETJOBDETAILS")
        return reply.payload

    @_deferred
    async def ls(self, path: str, mode: str = "A") -> list[protocol.FileInfo]:
        """A = the path itself, N = a directory's entries, R = recursive."""
        reply = await self._request(protocol.ls_body(path, mode), "LS")
        return protocol.parse_ls(reply.payload)

    @_deferred
    async def df(self, path: str) -> dict[str, int]:
        reply = await self._request(protocol.df_body(path), "DF")
        return protocol.parse_df(reply.payload)

    @_deferred
    async def get_user_info(self) -> dict[str, object]:
        reply = await self._request(protocol.user_info_body(), "GET_USER_INFO")
        return protocol.parse_user_info(reply.payload)

    @_deferred
    async def make_directories(self, paths: list[str]) -> None:
        """``mkdir -p`` of each path: without a shell on our agent (GRIDVM_MKDIR, one
        request per path), else one script for all."""
        for at, path in enumerate(paths):
            body = protocol.path_body("GRIDVM_MKDIR", path)
            if await self._extension("GRIDVM_MKDIR", body) is None:
                await self.execute_script("mkdir -p " + " ".join(map(shlex.quote, paths[at:])))
                return

    @_deferred
    async def remove_tree(self, path: str) -> dict[str, int] | None:
        """``rm -rf -- path``: without a shell on our agent (GRIDVM_REMOVE), which also
        answers with the free space (as ``df``) of the parent directory; None when the
        answer has none (a shell did it)."""
        body = protocol.path_body("GRIDVM_REMOVE", path)
        reply = await self._extension("GRIDVM_REMOVE", body)
        if reply is None:
            await self.execute_script(f"rm -rf -- {shlex.quote(path)}")
            return None
        if "TOTAL" not in reply.payload:  # an agent from before it answered the space
            return None
        try:
            return protocol.parse_df(reply.payload)
        except protocol.ProtocolError:
            return None

    # ------------------------------------------------------------------ files

    @_deferred
    async def get_file_chunk(self, path: str, offset: int, length: int) -> bytes:
        message = self._message(protocol.get_chunk_body(path, offset, length))
        return await self._with_worker(lambda w: w.get_chunk(message, self.request_timeout))

    @_deferred
    async def put_file_chunk(self, path: str, data: bytes, mode: int = 0o644,
                             append: bool = False) -> None:
        message = self._message(protocol.put_chunk_body(path, len(data), mode, append))
        await self._with_worker(lambda w: w.put_chunk(message, data, self.request_timeout))

    @_deferred
    async def read_file(self, path: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        """A whole (small) remote file; TSIError if it is larger than ``max_bytes``."""
        pieces: list[bytes] = []
        size = 0

        async def read(worker: TSIWorker) -> None:
            nonlocal size
            while True:
                message = self._message(protocol.get_chunk_body(path, size, self.chunk_size))
                piece = await worker.get_chunk(message, self.request_timeout)
                pieces.append(piece)
                size += len(piece)
                if size > max_bytes:
                    raise TSIError(f"{path} is larger than {max_bytes} bytes", Reason.BAD_REQUEST)
                if len(piece) < self.chunk_size:
                    return

        await self._with_worker(read)
        return b"".join(pieces)

    @_deferred
    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        async def write(worker: TSIWorker) -> None:
            for offset in range(0, max(len(data), 1), self.chunk_size):
                piece = data[offset: offset + self.chunk_size]
                message = self._message(
                    protocol.put_chunk_body(path, len(piece), mode, append=offset > 0))
                await worker.put_chunk(message, piece, self.request_timeout)

        await self._with_worker(write)

    @_deferred
    async def upload(self, local: str | BinaryIO, path: str, mode: int = 0o644) -> int:
        """Stream a local file (a path, or a readable binary file from its current position)
        to the TSI in chunks (local reads off the reactor thread); returns the bytes sent."""
        opened = isinstance(local, str)
        handle = await threads.deferToThread(open, local, "rb") if opened else local
        total = 0

        async def send(worker: TSIWorker) -> None:
            nonlocal total
            first = True
            while True:
                piece = await threads.deferToThread(handle.read, self.chunk_size)
                if not piece and not first:
                    return
                message = self._message(
                    protocol.put_chunk_body(path, len(piece), mode, append=not first))
                await worker.put_chunk(message, piece, self.request_timeout)
                total += len(piece)
                first = False
                if len(piece) < self.chunk_size:
                    return

        try:
            await self._with_worker(send)
        finally:
            if opened:
                handle.close()
        return total

    @_deferred
    async def download(self, path: str, local_path: str) -> int:
        """Stream a remote file into ``local_path`` in chunks; returns the number of bytes."""
        temporary = f"{local_path}.part"
        handle = await threads.deferToThread(open, temporary, "wb")
        total = 0

        async def fetch(worker: TSIWorker) -> None:
            nonlocal total
            while True:
                message = self._message(protocol.get_chunk_body(path, total, self.chunk_size))
                piece = await worker.get_chunk(message, self.request_timeout)
                await threads.deferToThread(handle.write, piece)
                total += len(piece)
                if len(piece) < self.chunk_size:
                    return

        try:
            await self._with_worker(fetch)
        except BaseException:
            handle.close()
            await threads.deferToThread(_remove, temporary)
            raise
        handle.close()
        await threads.deferToThread(os.replace, temporary, local_path)
        return total

    @_deferred
    async def get_directory(self, path: str, local_path: str, timeout: float = 3600.0,
                            then_remove: bool = False) -> DirectoryArchive:
        """The remote directory as one tar stream into ``local_path`` (our agent only:
        TSICommandFailed from a TSI without GRIDVM_GETDIRECTORY, see ``streams``).  No
        frame may take longer than ``request_timeout``, the whole stream ``timeout``.
        ``then_remove``: the agent removes the directory once the stream is complete (see
        ``DirectoryArchive.removed``: an agent may not have)."""
        handle = await threads.deferToThread(open, local_path, "wb")

        async def write(piece: bytes) -> None:
            await threads.deferToThread(handle.write, piece)

        message = self._message(protocol.get_directory_body(path, then_remove))
        try:
            payload = await self._with_worker(
                lambda w: w.get_stream(message, write, self.request_timeout, timeout))
        except TSICommandFailed as err:
            if "GRIDVM_GETDIRECTORY" in err.message or "Unknown #TSI_" in err.message:
                self.streams = False
            raise
        finally:
            handle.close()
        self.streams = True
        try:
            entries, files, size = protocol.parse_report(payload)
            removed = protocol.parse_removed(payload) if then_remove else None
        except protocol.ProtocolError as err:
            raise TSIError(f"{path}: {err}") from None
        return DirectoryArchive(files, size, entries, removed)

    # ------------------------------------------------------------------ jobs, end to end

    @_deferred
    async def wait_for_job(self, bssid: str, poll_interval: float = 1.0,
                           timeout: float | None = None) -> None:
        """Poll the status listing until ``bssid`` is gone (finished)."""
        self._ours(bssid)
        deadline = None if timeout is None else self.reactor.seconds() + timeout
        while bssid in await self.get_status_listing():
            if deadline is not None and self.reactor.seconds() >= deadline:
                raise TSIError(f"job {bssid} still running after {timeout:g} s",
                               reason=Reason.RUNTIME_EXCEEDED)
            await _sleep(self.reactor, poll_interval)

    @_deferred
    async def exit_code(self, outcome_dir: str, grace: float = 120.0,
                        poll_interval: float = 1.0) -> int | None:
        """The exit code from ``<outcome_dir>/UNICORE_SCRIPT_EXIT_CODE``, waiting up to
        ``grace`` seconds for the file to appear (UNICORE/X's rule); None if it never does."""
        path = f"{outcome_dir.rstrip('/')}/{protocol.EXIT_CODE_FILE}"
        deadline = self.reactor.seconds() + grace
        while True:
            try:
                text = (await self.get_file_chunk(path, 0, 64)).decode("ascii", "replace")
            except TSICommandFailed:
                text = ""
            if text.strip():
                try:
                    return int(text.split()[0])
                except ValueError:
                    raise TSIError(f"{path} holds no exit code: {text[:40]!r}") from None
            if self.reactor.seconds() >= deadline:
                return None
            await _sleep(self.reactor, poll_interval)


def _submit_params(*, uspace_dir: str, outcome_dir: str | None = None, stdout: str = "stdout",
                   stderr: str = "stderr", job_name: str = "UNICORE_Job",
                   email: str | None = None, runtime: int | None = None,
                   memory_mb: int | None = None, nodes: int | None = None,
                   processors_per_node: int | None = None, total_processors: int | None = None,
                   queue: str | None = None, project: str | None = None,
                   umask: str | None = None, extra: dict[str, object] | None = None
                   ) -> dict[str, object]:
    """The ``#TSI_*`` parameters of a SUBMIT, as UNICORE/X sends them."""
    params: dict[str, object] = {
        "OUTCOME_DIR": outcome_dir or uspace_dir, "USPACE_DIR": uspace_dir,
        "STDOUT": stdout, "STDERR": stderr, "JOBNAME": job_name, "EMAIL": email or "NONE",
    }
    if project:
        params["PROJECT"] = project
    if runtime and runtime > 0:
        params["TIME"] = int(runtime)
    if memory_mb and memory_mb > 0:
        params["MEMORY"] = int(memory_mb)
    params.update({"NODES": nodes or -1, "PROCESSORS_PER_NODE": processors_per_node or -1,
                   "TOTAL_PROCESSORS": total_processors or -1, "QUEUE": queue or "NONE"})
    if umask:
        params["UMASK"] = umask
    for name, value in (extra or {}).items():
        if not name.isidentifier() or name.upper() != name:
            raise ValueError(f"bad #TSI_ parameter name {name!r}")
        params[name] = value
    return params


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sleep(reactor, seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
