"""The agent's per-user helpers: file work as the job user without a fork per request."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tsi_bridge import protocol
from tsi_bridge.agent import identity
from tsi_bridge.agent.helpers import HelperPool, HelperUnavailable
from tsi_bridge.agent.identity import RunAs, call_as, open_as
from tsi_bridge.agent.launcher import LauncherPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def nobody() -> RunAs:
    entry = pwd.getpwnam("nobody")
    return RunAs("nobody", entry.pw_uid, entry.pw_gid, [entry.pw_gid], "/", True)


@pytest.fixture
def shared():
    """A directory the job user can reach (pytest's own is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="gridvm-helpers-"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def helpers():
    pool = HelperPool(per_user=2)
    identity.use_helpers(pool)
    yield pool
    identity.use_helpers(None)
    pool.close()


def test_calls_run_as_the_user_in_one_kept_process(helpers, nobody):
    first = call_as(nobody, os.getpid)
    assert call_as(nobody, os.getuid) == nobody.uid
    assert call_as(nobody, os.getpid) == first != os.getpid()  # the same helper, reused
    # it holds no descriptor of the agent (sockets of other workers, the listener): only
    # stdio, its socket pair, and the one listdir opens
    assert len(call_as(nobody, os.listdir, "/proc/self/fd")) == 5


def test_open_passes_the_descriptor_and_errors_come_back_as_oserrors(helpers, nobody, shared):
    tmp_path = shared
    fd = open_as(nobody, str(tmp_path / "made"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x")
    os.close(fd)
    assert (tmp_path / "made").stat().st_uid == nobody.uid
    (tmp_path / "secret").write_text("root's")
    (tmp_path / "secret").chmod(0o600)
    with pytest.raises(PermissionError):
        open_as(nobody, str(tmp_path / "secret"), os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        call_as(nobody, os.listdir, str(tmp_path / "missing"))


def test_a_killed_helper_is_replaced_and_the_call_still_done(helpers, nobody):
    pid = call_as(nobody, os.getpid)
    os.kill(pid, signal.SIGKILL)  # the user may kill their own helper
    again = call_as(nobody, os.getpid)
    assert again != pid and call_as(nobody, os.getuid) == nobody.uid
    assert call_as(nobody, os.getpid) == call_as(nobody, os.getpid)


def test_busy_helpers_make_the_caller_fork(helpers, nobody):
    taken = [helpers._take(nobody) for _ in range(2)]
    with pytest.raises(HelperUnavailable):
        helpers._take(nobody)
    assert call_as(nobody, os.getuid) == nobody.uid  # done by a fork meanwhile
    for helper in taken:
        helper.close()


def _write_uid(text: str, out_fd: int) -> int:
    os.write(out_fd, f"{text} {os.getuid()}".encode())
    return 7


def test_descriptors_go_along_with_a_call_and_are_closed_after_it(helpers, nobody):
    read_end, write_end = os.pipe()
    try:
        assert identity.run_as(nobody, [write_end], _write_uid, "uid") == 7
        os.close(write_end)  # the helper's copy is closed: the reader sees the end
        assert os.read(read_end, 100) == f"uid {nobody.uid}".encode()
        assert os.read(read_end, 100) == b""
    finally:
        os.close(read_end)


@pytest.fixture
def launchers():
    pool = LauncherPool()
    yield pool
    pool.close()


def _start(directory: Path, argv: list[str], name: str = "job") -> dict:
    """The launcher's request for a job in ``directory`` (made by the launcher)."""
    job = directory / name
    return {"dirs": [str(job)], "files": [[str(job / "in" / "a"), "aW5saW5l", 0o600]],
            "job_file": [str(job / "UNICORE_Job_1"), "#!/bin/sh\n"],
            "stdout": str(job / "stdout"), "stderr": str(job / "stdout"), "spawn": argv,
            "cwd": str(job), "env": {"PATH": "/usr/bin:/bin"},
            "exit_file": str(job / protocol.EXIT_CODE_FILE)}


def test_the_launcher_prepares_and_starts_jobs_as_the_user_without_forking_the_agent(
        launchers, nobody, shared):
    process = launchers.start(nobody, _start(shared, [
        "/bin/sh", "-c", "id -u; echo $$; cat in/a; exit 3"]))
    assert process.wait() == 3 and process.poll() == 3
    job = shared / "job"
    uid, pid, inline = (job / "stdout").read_text().split()
    assert int(uid) == nobody.uid and int(pid) == process.pid and inline == "inline"
    for made in (job, job / "in" / "a", job / "UNICORE_Job_1", job / "stdout"):
        assert made.stat().st_uid == nobody.uid  # made as the user
    assert (job / "in" / "a").stat().st_mode & 0o777 == 0o600
    # the exit code file written for it, as the user
    exit_file = job / protocol.EXIT_CODE_FILE
    assert process.exit_code_written and exit_file.read_text() == "3\n"
    assert exit_file.stat().st_uid == nobody.uid
    launcher = launchers._launchers[(nobody.uid, nobody.gid, tuple(nobody.groups))]
    assert launcher.pid != os.getpid()
    with pytest.raises(FileNotFoundError):
        launchers.start(nobody, _start(shared, ["/no/such/program"]))
    (shared / "locked").mkdir(mode=0o500)  # root's: the user cannot write there
    with pytest.raises(identity.RequestFailed, match=r"staging in: .*Permission denied"):
        launchers.start(nobody, _start(shared / "locked", ["/bin/true"]))


def test_a_signal_is_reported_as_popen_does_and_a_dead_launcher_orphans(launchers, nobody,
                                                                       shared):
    killed = launchers.start(nobody, _start(shared, ["/bin/sh", "-c", "kill -9 $$"]))
    assert killed.wait() == -9
    assert (shared / "job" / protocol.EXIT_CODE_FILE).read_text() == "137\n"
    sleeper = launchers.start(nobody, _start(shared, ["/bin/sleep", "30"], "sleeper"))
    launcher = launchers._launchers[(nobody.uid, nobody.gid, tuple(nobody.groups))]
    os.kill(launcher.pid, signal.SIGKILL)  # the user may kill it
    assert sleeper.wait() is None and sleeper.orphaned
    os.kill(sleeper.pid, signal.SIGKILL)
    again = launchers.start(nobody, _start(shared, ["/bin/true"], "again"))
    assert again.wait() == 0  # a new launcher took over


def test_a_bad_request_is_refused_and_the_launcher_keeps_its_jobs(launchers, nobody, shared):
    sleeper = launchers.start(nobody, _start(shared, ["/bin/sh", "-c", "sleep 0.3"]))
    bad = _start(shared, ["/bin/true"], "bad")
    bad["files"] = [[str(shared / "bad" / "f"), "not base64!", 0o644]]
    with pytest.raises(identity.RequestFailed, match="Error"):
        launchers.start(nobody, bad)
    assert sleeper.wait() == 0 and not sleeper.orphaned  # still watched by its launcher


def test_resolved_users_are_kept_until_the_user_database_changes(monkeypatch, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("one\n")
    monkeypatch.setattr(identity, "USER_DATABASES", (str(passwd),))
    resolver = identity.IdentityResolver(True, "nobody", None)
    first = resolver.resolve(None)
    assert first.user == "nobody" and first.uid == pwd.getpwnam("nobody").pw_uid
    assert resolver.resolve(None) is first  # no second read of the user database
    passwd.write_text("one\ntwo\n")  # a user added or changed: resolved again
    assert resolver.resolve(None) is not first


def test_a_stopped_helper_fails_the_call_after_the_call_timeout(monkeypatch, nobody):
    from tsi_bridge.agent import helpers as helpers_module

    monkeypatch.setattr(helpers_module, "CALL_TIMEOUT", 1)
    pool = HelperPool(per_user=1)
    pid = pool.call(nobody, os.getpid, ())["ok"]
    try:
        os.kill(pid, signal.SIGSTOP)  # the user may stop their own helper
        started = time.monotonic()
        with pytest.raises(HelperUnavailable):
            pool.call(nobody, os.getpid, ())
        assert time.monotonic() - started < 10
        assert pool.call(nobody, os.getpid, ())["ok"] != pid  # a fresh helper serves
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        pool.close()
