"""Batch jobs in fork ("nobatch") mode, tracked by the agent itself.

Each job runs in its own session (``os.setsid``), so its process-group id is its pid; abort,
hold and the runtime limit signal the whole group.  Every job has a record under
``<state_dir>/jobs/<bssid>.json`` so it keeps being reported after a connection drops and
after the agent restarts (then it is "adopted": recognised by pid and /proc start time).

Status follows the official nobatch TSI: a job is listed (RUNNING, or SUSPENDED when held)
until it ends, then it vanishes.  Exit codes are reported the UNICORE way, through
``<OUTCOME_DIR>/UNICORE_SCRIPT_EXIT_CODE``: the job script normally writes it; if it did not
(killed, or a script without that line), the agent writes the exit status it reaped
(128 + signal for a signal).  GETJOBDETAILS returns the record as JSON, with the reason
(JOB_ABORTED, RUNTIME_EXCEEDED) when the agent ended the job, and ``exit_code_error`` when
the exit code file could not be written (a full disk).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import threading
import time

from tsi_bridge import protocol
from tsi_bridge.agent import log
from tsi_bridge.agent.identity import RequestFailed, RunAs, call_as, open_as

RUNNING, SUSPENDED, COMPLETED = "RUNNING", "SUSPENDED", "COMPLETED"


def _proc_start_time(pid: int) -> str | None:
    """The start time of ``pid`` from /proc (None if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def _alive(pid: int, start_time: str | None) -> bool:
    if os.path.isdir("/proc/self"):
        current = _proc_start_time(pid)
        return current is not None and (start_time is None or current == start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def write_exit_code(path: str, text: str) -> None:
    """Write the exit code file unless the job wrote one; one left empty (the job's own
    write failed, e.g. on a full disk) is written again.  A write that fails removes the
    empty file and raises: an empty file would only be waited for."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.read(fd, 64).strip():
            return
        try:
            os.ftruncate(fd, 0)
            data = text.encode()
            if os.pwrite(fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    finally:
        os.close(fd)


class JobTable:
    """The jobs this agent started (and adopted), persisted under ``state_dir``."""

    def __init__(self, state_dir: str, *, shell: str, nice: int, abort_grace: float,
                 record_ttl: float, environment: dict[str, str], launchers=None) -> None:
        self.directory = os.path.join(state_dir, "jobs")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.shell, self.nice, self.abort_grace = shell, nice, abort_grace
        self.record_ttl, self.environment = record_ttl, environment
        #: a ``LauncherPool`` that starts a switching user's jobs without forking the agent
        self.launchers = launchers
        self._lock = threading.RLock()
        self._ended = threading.Condition(self._lock)  #: notified whenever a job ends
        self.ended_count = 0  #: jobs that ended since the agent started
        self._jobs: dict[str, dict] = {}
        #: the bssids of jobs not yet COMPLETED: what refresh and the listing walk (the
        #: finished ones are kept for ``record_ttl``, thousands after a day of small jobs)
        self._unfinished: set[str] = set()
        self._processes: dict[str, subprocess.Popen] = {}
        self._background: list[subprocess.Popen] = []
        self._last_id = 0
        self._last_purge = 0.0
        self._load()

    # ---------------------------------------------------------------- persistence

    def _load(self) -> None:
        adopted = 0
        for name in os.listdir(self.directory):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.directory, name), encoding="utf-8") as handle:
                    record = json.load(handle)
                self._jobs[record["bssid"]] = record
                if record["state"] != COMPLETED:
                    self._unfinished.add(record["bssid"])
            except (OSError, ValueError, KeyError) as err:
                log.warning(f"ignoring unreadable job record {name}: {err}")
                continue
            if record["state"] != COMPLETED:
                adopted += 1
        if self._jobs:
            self._last_id = max(int(b) for b in self._jobs)
        if adopted:
            log.info(f"adopted {adopted} job(s) from {self.directory}")
        self.refresh()

    def _save(self, record: dict) -> None:
        """Persist a record; on a full disk it stays in memory (and is saved next time)."""
        path = os.path.join(self.directory, f"{record['bssid']}.json")
        temporary = path + ".tmp"
        try:  # dumps, not dump: one C-encoded string instead of ~90 small writes
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record))
            os.replace(temporary, path)
        except OSError as err:
            log.warning(f"job {record['bssid']}: cannot save its record: {err}")
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _new_bssid(self) -> str:
        candidate = max(int(time.time() * 1000), self._last_id + 1)
        self._last_id = candidate
        return str(candidate)

    # ---------------------------------------------------------------- submit

    def submit(self, runas: RunAs, message: str, uspace: str, outcome: str, stdout: str,
               stderr: str, time_limit: int, memory_mb: int, name: str,
               files: list[tuple[str, bytes, int]] = ()) -> str:
        """Start the job; the message itself becomes ``<uspace>/UNICORE_Job_<bssid>``;
        ``files`` (path, content, mode) are written first."""
        with self._lock:
            bssid = self._new_bssid()
        job_file = os.path.join(uspace, f"UNICORE_Job_{bssid}")
        out_path = os.path.join(outcome, stdout)
        err_path = os.path.join(outcome, stderr)
        argv = interpreter_command(message, job_file)
        if memory_mb > 0:
            argv = ["/bin/sh", "-c", f'ulimit -v {memory_mb * 1024} && exec "$@"', "sh", *argv]
        start = {"dirs": [uspace, outcome], "job_file": [job_file, message],
                 "files": [(path, base64.b64encode(data).decode(), mode)
                           for path, data, mode in files],
                 "stdout": out_path, "stderr": err_path, "spawn": argv, "cwd": uspace,
                 "env": runas.environment(self.environment),
                 "exit_file": os.path.join(outcome, protocol.EXIT_CODE_FILE)}
        process = self._start(runas, start)
        if self.nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, process.pid, self.nice)
        now = time.time()
        record = {
            "bssid": bssid, "name": name, "pid": process.pid,
            "start_time": _proc_start_time(process.pid), "uspace": uspace,
            "outcome": outcome, "stdout": out_path, "stderr": err_path, "submitted": now,
            "deadline": now + time_limit if time_limit > 0 else None, "kill_at": None,
            "state": RUNNING, "exit_code": None, "reason": None, "finished": None,
            "runas": runas.to_record(),
        }
        with self._lock:
            self._jobs[bssid] = record
            self._unfinished.add(bssid)
            self._processes[bssid] = process
            self._save(record)
        # its end is seen at once (GRIDVM_WAITSTATUS), not at the supervisor's next round
        if isinstance(process, subprocess.Popen):
            threading.Thread(target=self._reap, args=(process,), name=f"reaper-{bssid}",
                             daemon=True).start()
        else:
            process.on_end = self.refresh
            if process.poll() is not None or process.orphaned:  # ended already
                self.refresh()
        log.info(f"job {bssid} started: pid {process.pid} in {uspace} as {runas.user}")
        return bssid

    def _start(self, runas: RunAs, start: dict):
        """The job's files prepared and its process started (``start``: see
        ``prepare_job``): all by the user's launcher in one call when there is one (no
        fork of the agent), else step by step as the user and a ``Popen`` (which forks the
        whole agent to switch the uid)."""
        if runas.switch and self.launchers is not None:
            from tsi_bridge.agent.helpers import HelperUnavailable

            try:
                return self.launchers.start(runas, start)
            except HelperUnavailable as err:
                log.warning(f"starting the job with a fork: {err}")
        try:
            call_as(runas, _make_dirs, start["dirs"], start["files"])
        except OSError as err:
            raise RequestFailed(f"staging in: {err}") from None
        job_file, text = start["job_file"]
        _write_job_file(open_as(runas, job_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755),
                        text)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out_fd = open_as(runas, start["stdout"], flags)
        err_fd = out_fd if start["stderr"] == start["stdout"] else open_as(
            runas, start["stderr"], flags)
        try:
            return subprocess.Popen(start["spawn"], cwd=start["cwd"], stdin=subprocess.DEVNULL,
                                    stdout=out_fd, stderr=err_fd, start_new_session=True,
                                    env=start["env"], **runas.popen_arguments())
        finally:
            os.close(out_fd)
            if err_fd != out_fd:
                os.close(err_fd)

    def _reap(self, process: subprocess.Popen) -> None:
        process.wait()
        self.refresh()

    def add_background(self, process: subprocess.Popen) -> None:
        """A process started for EXECUTESCRIPT with DISCARD_OUTPUT: reaped here."""
        with self._lock:
            self._background.append(process)

    # ---------------------------------------------------------------- queries

    def listing(self) -> list[tuple[str, str, str, str]]:
        self.refresh()
        with self._lock:
            return [(b, self._jobs[b]["state"], "NOBATCH",
                     "T" if self._jobs[b]["state"] == SUSPENDED else "R")
                    for b in sorted(self._unfinished)]

    def details(self, bssid: str) -> str:
        self.refresh()
        with self._lock:
            record = self._jobs.get(bssid)
            if record is None:
                raise RequestFailed(f"No such job: {bssid}")
            shown = {k: v for k, v in record.items() if k not in ("runas", "kill_at")}
            shown["user"] = record["runas"]["user"]
            return json.dumps(shown, sort_keys=True)

    def wait_ended(self, seen: int, seconds: float) -> int:
        """The count of jobs ended since the agent started, once it differs from ``seen``,
        at the latest after ``seconds``."""
        deadline = time.monotonic() + seconds
        with self._ended:
            while True:
                left = deadline - time.monotonic()
                if self.ended_count != seen or left <= 0:
                    return self.ended_count
                self._ended.wait(left)

    # ---------------------------------------------------------------- control

    def _running(self, bssid: str) -> dict:
        record = self._jobs.get(bssid)
        if record is None:
            raise RequestFailed(f"No such job: {bssid}")
        if record["state"] == COMPLETED:
            raise RequestFailed(f"Job {bssid} is not running any more (it has finished)")
        return record

    def _signal(self, record: dict, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record["pid"], signum)

    def abort(self, bssid: str) -> None:
        self.refresh()
        with self._lock:
            record = self._running(bssid)
            self._terminate(record, "JOB_ABORTED", self.abort_grace)
        log.info(f"job {bssid} aborted")

    def _terminate(self, record: dict, reason: str, grace: float) -> None:
        self._signal(record, signal.SIGTERM)
        self._signal(record, signal.SIGCONT)
        record["reason"] = record["reason"] or reason
        record["kill_at"] = time.time() + grace
        self._save(record)

    def hold(self, bssid: str) -> None:
        self.refresh()
        with self._lock:
            record = self._running(bssid)
            self._signal(record, signal.SIGSTOP)
            record["state"] = SUSPENDED
            self._save(record)

    def resume(self, bssid: str) -> None:
        self.refresh()
        with self._lock:
            record = self._running(bssid)
            self._signal(record, signal.SIGCONT)
            record["state"] = RUNNING
            self._save(record)

    # ---------------------------------------------------------------- supervision

    def refresh(self) -> None:
        """Reap finished jobs, enforce runtime limits and abort deadlines."""
        now = time.time()
        with self._lock:
            for bssid in list(self._unfinished):
                record = self._jobs[bssid]
                process = self._processes.get(bssid)
                if getattr(process, "orphaned", False):  # its launcher died: watch the pid
                    self._processes.pop(bssid)
                    process = None
                if process is not None:
                    returncode = process.poll()
                    if returncode is not None:
                        self._finish(record, exit_status(returncode))
                        continue
                elif not _alive(record["pid"], record["start_time"]):
                    self._finish(record, None)
                    continue
                if record["deadline"] and now >= record["deadline"] and not record["reason"]:
                    grace = max(1.0, min(30.0, (record["deadline"] - record["submitted"]) / 100))
                    log.info(f"job {bssid} exceeded its runtime limit")
                    self._terminate(record, "RUNTIME_EXCEEDED", grace)
                elif record["kill_at"] and now >= record["kill_at"]:
                    self._signal(record, signal.SIGKILL)
                    record["kill_at"] = None
                    self._save(record)
            self._background = [p for p in self._background if p.poll() is None]
            if now - self._last_purge > 60:
                self._last_purge = now
                self._purge(now)

    def _finish(self, record: dict, exit_code: int | None) -> None:
        record["state"] = COMPLETED
        self._unfinished.discard(record["bssid"])
        record["finished"] = time.time()
        record["exit_code"] = exit_code
        record["kill_at"] = None
        process = self._processes.pop(record["bssid"], None)
        if record["reason"] is not None:
            # the agent ended it: kill stragglers left in its process group
            self._signal(record, signal.SIGKILL)
        if getattr(process, "exit_code_error", None):  # the launcher could not write it
            record["exit_code_error"] = process.exit_code_error
        elif exit_code is not None and not getattr(process, "exit_code_written", False):
            path = os.path.join(record["outcome"], protocol.EXIT_CODE_FILE)
            try:
                call_as(RunAs.from_record(record["runas"]), write_exit_code, path,
                        f"{exit_code}\n")
            except (OSError, RequestFailed) as err:
                # GETJOBDETAILS tells why the file is missing (e.g. the disk is full)
                record["exit_code_error"] = getattr(err, "strerror", None) or str(err)
                log.warning(f"job {record['bssid']}: cannot write {path}: {err}")
        self._save(record)
        self.ended_count += 1
        self._ended.notify_all()
        log.info(f"job {record['bssid']} finished: exit code {exit_code}"
                 + (f" ({record['reason']})" if record["reason"] else ""))

    def _purge(self, now: float) -> None:
        for bssid, record in list(self._jobs.items()):
            if record["state"] == COMPLETED and now - record["finished"] > self.record_ttl:
                del self._jobs[bssid]
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, f"{bssid}.json"))

    def supervise(self, stop: threading.Event, interval: float = 0.25) -> None:
        """The supervisor thread's loop."""
        while not stop.wait(interval):
            try:
                self.refresh()
            except Exception as err:  # keep supervising whatever happens
                log.error(f"job supervision failed: {type(err).__name__}: {err}")


def interpreter_command(script: str, path: str) -> list[str]:
    """The command the kernel would run for ``path``'s shebang (``/bin/sh`` without one).

    The job file is never executed itself: another thread's fork may still hold a copy of
    its write descriptor, and exec would then fail with ETXTBSY ("Text file busy").
    """
    if script.startswith("#!"):
        line = script[2:].split("\n", 1)[0].strip()
        if line:
            interpreter, _, argument = line.partition(" ")
            argument = argument.strip()
            return [interpreter, argument, path] if argument else [interpreter, path]
    return ["/bin/sh", path]


class StagingFailed(OSError):
    """A directory or inline file of a job could not be made (``prepare_job``)."""


def prepare_job(start: dict) -> tuple[int, int]:
    """As the job's user (its launcher): the job's directories and inline files, its job
    file, and descriptors of its stdout and stderr (one if they are the same file).

    ``start``: ``dirs``, ``files`` (path, base64 content, mode), ``job_file`` (path, text),
    ``stdout``, ``stderr`` — and, for the launcher, ``spawn`` (argv), ``cwd``, ``env`` and
    ``exit_file``."""
    try:
        _make_dirs(start["dirs"], start["files"])
    except OSError as err:
        raise StagingFailed(err.errno, err.strerror, err.filename) from None
    job_file, text = start["job_file"]
    _write_job_file(os.open(job_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755), text)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out_fd = os.open(start["stdout"], flags, 0o644)
    if start["stderr"] == start["stdout"]:
        return out_fd, out_fd
    try:
        return out_fd, os.open(start["stderr"], flags, 0o644)
    except OSError:
        os.close(out_fd)
        raise


def _write_job_file(fd: int, text: str) -> None:
    """The job's message into ``fd`` (closed after), executable."""
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def _make_dirs(paths: list[str], files: list[tuple[str, str, int]] = ()) -> None:
    """The directories, then each file (path, base64 content, mode) written."""
    for path in paths:
        os.makedirs(path, exist_ok=True)
    for path, data, mode in files:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, base64.b64decode(data))
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
