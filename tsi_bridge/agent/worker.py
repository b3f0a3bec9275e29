"""One worker: a command socket and a data socket, serving one request at a time.

Every wait has a deadline: an idle worker is closed after ``timeouts.idle``, a started
message must be complete within ``timeouts.request``, and a data-channel stall longer than
``timeouts.transfer`` (or an early EOF) during a file chunk ends the worker instead of
spinning.  A failing request gets ``TSI_FAILED`` and the worker keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import stat
import subprocess
import threading
import time

from tsi_bridge import protocol
from tsi_bridge.agent import archive, files, log
from tsi_bridge.agent.identity import RequestFailed, RunAs, open_as, start_as

PIECE = 1024 * 1024
#: Report lines of a GRIDVM_GETDIRECTORY kept (the rest counted), and report bytes read.
MAX_REPORT = 1000
MAX_REPORT_BYTES = 4 * 1024 * 1024


def open_regular(runas: RunAs, path: str) -> int:
    """A descriptor to read the regular file ``path`` (links resolved first, so the open
    itself follows none): a FIFO, device or socket is refused without blocking."""
    real = os.path.realpath(path)
    fd = open_as(runas, real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise RequestFailed(f"[Errno 21] Is a directory: '{path}'")
        raise RequestFailed(f"{path} is not a regular file")
    return fd


def _timeout(sock: socket.socket, seconds: float) -> None:
    """``sock.settimeout(seconds)`` unless it is set so: each call is an ioctl with the GIL
    released, a thread switch among busy workers (a dozen per job before)."""
    if sock.gettimeout() != seconds:
        sock.settimeout(seconds)


class ChannelBroken(Exception):
    """The connection is unusable (EOF, timeout, desynchronised): end the worker."""


class Worker:
    def __init__(self, agent, command: socket.socket, data: socket.socket, name: str) -> None:
        self.agent, self.config = agent, agent.config
        self.command, self.data, self.name = command, data, name
        self.splitter = protocol.MessageSplitter(max_size=16 * 1024 * 1024)
        self.queued: list[bytes] = []

    # ---------------------------------------------------------------- channel I/O

    def _read_message(self) -> bytes | None:
        timeouts = self.config.timeouts
        deadline = None
        idle_until = time.monotonic() + timeouts["idle"]
        while not self.queued:
            now = time.monotonic()
            if self.splitter.pending:
                deadline = deadline or now + timeouts["request"]
                wait = deadline - now
                if wait <= 0:
                    raise ChannelBroken(f"request incomplete after {timeouts['request']:g} s")
            else:
                wait = idle_until - now
                if wait <= 0:
                    raise ChannelBroken(f"idle for {timeouts['idle']:g} s")
            # waits of at most a transfer timeout, the one replies are sent with: the
            # socket's timeout then stays as it is (see ``_timeout``)
            _timeout(self.command, min(wait, timeouts["transfer"]))
            try:
                data = self.command.recv(65536)
            except TimeoutError:
                continue
            except OSError as err:
                raise ChannelBroken(f"command channel: {err}") from err
            if not data:
                if self.splitter.pending:
                    raise ChannelBroken(f"peer closed in the middle of a message "
                                        f"({self.splitter.pending} bytes)")
                return None
            try:
                self.queued += self.splitter.feed(data)
            except protocol.ProtocolError as err:
                raise ChannelBroken(str(err)) from err
        return self.queued.pop(0)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        _timeout(sock, self.config.timeouts["transfer"])
        try:
            sock.sendall(data)
        except OSError as err:
            raise ChannelBroken(f"send failed: {err}") from err

    def reply(self, data: bytes) -> None:
        self._send(self.command, data)

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        log.info(f"{self.name} started")
        try:
            while True:
                raw = self._read_message()
                if raw is None:
                    log.info(f"{self.name}: peer shut down, stopping worker")
                    break
                self.handle(raw.decode("utf-8", "replace"))
        except ChannelBroken as err:
            log.warning(f"{self.name} ended: {err}")
        finally:
            for sock in (self.command, self.data):
                with contextlib.suppress(OSError):
                    sock.close()

    def handle(self, message: str) -> None:
        command = protocol.find_command(message)
        handler = HANDLERS.get(command) if command else None
        if command is None:
            self.reply(protocol.failed_reply("Unknown #TSI_* command"))
            return
        if handler is None:
            self.reply(protocol.failed_reply(
                f"#TSI_{command} is not supported by the gridvm TSI agent"))
            return
        started = time.monotonic()
        try:
            handler(self, message)
        except ChannelBroken:
            raise
        except (RequestFailed, OSError, ValueError) as err:
            self.reply(protocol.failed_reply(str(err)))
        except Exception as err:
            log.error(f"{self.name}: {command} failed: {type(err).__name__}: {err}")
            self.reply(protocol.failed_reply(f"internal error: {type(err).__name__}: {err}"))
        if log.debugging():  # the time each request takes in the agent
            log.debug(f"{self.name}: {command} {(time.monotonic() - started) * 1000:.1f} ms")

    # ---------------------------------------------------------------- helpers

    def _runas(self, message: str, required: bool = False) -> RunAs:
        identity = protocol.get_identity(message)
        if required and identity is None:
            raise RequestFailed("No user/group info given")
        return self.agent.identities.resolve(identity)

    def _path(self, runas: RunAs, raw: str | None, what: str = "TSI_FILE") -> str:
        if not raw:
            raise RequestFailed(f"No #{what} given")
        path = os.path.join(self.config.workdir_root, runas.substitute(raw))
        if self.config.confine_paths:
            root = self.agent.workdir_real
            real = os.path.realpath(path)
            if real != root and not real.startswith(root + os.sep):
                raise RequestFailed(f"{raw} is outside the working directory root {root}")
        return path

    def _job_id(self, message: str) -> str:
        bssid = protocol.get_param(message, "BSSID")
        if not bssid:
            raise RequestFailed("No #TSI_BSSID given")
        return bssid.strip()

    # ---------------------------------------------------------------- handlers

    def ping(self, message: str) -> None:
        self.reply(protocol.ok_reply(protocol.TSI_COMPAT_VERSION))

    def ping_uid(self, message: str) -> None:
        self.reply(protocol.ok_reply(
            f"{protocol.TSI_COMPAT_VERSION}\n running as UID [{os.getuid()}]"))

    def get_user_info(self, message: str) -> None:
        runas = self._runas(message, required=True)
        self.reply(protocol.ok_reply(files.user_info_payload(runas)))

    def execute_script(self, message: str) -> None:
        runas = self._runas(message)
        config = self.config
        options = dict(cwd=config.workdir_root, stdin=subprocess.DEVNULL,
                       start_new_session=True, env=runas.environment(config.environment),
                       **runas.popen_arguments())
        argv = [config.shell, "-c", message]
        if protocol.get_param(message, "DISCARD_OUTPUT") == "true":
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, **options)
            self.agent.jobs.add_background(process)
            self.reply(protocol.ok_reply())
            return
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   **options)
        # Blocking read + wait, with a timer for the deadline: communicate(timeout=...)
        # polls with sleeps and costs milliseconds per script.
        expired = threading.Event()

        def kill_group() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(config.timeouts["script"], kill_group)
        timer.daemon = True
        timer.start()
        try:
            output = process.stdout.read()
            process.wait()
        finally:
            timer.cancel()
            process.stdout.close()
        if expired.is_set():
            raise RequestFailed(f"Command '{message}' did not finish within "
                                f"{config.timeouts['script']:g} s and was killed")
        text = output.decode("utf-8", "replace")
        if process.returncode != 0:
            raise RequestFailed(f"Command '{message}' failed with code "
                                f"{process.returncode}: {text}")
        self.reply(protocol.ok_reply(text))

    def get_file_chunk(self, message: str) -> None:
        runas = self._runas(message)
        path = self._path(runas, protocol.get_param(message, "FILE"))
        start = protocol.get_number(message, "START", 0)
        length = protocol.get_number(message, "LENGTH", -1)
        if start < 0 or length < 0:
            raise RequestFailed("#TSI_START and #TSI_LENGTH must be non-negative numbers")
        if length > self.config.max_chunk:
            raise RequestFailed(f"#TSI_LENGTH {length} exceeds the agent's maximum chunk "
                                f"size {self.config.max_chunk}")
        fd = open_regular(runas, path)
        try:
            pieces, remaining = [], length
            while remaining > 0:
                piece = os.pread(fd, min(remaining, PIECE), start + length - remaining)
                if not piece:
                    break
                pieces.append(piece)
                remaining -= len(piece)
        finally:
            os.close(fd)
        data = b"".join(pieces)
        self.reply(protocol.ok_reply(f"TSI_LENGTH {len(data)}"))
        self._send(self.data, data)
        self.reply(protocol.END_LINE)

    def put_file_chunk(self, message: str) -> None:
        runas = self._runas(message)
        path_and_mode = protocol.get_param(message, "FILE") or ""
        mode = None
        raw_path = path_and_mode
        if " " in path_and_mode:
            raw_path, mode_text = path_and_mode.rsplit(" ", 1)
            try:
                mode = int(mode_text, 8)
            except ValueError:
                raw_path, mode = path_and_mode, None
        path = self._path(runas, raw_path)
        length = protocol.get_number(message, "LENGTH", -1)
        if length < 0:
            raise RequestFailed("#TSI_LENGTH must be a non-negative number")
        append = protocol.get_param(message, "FILESACTION") == "3"
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        fd = open_as(runas, path, flags, 0o644 if mode is None else mode)
        write_error = None
        try:
            self.reply(protocol.ok_reply())
            remaining = length
            _timeout(self.data, self.config.timeouts["transfer"])
            buffer = bytearray(min(max(length, 1), PIECE))
            view = memoryview(buffer)
            while remaining > 0:
                try:
                    received = self.data.recv_into(view, min(remaining, len(buffer)))
                except TimeoutError:
                    raise ChannelBroken(f"PUTFILECHUNK {path}: no data for "
                                        f"{self.config.timeouts['transfer']:g} s, "
                                        f"{remaining} of {length} bytes missing") from None
                except OSError as err:
                    raise ChannelBroken(f"PUTFILECHUNK {path}: data channel: {err}") from err
                if received == 0:
                    raise ChannelBroken(f"PUTFILECHUNK {path}: data channel closed, "
                                        f"{remaining} of {length} bytes missing")
                remaining -= received
                if write_error is None:
                    try:
                        written = 0
                        while written < received:
                            written += os.write(fd, view[written:received])
                    except OSError as err:
                        write_error = err  # keep reading: the stream must stay in sync
            if mode is not None and write_error is None:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if write_error is not None:
            self.reply(protocol.failed_reply(str(write_error)))
        else:
            self.reply(protocol.END_LINE)

    def get_directory(self, message: str) -> None:
        """GRIDVM_GETDIRECTORY: the directory as a tar stream (``archive``), written by a
        child with the user's permissions and relayed here in frames; a child silent for
        ``timeouts.transfer`` is killed and the request fails (the stream stays framed).
        With ``#TSI_GRIDVM_THEN_REMOVE true`` a complete stream is followed by the removal
        of the directory, as GRIDVM_REMOVE, the report then ending with its
        ``REMOVED <total> <free>`` (one exchange less per job)."""
        runas = self._runas(message)
        path = self._path(runas, protocol.get_param(message, "FILE"))
        then_remove = protocol.get_param(message, "GRIDVM_THEN_REMOVE") == "true"
        if then_remove:
            self._removable(path)
        tar_read, tar_write = os.pipe()
        report_read, report_write = os.pipe()
        try:  # the writer has its own copies: its pipes close when it is done
            finish = start_as(runas, [tar_write, report_write], _archive_child, path)
        except BaseException:
            for fd in (tar_read, report_read):
                os.close(fd)
            raise
        finally:
            os.close(tar_write)
            os.close(report_write)
        report, problem, status = bytearray(), None, 1
        try:
            self.reply(protocol.ok_reply(protocol.STREAM_HEADER))
            problem = self._relay(tar_read, report_read, report)
            self._send(self.data, protocol.FRAME.pack(0))
        finally:
            for fd in (tar_read, report_read):  # a writer still going fails on its pipe
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(RequestFailed, OSError):
                status = finish()
        lines = report.decode("utf-8", "replace").splitlines()
        if len(report) > MAX_REPORT_BYTES:  # head kept, then the tail's last line (TOTAL)
            lines = lines[:MAX_REPORT] + lines[-1:]
        errors = [line.split("\t", 2)[-1] for line in lines if line.startswith("ERROR\t")]
        if problem or errors or status != 0 or not lines[-1:][0].startswith("TOTAL "):
            self.reply(protocol.failed_reply(
                problem or (errors and errors[0]) or f"the archive child ended with {status}"))
            return
        entries = lines[:-1]
        if len(entries) > MAX_REPORT:
            omitted = len(entries) - MAX_REPORT
            entries = [*entries[:MAX_REPORT], protocol.format_report_line(
                "OMITTED", b"", f"{omitted} more entries")]
        tail = [lines[-1]]
        if then_remove:
            try:  # the stream is complete: what the client does next is remove it
                tail.append(protocol.format_removed(*files.remove_tree(runas, path)))
            except (OSError, RequestFailed) as err:  # no REMOVED line: the client removes
                log.warning(f"{self.name}: {path} streamed but not removed: {err}")
        self.reply(protocol.ok_reply("\n".join([*entries, *tail])))

    def _relay(self, tar_read: int, report_read: int, report: bytearray) -> str | None:
        """Frames from ``tar_read`` to the data channel, ``report_read`` into ``report``,
        until both end; returns why it stopped early, or None."""
        stall = self.config.timeouts["transfer"]
        with selectors.DefaultSelector() as selector:
            selector.register(tar_read, selectors.EVENT_READ)
            selector.register(report_read, selectors.EVENT_READ)
            while selector.get_map():
                ready = selector.select(stall)
                if not ready:
                    return f"the archive made no progress for {stall:g} s"
                for key, _events in ready:
                    data = os.read(key.fd, PIECE)
                    if not data:
                        selector.unregister(key.fd)
                    elif key.fd == tar_read:
                        self._send(self.data, protocol.FRAME.pack(len(data)) + data)
                    elif len(report) < MAX_REPORT_BYTES:
                        report += data
                    else:
                        del report[MAX_REPORT_BYTES:]
                        report += data[-512:]
        return None

    def ls(self, message: str) -> None:
        runas = self._runas(message)
        path = self._path(runas, protocol.get_param(message, "FILE"))
        mode = protocol.get_param(message, "LS_MODE")
        if mode not in ("A", "N", "R"):
            raise RequestFailed(f"Unknown TSI_LS mode: '{mode}', must be one of "
                                "'R', 'A' or 'N'.")
        self.reply(protocol.ok_reply(files.ls_payload(runas, path, mode)))

    def df(self, message: str) -> None:
        runas = self._runas(message)
        path = self._path(runas, protocol.get_param(message, "FILE"))
        self.reply(protocol.ok_reply(files.df_payload(runas, path)))

    def make_directory(self, message: str) -> None:
        runas = self._runas(message)
        files.make_directory(runas, self._path(runas, protocol.get_param(message, "FILE")))
        self.reply(protocol.ok_reply())

    def remove(self, message: str) -> None:
        runas = self._runas(message)
        path = self._path(runas, protocol.get_param(message, "FILE"))
        self._removable(path)
        total, free = files.remove_tree(runas, path)
        self.reply(protocol.ok_reply(protocol.format_df(total, free)))

    def _removable(self, path: str) -> None:
        if os.path.realpath(path) in ("/", self.agent.workdir_real):
            raise RequestFailed(f"{path}: refusing to remove the root of the working area")

    def wait_status(self, message: str) -> None:
        """GRIDVM_WAITSTATUS: the status listing once a job has ended since the client's
        last answer (its GRIDVM_SEEN), or after WAIT s."""
        try:
            seconds = float(protocol.get_param(message, "WAIT") or "0")
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= protocol.MAX_JOB_WAIT:
            raise RequestFailed(f"#TSI_WAIT must be 0 to {protocol.MAX_JOB_WAIT:g} seconds")
        ended = self.agent.jobs.wait_ended(protocol.get_number(message, "GRIDVM_SEEN"),
                                           seconds)
        listing = protocol.format_status_listing(self.agent.jobs.listing())
        self.reply(protocol.ok_reply(protocol.format_wait_status(ended, listing)))

    def gridvm_submit(self, message: str) -> None:
        """GRIDVM_SUBMIT: SUBMIT with the job directory made and the message's small files
        written into it first (one helper call for all of that)."""
        try:
            inline = protocol.parse_inline_files(message)
        except protocol.ProtocolError as err:
            raise RequestFailed(str(err)) from None
        self.submit(message, inline)

    def submit(self, message: str, inline: list[tuple[str, bytes, int]] = ()) -> None:
        runas = self._runas(message)
        message = runas.substitute(message)
        uspace = self._path(runas, protocol.get_param(message, "USPACE_DIR")
                            or self.config.workdir_root, "TSI_USPACE_DIR")
        outcome = self._path(runas, protocol.get_param(message, "OUTCOME_DIR") or uspace,
                             "TSI_OUTCOME_DIR")
        stdout = protocol.get_param(message, "STDOUT") or "stdout"
        stderr = protocol.get_param(message, "STDERR") or "stderr"
        for name in (stdout, stderr):
            self._path(runas, os.path.join(outcome, name))
        files = []
        for name, data, mode in inline:
            path = self._path(runas, os.path.join(uspace, name), "TSI_GRIDVM_FILE")
            if os.path.isabs(name) or ".." in name.split("/") or \
                    not path.startswith(uspace.rstrip("/") + "/"):
                raise RequestFailed(f"#TSI_GRIDVM_FILE {name!r} leads outside the job "
                                    "directory")
            files.append((path, data, mode))
        bssid = self.agent.jobs.submit(
            runas, message, uspace, outcome, stdout, stderr,
            time_limit=protocol.get_number(message, "TIME", 0),
            memory_mb=protocol.get_number(message, "MEMORY", 0),
            name=protocol.get_param(message, "JOBNAME") or "UNICORE_Job", files=files)
        self.reply(protocol.ok_reply(bssid))

    def status_listing(self, message: str) -> None:
        listing = protocol.format_status_listing(self.agent.jobs.listing())
        self.reply(protocol.ok_reply(listing))

    def abort_job(self, message: str) -> None:
        self.agent.jobs.abort(self._job_id(message))
        self.reply(protocol.ok_reply(""))

    def hold_job(self, message: str) -> None:
        self.agent.jobs.hold(self._job_id(message))
        self.reply(protocol.ok_reply(""))

    def resume_job(self, message: str) -> None:
        self.agent.jobs.resume(self._job_id(message))
        self.reply(protocol.ok_reply(""))

    def job_details(self, message: str) -> None:
        self.reply(protocol.ok_reply(self.agent.jobs.details(self._job_id(message))))

    def partitions(self, message: str) -> None:
        self.reply(protocol.ok_reply("{}"))

    def compute_budget(self, message: str) -> None:
        self.reply(protocol.ok_reply("USER -1\n"))


def _archive_child(path: str, tar_write: int, report_write: int) -> int:
    """The writer of GRIDVM_GETDIRECTORY (a helper or a forked child, already the request's
    user): the archive into ``tar_write``, its report into ``report_write``."""
    try:
        archive.write_archive(path, tar_write, report_write)
    except Exception as err:  # reported, whatever it is: the child has no log
        line = protocol.format_report_line("ERROR", os.fsencode(path),
                                           f"{type(err).__name__}: {err}")
        with contextlib.suppress(OSError):
            os.write(report_write, (line + "\n").encode())
        return 1
    return 0


HANDLERS = {
    "PING": Worker.ping,
    "PING_UID": Worker.ping_uid,
    "GET_USER_INFO": Worker.get_user_info,
    "EXECUTESCRIPT": Worker.execute_script,
    "GETFILECHUNK": Worker.get_file_chunk,
    "PUTFILECHUNK": Worker.put_file_chunk,
    "LS": Worker.ls,
    "DF": Worker.df,
    "SUBMIT": Worker.submit,
    "GETSTATUSLISTING": Worker.status_listing,
    "GETJOBDETAILS": Worker.job_details,
    "GET_PARTITIONS": Worker.partitions,
    "ABORTJOB": Worker.abort_job,
    "HOLDJOB": Worker.hold_job,
    "RESUMEJOB": Worker.resume_job,
    "GET_COMPUTE_BUDGET": Worker.compute_budget,
    "GRIDVM_GETDIRECTORY": Worker.get_directory,
    "GRIDVM_MKDIR": Worker.make_directory,
    "GRIDVM_REMOVE": Worker.remove,
    "GRIDVM_WAITSTATUS": Worker.wait_status,
    "GRIDVM_SUBMIT": Worker.gridvm_submit,
}
