"""Long-lived helper processes that do a job user's file work for the agent.

The agent is multi-threaded and never changes its own uid, so whatever it does as a user
runs in a process that has switched.  A fork per request costs ~50 ms in a
software-emulated guest (page tables copied, every page touched afterwards faulted), which
made opening one file or making one directory the largest part of a small job.  A helper
is forked once per user instead: it switches uid (the kernel then makes it non-dumpable,
so the user's own processes cannot trace it), closes every descriptor it inherited and
serves calls one at a time over a socket pair, ~1 ms each:

* ``call``: a module-level function of the agent (``module:name``), JSON arguments and
  result — what ``identity.call_as`` runs;
* ``open``: ``os.open`` whose descriptor comes back through ``SCM_RIGHTS`` — ``open_as``;
* a ``call`` may take descriptors along (``SCM_RIGHTS``, appended to its arguments): the
  pipes a directory archive is written into.

Messages are a 4-byte big-endian length and JSON.  Up to ``per_user`` helpers run per user,
one more made while all are busy; when none can be had, or a helper dies or stalls (the
user may kill or stop it), :class:`HelperUnavailable` tells the caller to fork as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading

from tsi_bridge.agent.identity import RunAs, become

LENGTH = struct.Struct(">I")
#: Largest message either side accepts (an LS of a big directory tree).
MAX_MESSAGE = 256 * 1024 * 1024
#: Helpers kept per user.
PER_USER = 4
#: Seconds one call may take before its helper is killed (a stopped helper never answers).
CALL_TIMEOUT = 600.0


class HelperUnavailable(Exception):
    """No helper could do the call: do it the slow way (fork)."""


def _receive_exactly(sock: socket.socket, length: int) -> bytes | None:
    data = bytearray()
    while len(data) < length:
        piece = sock.recv(length - len(data))
        if not piece:
            return None
        data += piece
    return bytes(data)


def _send(sock: socket.socket, value: object, fds: list[int] = ()) -> None:
    """One message (and ``fds``) in one system call when the socket takes it whole."""
    body = json.dumps(value).encode()
    message = LENGTH.pack(len(body)) + body
    sent = socket.send_fds(sock, [message], list(fds)) if fds else sock.send(message)
    if sent < len(message):
        sock.sendall(message[sent:])


def _receive(sock: socket.socket) -> tuple[object, list[int]] | None:
    """One message and the descriptors that came with it; None at EOF."""
    header, fds, _flags, _address = socket.recv_fds(sock, LENGTH.size, 4)
    if not header:
        return None
    if len(header) < LENGTH.size:
        rest = _receive_exactly(sock, LENGTH.size - len(header))
        if rest is None:
            return None
        header += rest
    (length,) = LENGTH.unpack(header)
    if length > MAX_MESSAGE:
        raise ValueError(f"helper message of {length} bytes")
    body = _receive_exactly(sock, length)
    if body is None:
        return None
    return json.loads(body), fds


def _function(name: str):
    module, _, function = name.partition(":")
    return getattr(sys.modules[module], function)


def _serve(sock: socket.socket) -> None:
    """The helper's loop (in the child, already the user): one call at a time until EOF."""
    while True:
        received = _receive(sock)
        if received is None:
            return
        request, given = received
        fds: list[int] = []
        try:
            if "open" in request:
                fds.append(os.open(request["open"], request["flags"], request["mode"]))
                outcome: dict = {"ok": None}
            else:
                outcome = {"ok": _function(request["call"])(*request["args"], *given)}
        except OSError as err:
            outcome = {"errno": err.errno, "strerror": err.strerror,
                       "filename": err.filename if isinstance(err.filename, str) else None}
        except Exception as err:
            outcome = {"error": f"{type(err).__name__}: {err}"}
        try:
            _send(sock, outcome, fds)
        except (TypeError, ValueError) as err:  # a result JSON cannot carry
            _send(sock, {"error": f"{type(err).__name__}: {err}"})
        finally:
            for fd in fds + given:
                os.close(fd)


def fork_as(runas: RunAs, serve) -> tuple[int, socket.socket]:
    """A child process switched to ``runas`` that runs ``serve`` on its end of a socket pair
    (every other descriptor closed, default signal handling): its pid and our end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            keep = theirs.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            become(runas)
            serve(theirs)
        finally:
            os._exit(0)
    theirs.close()
    return pid, ours


class Helper:
    """One helper process of one user."""

    def __init__(self, runas: RunAs) -> None:
        pid, ours = fork_as(runas, _serve)
        # the kernel's timeouts, not Python's: a socket with a Python timeout polls before
        # every send and receive (another system call with the GIL released); a stalled
        # helper still fails the call, with EAGAIN after CALL_TIMEOUT
        limit = struct.pack("ll", int(CALL_TIMEOUT), 0)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            ours.setsockopt(socket.SOL_SOCKET, option, limit)
        self.pid, self.sock = pid, ours

    def request(self, request: dict, fds: list[int] = ()) -> tuple[dict, list[int]]:
        """Send one request (with ``fds``), return its outcome; HelperUnavailable if the
        helper is gone."""
        self.send(request, fds)
        return self.outcome()

    def send(self, request: dict, fds: list[int] = ()) -> None:
        try:
            _send(self.sock, request, fds)
        except OSError as err:
            self.close()
            raise HelperUnavailable(f"helper {self.pid}: {err}") from None

    def outcome(self) -> tuple[dict, list[int]]:
        """The outcome of the request sent last."""
        try:
            received = _receive(self.sock)
        except (OSError, ValueError) as err:
            self.close()
            raise HelperUnavailable(f"helper {self.pid}: {err}") from None
        if received is None:
            self.close()
            raise HelperUnavailable(f"helper {self.pid} ended")
        outcome, fds = received
        return outcome, fds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError, ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _key(runas: RunAs) -> tuple:
    return runas.uid, runas.gid, tuple(runas.groups)


class HelperPool:
    """The helpers of every user, handed out one call at a time."""

    def __init__(self, per_user: int = PER_USER) -> None:
        self.per_user = per_user
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[Helper]] = {}
        self._count: dict[tuple, int] = {}
        self._closed = False

    def _take(self, runas: RunAs) -> Helper:
        key = _key(runas)
        with self._lock:
            if self._closed:
                raise HelperUnavailable("helpers closed")
            idle = self._idle.setdefault(key, [])
            if idle:
                return idle.pop()
            if self._count.get(key, 0) >= self.per_user:
                raise HelperUnavailable(f"all {self.per_user} helpers of {runas.user} busy")
            self._count[key] = self._count.get(key, 0) + 1
        try:
            return Helper(runas)
        except OSError as err:
            self._gone(key)
            raise HelperUnavailable(f"cannot start a helper: {err}") from None

    def _gone(self, key: tuple) -> None:
        with self._lock:
            self._count[key] -= 1

    def _request(self, runas: RunAs, request: dict, fds: list[int] = ()
                 ) -> tuple[dict, list[int]]:
        return self._begin(runas, request, fds)()

    def _begin(self, runas: RunAs, request: dict, fds: list[int] = ()):
        """Send ``request`` to a helper of ``runas``; returns the function that waits for
        its outcome (and gives the helper back)."""
        helper = self._take(runas)
        key = _key(runas)
        try:
            helper.send(request, fds)
        except HelperUnavailable:
            self._gone(key)
            raise

        def outcome() -> tuple[dict, list[int]]:
            try:
                result = helper.outcome()
            except HelperUnavailable:
                self._gone(key)
                raise
            with self._lock:
                if self._closed:
                    helper.close()
                else:
                    self._idle[key].append(helper)
            return result

        return outcome

    def call(self, runas: RunAs, function, args: tuple, fds: list[int] = ()) -> dict:
        """The outcome of ``function(*args, *fds)`` in a helper of ``runas`` (the helper's
        copies of ``fds`` are closed after the call)."""
        name = f"{function.__module__}:{function.__name__}"
        outcome, fds = self._request(runas, {"call": name, "args": list(args)}, fds)
        for fd in fds:
            os.close(fd)
        return outcome

    def begin_call(self, runas: RunAs, function, args: tuple, fds: list[int] = ()):
        """``call`` in two halves: the request sent now (the caller may close its copies of
        ``fds``), the returned function waits for the outcome."""
        name = f"{function.__module__}:{function.__name__}"
        outcome = self._begin(runas, {"call": name, "args": list(args)}, fds)

        def finish() -> dict:
            result, received = outcome()
            for fd in received:
                os.close(fd)
            return result

        return finish

    def open(self, runas: RunAs, path: str, flags: int, mode: int) -> tuple[dict, int | None]:
        """The outcome of ``os.open`` in a helper of ``runas`` and the descriptor, if any."""
        outcome, fds = self._request(runas, {"open": path, "flags": flags, "mode": mode})
        for extra in fds[1:]:
            os.close(extra)
        return outcome, fds[0] if fds else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            helpers = [h for idle in self._idle.values() for h in idle]
            self._idle.clear()
        for helper in helpers:
            helper.close()
