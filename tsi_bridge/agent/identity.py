"""Who a request runs as, and doing things as that user.

* Unprivileged (the agent is not root, or ``switch_uid`` is false): everything runs as the
  agent's own user; the identity is ignored.
* Privileged with ``job_user``: every request runs as that one user (a single-tenant guest).
* Privileged without ``job_user``: the ``#TSI_IDENTITY`` user, like the official TSI; unknown
  users and root are refused, and (unlike the official TSI) only groups the user is a member
  of are granted.

The agent is multi-threaded, so it never changes its own uid: processes get the user through
``subprocess.Popen(user=..., group=..., extra_groups=...)``; file operations run in a short
forked child that switches uid and either returns its result or passes back an open file
descriptor — a long-lived helper of that user (``tsi_bridge.agent.helpers``) once the agent
has set one up with :func:`use_helpers`, a fork per call otherwise.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import time

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


class RequestFailed(Exception):
    """A request that gets ``TSI_FAILED: <message>``; the worker keeps serving."""


class RunAs:
    """A user to run as: uid, gid, supplementary groups, home and whether to switch."""

    __slots__ = ("gid", "groups", "home", "switch", "uid", "user")

    def __init__(self, user: str, uid: int, gid: int, groups: list[int], home: str,
                 switch: bool) -> None:
        self.user, self.uid, self.gid, self.groups = user, uid, gid, groups
        self.home, self.switch = home, switch

    def to_record(self) -> dict[str, object]:
        return {"user": self.user, "uid": self.uid, "gid": self.gid, "groups": self.groups,
                "home": self.home, "switch": self.switch}

    @classmethod
    def from_record(cls, record: dict) -> RunAs:
        return cls(record["user"], record["uid"], record["gid"], list(record["groups"]),
                   record["home"], record["switch"])

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = {"HOME": self.home, "USER": self.user, "LOGNAME": self.user,
               "PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "SHELL": "/bin/sh"}
        env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def popen_arguments(self) -> dict[str, object]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups}

    def substitute(self, text: str) -> str:
        """``$HOME``, ``$LOGNAME`` and ``$USER`` replaced textually (the official rule)."""
        return (text.replace("$HOME", self.home).replace("$LOGNAME", self.user)
                .replace("$USER", self.user))


class IdentityResolver:
    """Maps a request's ``#TSI_IDENTITY`` to a RunAs according to the agent's mode."""

    def __init__(self, switch_uid: bool, job_user: str | None, job_group: str | None) -> None:
        self.privileged = switch_uid and os.geteuid() == 0
        self.job_user = job_user if self.privileged else None
        self.job_group = job_group
        self._self = self._own_user()
        #: users resolved since /etc/passwd and /etc/group last changed (two stats per
        #: request instead of reading both files: ~3 ms a request in an emulated guest)
        self._known: dict[tuple, RunAs] = {}
        self._stamp: tuple | None = None

    @property
    def mode(self) -> str:
        if not self.privileged:
            return f"unprivileged (as {self._self.user})"
        return f"privileged (as {self.job_user})" if self.job_user else "privileged (identity)"

    def resolve(self, identity: tuple[str, str] | None) -> RunAs:
        if not self.privileged:
            return self._self
        if self.job_user:
            return self._cached(self.job_user, self.job_group)
        if identity is None:
            raise RequestFailed("No user/group info given")
        user, groups = identity
        return self._cached(user, None, groups)

    def _cached(self, user: str, group: str | None, groups: str = "NONE") -> RunAs:
        """``_user``, remembered until the user or group database changes."""
        stamp = (int(time.monotonic() // CACHE_SECONDS),  # NSS beyond the files: LDAP...
                 *(_file_stamp(path) for path in USER_DATABASES))
        if stamp != self._stamp:
            self._known, self._stamp = {}, stamp
        key = (user, group, groups)
        runas = self._known.get(key)
        if runas is None:
            runas = self._known[key] = self._user(user, group, groups)
        return runas

    def check(self) -> str | None:
        """A problem with the configured job user, or None."""
        if self.job_user:
            try:
                self._user(self.job_user, self.job_group)
            except RequestFailed as err:
                return str(err)
        return None

    @staticmethod
    def _own_user() -> RunAs:
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:
            name, home = str(uid), "/"
        name = os.environ.get("USER", name)
        home = os.environ.get("HOME", home)
        return RunAs(name, uid, os.getgid(), os.getgroups(), home, False)

    @staticmethod
    def _user(user: str, group: str | None, groups: str = "NONE") -> RunAs:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise RequestFailed(f"Attempted to run a task for an unknown user {user}") from None
        if entry.pw_uid == 0:
            raise RequestFailed(f"Attempted to run a command as root {user}")
        member_of = os.getgrouplist(user, entry.pw_gid)
        primary = entry.pw_gid
        if group:
            primary = _gid(group)
        supplementary = list(member_of)
        if groups not in ("NONE", "DEFAULT_GID"):
            names = groups.split(":")
            wanted = [_gid(name) for name in names if name != "DEFAULT_GID"]
            for gid in wanted:
                if gid not in member_of:
                    raise RequestFailed(f"User {user} is not a member of group {gid}")
            if wanted:
                primary = wanted[0]
            supplementary = wanted + (member_of if "DEFAULT_GID" in names else [])
        unique = sorted(set(supplementary) | {primary})
        return RunAs(user, entry.pw_uid, primary, unique, entry.pw_dir, True)


#: The files ``_user`` reads through NSS; a change to either forgets every resolved user.
USER_DATABASES = ("/etc/passwd", "/etc/group")
#: Seconds a resolved user is kept at most (for user databases that are not those files).
CACHE_SECONDS = 60


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise RequestFailed(f"Unknown group {group}") from None


#: The helpers that do call_as/open_as without a fork (None: fork every time).
_helpers = None


def use_helpers(pool) -> None:
    """Route :func:`call_as` and :func:`open_as` through ``pool`` (a ``HelperPool``, or
    None to fork per call again)."""
    global _helpers
    _helpers = pool


def _unpack(outcome: dict, path: str | None = None):
    """The result a helper or child reported, or the error it reported raised."""
    if "ok" in outcome:
        return outcome["ok"]
    if "errno" in outcome:
        raise OSError(outcome["errno"], outcome["strerror"], outcome.get("filename", path))
    raise RequestFailed(outcome["error"])


def become(runas: RunAs) -> None:
    os.setgroups(runas.groups)
    os.setgid(runas.gid)
    os.setuid(runas.uid)


def call_as(runas: RunAs, function, *args):
    """``function(*args)`` with ``runas``'s permissions; its result must be JSON-able.
    OSErrors come back as OSErrors."""
    if not runas.switch:
        return function(*args)
    if _helpers is not None:
        from tsi_bridge.agent.helpers import HelperUnavailable

        try:
            return _unpack(_helpers.call(runas, function, args))
        except HelperUnavailable:
            pass  # fork, as without helpers
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            try:
                become(runas)
                outcome = {"ok": function(*args)}
            except OSError as err:
                outcome = {"errno": err.errno, "strerror": err.strerror,
                           "filename": err.filename}
            except Exception as err:
                outcome = {"error": f"{type(err).__name__}: {err}"}
            data = json.dumps(outcome).encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    try:
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        outcome = json.loads(b"".join(chunks))
    except ValueError:
        raise RequestFailed("internal error: the helper process died") from None
    return _unpack(outcome)


def fork_as(runas: RunAs, keep: list[int], function, *args) -> int:
    """Start ``function(*args)`` in a child with ``runas``'s permissions and only the
    descriptors ``keep`` (besides 0-2) open; its return value is the child's exit status.
    Returns the child's pid (the caller waits for it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            low = 3
            for fd in sorted(keep):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
            if runas.switch:
                become(runas)
            status = function(*args)
        finally:
            os._exit(status)
    return pid


def run_as(runas: RunAs, keep: list[int], function, *args) -> int:
    """``function(*args, *keep)`` with ``runas``'s permissions until it returns, in a
    helper or a forked child (see :func:`fork_as`); returns its exit status."""
    return start_as(runas, keep, function, *args)()


def start_as(runas: RunAs, keep: list[int], function, *args):
    """:func:`run_as` started: once this returns, ``function`` has its own copies of
    ``keep`` (the caller may close its); the returned function waits for the exit status."""
    if runas.switch and _helpers is not None:
        from tsi_bridge.agent.helpers import HelperUnavailable

        try:
            finish = _helpers.begin_call(runas, function, args, keep)
        except HelperUnavailable:
            pass  # fork, as without helpers
        else:
            return lambda: _unpack(finish())
    pid = fork_as(runas, keep, function, *args, *keep)
    return lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def open_as(runas: RunAs, path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` with ``runas``'s permissions: a child switches uid, opens the file and
    passes the descriptor back over a socket pair."""
    if not runas.switch:
        return os.open(path, flags, mode)
    if _helpers is not None:
        from tsi_bridge.agent.helpers import HelperUnavailable

        try:
            outcome, fd = _helpers.open(runas, path, flags, mode)
        except HelperUnavailable:
            pass  # fork, as without helpers
        else:
            if fd is not None:
                return fd
            _unpack(outcome, path)
            raise RequestFailed(f"internal error: no descriptor for {path}")
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            parent.close()
            try:
                become(runas)
                fd = os.open(path, flags, mode)
                socket.send_fds(child, [b"0"], [fd])
            except OSError as err:
                child.sendall(json.dumps([err.errno, err.strerror]).encode())
        finally:
            os._exit(0)
    child.close()
    try:
        message, fds, _flags, _address = socket.recv_fds(parent, 4096, 1)
    finally:
        parent.close()
        os.waitpid(pid, 0)
    if fds:
        return fds[0]
    try:
        errno, strerror = json.loads(message)
    except ValueError:
        raise RequestFailed("internal error: the helper process died") from None
    raise OSError(errno, strerror, path)
