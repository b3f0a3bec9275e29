"""Job processes started by a long-lived launcher process of their user.

``subprocess.Popen(user=...)`` cannot use ``vfork``: the whole agent is forked for every job,
which costs ~50 ms in a software-emulated guest.  A launcher is forked once per user (like
the helpers of ``tsi_bridge.agent.helpers``), switches uid and then starts each job with
``os.posix_spawn`` (``vfork`` and ``exec``, no page tables copied), watching it through a
pidfd; it also makes the job's directories, inline files, job file and output files first
(``jobs.prepare_job``), so a submit is one call.  When a job ends, the launcher writes its
exit code file (as the user, unless the job wrote it) and tells the agent, whose
:class:`LaunchedProcess` then answers ``poll`` and ``wait`` as a ``Popen`` would.

Messages are those of the helpers (a 4-byte length and JSON): the ``start`` of
``prepare_job`` with ``spawn`` (argv), ``cwd``, ``env`` and ``exit_file``, answered
``{"pid": n}`` or an error (``staging``: a directory or inline file failed); then, at any time,
``{"exited": pid, "returncode": rc, "exit_code_error": text-or-null}``.  A launcher that
dies leaves its jobs ``orphaned`` (the job table then watches them by pid, as after an
agent restart); one that cannot be had raises :class:`HelperUnavailable` (start with a
fork as before).
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import socket
import threading
from collections.abc import Callable

from tsi_bridge.agent.helpers import (
    CALL_TIMEOUT,
    HelperUnavailable,
    _receive,
    _send,
    fork_as,
)
from tsi_bridge.agent.identity import RequestFailed, RunAs
from tsi_bridge.agent.jobs import StagingFailed, exit_status, prepare_job, write_exit_code

HAVE_PIDFD = hasattr(os, "pidfd_open")


class LaunchedProcess:
    """A job started by a launcher: what the job table uses of ``subprocess.Popen``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None  #: as Popen's: -N when killed by signal N
        self.exit_code_written = False  #: the launcher wrote the exit code file
        self.exit_code_error: str | None = None  #: why it could not
        self.orphaned = False  #: its launcher died before it ended
        self.on_end: Callable[[], None] | None = None
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int | None:
        self._ended.wait()
        return self.returncode

    def _end(self) -> None:
        self._ended.set()
        if self.on_end is not None:
            self.on_end()


def _spawn(request: dict) -> int:
    """The job prepared and started (in the launcher, as the user)."""
    out_fd, err_fd = prepare_job(request)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out_fd, 1), (os.POSIX_SPAWN_DUP2, err_fd, 2)]
    try:
        os.chdir(request["cwd"])  # posix_spawn has no cwd action before Python 3.13
        return os.posix_spawnp(request["spawn"][0], request["spawn"], request["env"],
                               file_actions=actions, setsid=True)
    finally:
        os.chdir("/")
        os.close(out_fd)
        if err_fd != out_fd:
            os.close(err_fd)


def _ended(pid: int, exit_file: str) -> dict:
    """Reap ``pid`` and write its exit code file unless the job did."""
    _pid, status = os.waitpid(pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    event: dict = {"exited": pid, "returncode": returncode, "exit_code_error": None}
    try:
        write_exit_code(exit_file, f"{exit_status(returncode)}\n")
    except OSError as err:
        event["exit_code_error"] = err.strerror or str(err)
    return event


def _serve(sock: socket.socket) -> None:  # pragma: no cover - runs in the launcher
    """The launcher's loop: spawn requests and job ends, until the agent hangs up."""
    children: dict[int, tuple[int, str]] = {}  # pidfd -> (pid, exit file)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while True:
            for key, _events in selector.select():
                if key.fileobj is sock:
                    received = _receive(sock)
                    if received is None:
                        return
                    request, fds = received
                    for fd in fds:
                        os.close(fd)
                    try:
                        pid = _spawn(request)
                        pidfd = os.pidfd_open(pid)
                    except OSError as err:
                        _send(sock, {"errno": err.errno, "strerror": err.strerror,
                                     "filename": err.filename if isinstance(
                                         err.filename, str) else None,
                                     "staging": isinstance(err, StagingFailed)})
                        continue
                    except Exception as err:  # a bad request never ends the launcher
                        _send(sock, {"error": f"{type(err).__name__}: {err}"})
                        continue
                    children[pidfd] = (pid, request["exit_file"])
                    selector.register(pidfd, selectors.EVENT_READ)
                    _send(sock, {"pid": pid})
                else:
                    pidfd = key.fd
                    selector.unregister(pidfd)
                    os.close(pidfd)
                    pid, exit_file = children.pop(pidfd)
                    _send(sock, _ended(pid, exit_file))


class Launcher:
    """The launcher process of one user, and the agent's thread that reads its messages."""

    def __init__(self, runas: RunAs) -> None:
        pid, ours = fork_as(runas, _serve)
        self.pid, self.sock = pid, ours
        self.alive = True
        self._lock = threading.Lock()  # one spawn request at a time
        self._replies: queue.Queue = queue.Queue()
        self._running: dict[int, LaunchedProcess] = {}
        self._running_lock = threading.Lock()  # read by this thread, and at its end
        threading.Thread(target=self._read, name=f"launcher-{pid}", daemon=True).start()

    def start(self, request: dict) -> LaunchedProcess:
        """Prepare and start the job of ``request`` in its own session; OSError as the
        launcher met it, RequestFailed ``staging in: ...`` for a directory or file."""
        with self._lock:
            if not self.alive:
                raise HelperUnavailable(f"launcher {self.pid} ended")
            try:
                _send(self.sock, request)
                reply = self._replies.get(timeout=CALL_TIMEOUT)
            except OSError as err:
                self.close()
                raise HelperUnavailable(f"launcher {self.pid}: {err}") from None
            except queue.Empty:
                self.close()
                raise HelperUnavailable(f"launcher {self.pid} did not answer") from None
        if reply is None:
            raise HelperUnavailable(f"launcher {self.pid} ended")
        if isinstance(reply, dict) and "error" in reply:
            raise RequestFailed(reply["error"])
        if isinstance(reply, dict):
            error = OSError(reply.get("errno", 0), reply.get("strerror", "spawn failed"),
                            reply.get("filename"))
            if reply.get("staging"):
                raise RequestFailed(f"staging in: {error}")
            raise error
        return reply

    def _read(self) -> None:
        try:
            while True:
                received = _receive(self.sock)
                if received is None:
                    break
                message, fds = received
                for fd in fds:
                    os.close(fd)
                if "exited" in message:
                    self._exited(message)
                elif "pid" in message:  # registered here: its end may be the next message
                    process = LaunchedProcess(message["pid"])
                    with self._running_lock:
                        self._running[process.pid] = process
                    self._replies.put(process)
                else:
                    self._replies.put(message)
        except (OSError, ValueError):
            pass
        self.alive = False
        self._replies.put(None)
        with self._running_lock:
            orphans = list(self._running.values())
            self._running.clear()
        for process in orphans:
            process.orphaned = True
            process._end()

    def _exited(self, message: dict) -> None:
        with self._running_lock:
            process = self._running.pop(message["exited"], None)
        if process is None:
            return
        process.returncode = message["returncode"]
        process.exit_code_error = message["exit_code_error"]
        process.exit_code_written = process.exit_code_error is None
        process._end()

    def close(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


class LauncherPool:
    """One launcher per user, made when that user's first job starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._launchers: dict[tuple, Launcher] = {}
        self._closed = False

    def start(self, runas: RunAs, request: dict) -> LaunchedProcess:
        """The job prepared and started by ``runas``'s launcher (see ``Launcher.start``);
        HelperUnavailable: do that otherwise."""
        if not HAVE_PIDFD:
            raise HelperUnavailable("no pidfd_open on this system")
        key = (runas.uid, runas.gid, tuple(runas.groups))
        with self._lock:
            if self._closed:
                raise HelperUnavailable("launchers closed")
            launcher = self._launchers.get(key)
            if launcher is None or not launcher.alive:
                try:
                    launcher = self._launchers[key] = Launcher(runas)
                except OSError as err:
                    raise HelperUnavailable(f"cannot start a launcher: {err}") from None
        return launcher.start(request)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            launchers = list(self._launchers.values())
            self._launchers.clear()
        for launcher in launchers:
            launcher.close()
