"""The agent's per-user helpers: file work as the job user without a fork per request."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
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


def _job_files(directory: Path) -> tuple[int, str]:
    """stdout+stderr of a job (a descriptor of the user's) and its exit code file."""
    out = directory / "stdout"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    return fd, str(directory / protocol.EXIT_CODE_FILE)


def test_the_launcher_starts_jobs_as_the_user_without_forking_the_agent(launchers, nobody,
                                                                       shared):
    os.chmod(shared, 0o777)
    out_fd, exit_file = _job_files(shared)
    try:
        process = launchers.spawn(nobody, ["/bin/sh", "-c", "id -u; echo $$; exit 3"],
                                  str(shared), {"PATH": "/usr/bin:/bin"}, out_fd, out_fd,
                                  exit_file)
    finally:
        os.close(out_fd)
    assert process.wait() == 3 and process.poll() == 3
    uid, pid = (shared / "stdout").read_text().split()
    assert int(uid) == nobody.uid and int(pid) == process.pid
    # its own session; the exit code file written for it, as the user
    assert process.exit_code_written and Path(exit_file).read_text() == "3\n"
    assert Path(exit_file).stat().st_uid == nobody.uid
    launcher = launchers._launchers[(nobody.uid, nobody.gid, tuple(nobody.groups))]
    assert launcher.pid != os.getpid()
    with pytest.raises(FileNotFoundError):
        launchers.spawn(nobody, ["/no/such/program"], str(shared), {}, 1, 2, exit_file)


def test_a_signal_is_reported_as_popen_does_and_a_dead_launcher_orphans(launchers, nobody,
                                                                       shared):
    out_fd, exit_file = _job_files(shared)
    try:
        killed = launchers.spawn(nobody, ["/bin/sh", "-c", "kill -9 $$"], str(shared), {},
                                 out_fd, out_fd, exit_file)
        assert killed.wait() == -9 and Path(exit_file).read_text() == "137\n"
        sleeper = launchers.spawn(nobody, ["/bin/sleep", "30"], str(shared), {}, out_fd,
                                  out_fd, exit_file + ".2")
    finally:
        os.close(out_fd)
    launcher = launchers._launchers[(nobody.uid, nobody.gid, tuple(nobody.groups))]
    os.kill(launcher.pid, signal.SIGKILL)  # the user may kill it
    assert sleeper.wait() is None and sleeper.orphaned
    os.kill(sleeper.pid, signal.SIGKILL)
    again = launchers.spawn(nobody, ["/bin/true"], str(shared), {}, 1, 2, exit_file)
    assert again.wait() == 0  # a new launcher took over
