"""The UNICORE TSI wire protocol, shared by the Twisted client and the guest agent.

Standard library only (the agent runs in guests that have nothing but python3), and cheap to
import: no dataclasses, typing or logging here.

* Framing: a message is any number of UTF-8 lines ended by the exact line ``ENDOFMESSAGE``.
* Requests: a header of ``#TSI_<COMMAND>`` and ``#TSI_<PARAM> <value>`` lines, for scripts
  ``#TSI_SCRIPT`` and the user's script, then ``#TSI_IDENTITY <user> <groups>``.  The
  command is the first known tag, in the official TSI's order, that is a whole line of the
  *header* (the lines before ``#TSI_SCRIPT``); parameters too come from the header only (the
  first line wins), so nothing in a user's script is read as protocol.
* Replies: ``TSI_OK\\n[<payload>\\n]ENDOFMESSAGE\\n`` or ``TSI_FAILED: <msg>\\nENDOFMESSAGE\\n``
  (LS, DF, GETSTATUSLISTING and SUBMIT also without the ``TSI_OK`` line: older official code).
* Data channel: GETFILECHUNK and PUTFILECHUNK move raw bytes on the second socket; a
  successful chunk transfer ends with a *second* ``ENDOFMESSAGE`` on the command channel.

See docs/tsi-bridge.md and the team's tsi-protocol.md for the byte-level details.
"""

from __future__ import annotations

import base64
import re
import struct

#: Our agent's own version (answered by the readiness probe).
AGENT_VERSION = "0.1.0"
#: The TSI protocol level our agent implements; answered to ``#TSI_PING``.  UNICORE/X compares
#: this numerically (and treats anything unparsable as "too old"), so it is a TSI version.
TSI_COMPAT_VERSION = "11.2.1"

ENDOFMESSAGE = "ENDOFMESSAGE"
END_LINE = b"ENDOFMESSAGE\n"
TSI_OK = "TSI_OK"
TSI_FAILED = "TSI_FAILED"
EXIT_CODE_FILE = "UNICORE_SCRIPT_EXIT_CODE"

#: Readiness probe (our agent only): one line on the shepherd port, answered and closed.
READINESS_REQUEST = b"ping gridvm\n"
READINESS_REPLY_PREFIX = "OK gridvm-tsi "

#: Every command tag of TSI 11.2.1, in the order the official TSI looks for them.
COMMANDS = (
    "PING", "PING_UID", "GET_USER_INFO", "EXECUTESCRIPT", "GETFILECHUNK", "PUTFILECHUNK",
    "LS", "DF", "UFTP", "SUBMIT", "RUN_ON_LOGIN_NODE", "GETSTATUSLISTING",
    "GETPROCESSLISTING", "GETJOBDETAILS", "GET_PARTITIONS", "ABORTJOB", "HOLDJOB",
    "RESUMEJOB", "GET_COMPUTE_BUDGET", "MAKE_RESERVATION", "QUERY_RESERVATION",
    "CANCEL_RESERVATION", "FILE_ACL",
)

#: gridvm's own commands (our agent only; the official TSI answers "Unknown #TSI_* command").
#: GRIDVM_GETDIRECTORY: a job directory's regular files as one tar stream (see
#: ``get_directory_body``); GRIDVM_MKDIR and GRIDVM_REMOVE: ``mkdir -p`` and ``rm -rf`` of
#: one path without starting a shell; GRIDVM_WAITSTATUS: the status listing once a job has
#: ended or a few seconds passed (``wait_status_body``): job ends pushed, not polled;
#: GRIDVM_SUBMIT: the job directory made, small files written into it and the job submitted
#: in one exchange (``gridvm_submit_body``).
EXTENSIONS = ("GRIDVM_GETDIRECTORY", "GRIDVM_MKDIR", "GRIDVM_REMOVE", "GRIDVM_WAITSTATUS",
              "GRIDVM_SUBMIT")
#: Files, and bytes of them in all, a GRIDVM_SUBMIT may carry.
MAX_INLINE_FILES = 64
MAX_INLINE_BYTES = 1024 * 1024
#: Longest wait a GRIDVM_WAITSTATUS may ask for, seconds.
MAX_JOB_WAIT = 60.0

#: The line that ends a request's header: the user's script follows it.
SCRIPT_TAG = "#TSI_SCRIPT"

#: Job states of a status listing.
JOB_STATES = ("QUEUED", "RUNNING", "SUSPENDED", "COMPLETED", "UNKNOWN")

FILESACTION_OVERWRITE = 0
FILESACTION_APPEND = 3

_IDENTITY_RE = re.compile(r"^#TSI_IDENTITY (\S+) (\S+)$", re.M)
_TOKEN_RE = re.compile(r"^\S+$")


class ProtocolError(ValueError):
    """Bytes that break the protocol (an anomaly: the connection must be discarded).

    Not a ``base.errors.GridvmError``: this module also runs in guests, with the agent, on
    the standard library alone; the client turns it into ``TSIConnectionLost``."""


# --------------------------------------------------------------------------------------------
# framing


class MessageSplitter:
    """Splits a byte stream into messages, each ended by the line ``ENDOFMESSAGE``.

    ``feed()`` returns the complete messages (without their terminator line, but with the
    newline before it); incomplete bytes stay buffered.  ``max_size`` bounds the buffer.
    """

    def __init__(self, max_size: int = 64 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._scan = 0
        self.max_size = max_size

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while True:
            index = self._buffer.find(END_LINE, self._scan)
            if index < 0:
                self._scan = max(0, len(self._buffer) - len(END_LINE) + 1)
                break
            if index == 0 or self._buffer[index - 1] == 0x0A:
                messages.append(bytes(self._buffer[:index]))
                del self._buffer[: index + len(END_LINE)]
                self._scan = 0
            else:
                self._scan = index + 1
        if len(self._buffer) > self.max_size:
            raise ProtocolError(f"message longer than {self.max_size} bytes")
        return messages


# --------------------------------------------------------------------------------------------
# requests: building (client side)


def build_request(body: str, user: str, groups: str = "NONE") -> bytes:
    """The bytes UNICORE/X sends for ``body`` on behalf of ``user``/``groups``."""
    check_token("user", user)
    check_token("groups", groups)
    if "#TSI_IDENTITY" in body:
        raise ValueError("a request body must not contain #TSI_IDENTITY")
    if ENDOFMESSAGE in body.split("\n"):
        raise ValueError("a request body must not contain an ENDOFMESSAGE line")
    script = body.split(f"\n{SCRIPT_TAG}\n", 1)[1] if f"\n{SCRIPT_TAG}\n" in body else ""
    mistaken = official_command(script)
    if mistaken:
        raise ValueError(f"the script holds a line ending in #TSI_{mistaken}, which the "
                         "official TSI would take as its command")
    if not body.endswith("\n"):
        body += "\n"
    return f"{body}\n#TSI_IDENTITY {user} {groups}\n\n{ENDOFMESSAGE}\n".encode()


def check_token(what: str, value: str) -> str:
    if not _TOKEN_RE.match(value or ""):
        raise ValueError(f"{what} must be one non-empty word without whitespace: {value!r}")
    return value


def _param(name: str, value: object) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"#TSI_{name} value must not contain a line break: {text!r}")
    return f"#TSI_{name} {text}\n"


def ping_body() -> str:
    return "#TSI_PING\n"


def execute_script_body(script: str, discard_output: bool = False) -> str:
    discard = "#TSI_DISCARD_OUTPUT true\n" if discard_output else ""
    return f"#!/bin/bash\n#TSI_EXECUTESCRIPT\n{discard}#TSI_SCRIPT\n{script}"


def submit_body(script: str, params: dict[str, object], shebang: str = "#!/bin/bash") -> str:
    """A ``#TSI_SUBMIT`` message as UNICORE/X builds it: ``params`` maps parameter names
    (``OUTCOME_DIR``, ``USPACE_DIR``, ``STDOUT``, ``TIME``, ...) to values."""
    lines = [f"{shebang}\n#TSI_SUBMIT\n\n"]
    lines += [_param(name, value) for name, value in params.items()]
    lines.append("#TSI_SCRIPT\n")
    lines.append(script)
    return "".join(lines)


def gridvm_submit_body(script: str, params: dict[str, object],
                       files: list[tuple[str, bytes, int]], shebang: str = "#!/bin/bash") -> str:
    """GRIDVM_SUBMIT (our agent only): ``submit_body``'s job, with its USPACE_DIR made and
    ``files`` — (name relative to it, content, mode) — written first, each a header line
    ``#TSI_GRIDVM_FILE <mode, octal> <base64 name> <base64 content>``; at most
    ``MAX_INLINE_FILES`` files of ``MAX_INLINE_BYTES`` in all.  The reply is SUBMIT's."""
    if len(files) > MAX_INLINE_FILES or sum(len(d) for _n, d, _m in files) > MAX_INLINE_BYTES:
        raise ValueError(f"GRIDVM_SUBMIT carries at most {MAX_INLINE_FILES} files of "
                         f"{MAX_INLINE_BYTES} bytes")
    body = submit_body(script, params, shebang).replace("\n#TSI_SUBMIT\n",
                                                        "\n#TSI_GRIDVM_SUBMIT\n", 1)
    head, tag, rest = body.partition(f"{SCRIPT_TAG}\n")
    lines = [_param("GRIDVM_FILE", f"{mode:o} {_b64(name.encode())} {_b64(data)}")
             for name, data, mode in files]
    return head + "".join(lines) + tag + rest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") or "="


def parse_inline_files(message: str) -> list[tuple[str, bytes, int]]:
    """The ``#TSI_GRIDVM_FILE`` lines of a GRIDVM_SUBMIT: (name, content, mode)."""
    files = []
    for line in header_lines(message):
        if not line.startswith("#TSI_GRIDVM_FILE "):
            continue
        words = line.split(" ")
        try:
            if len(words) != 4:
                raise ValueError("not <mode> <name> <content>")
            mode = int(words[1], 8)
            name = base64.b64decode(words[2], validate=True).decode("utf-8")
            data = b"" if words[3] == "=" else base64.b64decode(words[3], validate=True)
        except (ValueError, UnicodeDecodeError) as err:
            raise ProtocolError(f"bad #TSI_GRIDVM_FILE line: {err}") from None
        if not 0 <= mode <= 0o7777:
            raise ProtocolError(f"bad #TSI_GRIDVM_FILE mode {words[1]}")
        files.append((name, data, mode))
    if len(files) > MAX_INLINE_FILES or sum(len(d) for _n, d, _m in files) > MAX_INLINE_BYTES:
        raise ProtocolError(f"GRIDVM_SUBMIT carries at most {MAX_INLINE_FILES} files of "
                            f"{MAX_INLINE_BYTES} bytes")
    return files


def job_command_body(command: str, bssid: str) -> str:
    """ABORTJOB, HOLDJOB, RESUMEJOB and GETJOBDETAILS."""
    check_token("BSSID", bssid)
    return f"#TSI_{command}\n" + _param("BSSID", bssid)


def status_listing_body() -> str:
    return "#TSI_GETSTATUSLISTING\n"


def ls_body(path: str, mode: str = "A") -> str:
    if mode not in ("A", "N", "R"):
        raise ValueError(f"LS mode must be A, N or R, not {mode!r}")
    return "#TSI_LS\n" + _param("LS_MODE", mode) + _param("FILE", path)


def df_body(path: str) -> str:
    return "#TSI_DF\n" + _param("FILE", path)


def get_chunk_body(path: str, offset: int, length: int) -> str:
    return ("#TSI_GETFILECHUNK\n" + _param("FILE", path) + _param("START", int(offset))
            + _param("LENGTH", int(length)))


def put_chunk_body(path: str, length: int, mode: int = 0o644, append: bool = False) -> str:
    action = FILESACTION_APPEND if append else FILESACTION_OVERWRITE
    return ("#TSI_PUTFILECHUNK\n" + _param("FILESACTION", action)
            + _param("FILE", f"{path} {mode:o}") + _param("LENGTH", int(length)))


def user_info_body() -> str:
    return "#TSI_GET_USER_INFO\n"


def get_directory_body(path: str, then_remove: bool = False) -> str:
    """GRIDVM_GETDIRECTORY (our agent only): the directory ``path`` as one tar stream.

    The reply is ``TSI_OK\\nTSI_STREAM``, then frames on the data channel (see
    ``FRAME``) ending with an empty one, then a second reply on the command channel:
    ``TSI_OK`` with the report (``format_report_line`` lines, then ``TOTAL <files>
    <bytes>``, then, when ``then_remove`` asked for it and the directory was removed after
    a complete stream, ``format_removed``), or ``TSI_FAILED``.  An agent from before
    ``then_remove`` ignores it (no ``REMOVED`` line)."""
    body = "#TSI_GRIDVM_GETDIRECTORY\n" + _param("FILE", path)
    return body + _param("GRIDVM_THEN_REMOVE", "true") if then_remove else body


def path_body(command: str, path: str) -> str:
    """GRIDVM_MKDIR and GRIDVM_REMOVE (our agent only) of ``path``."""
    return f"#TSI_{command}\n" + _param("FILE", path)


def wait_status_body(seen: int, seconds: float) -> str:
    """GRIDVM_WAITSTATUS (our agent only): the agent counts the jobs that ended; it answers
    once its count differs from ``seen`` (at once if it already does), or after ``seconds``
    (at most ``MAX_JOB_WAIT``), with ``ENDED <count>`` and then the status listing as
    GETSTATUSLISTING gives it (see ``parse_wait_status``)."""
    return ("#TSI_GRIDVM_WAITSTATUS\n" + _param("GRIDVM_SEEN", int(seen))
            + _param("WAIT", f"{seconds:g}"))


def format_wait_status(ended: int, listing: str) -> str:
    return f"ENDED {ended}\n{listing}"


def parse_wait_status(payload: str) -> tuple[int, dict[str, tuple[str, str, str]]]:
    """The agent's count of ended jobs and the status listing of a GRIDVM_WAITSTATUS."""
    first, _, listing = payload.partition("\n")
    words = first.split()
    if len(words) != 2 or words[0] != "ENDED" or not words[1].isdigit():
        raise ProtocolError(f"GRIDVM_WAITSTATUS: no ENDED line: {first[:80]!r}")
    return int(words[1]), parse_status_listing(listing)


# --------------------------------------------------------------------------------------------
# requests: parsing (agent side)


def header_lines(message: str) -> list[str]:
    """The protocol's lines of a request: those before its ``#TSI_SCRIPT`` line (all of a
    message without a script).  The script and the identity trailer after it are not."""
    lines = message.split("\n")
    return lines[: lines.index(SCRIPT_TAG)] if SCRIPT_TAG in lines else lines


def find_command(message: str) -> str | None:
    """The command of a request: the first known tag, in the official TSI's order (then our
    extensions), that is a whole header line ``#TSI_<NAME>``; None if there is none."""
    header = set(header_lines(message))
    for name in COMMANDS + EXTENSIONS:
        if f"#TSI_{name}" in header:
            return name
    return None


def official_command(text: str) -> str | None:
    """The command the official TSI would find in ``text`` (it takes the first known
    ``#TSI_<NAME>`` directly followed by a newline anywhere in the message)."""
    if "#TSI_" not in text:
        return None
    for name in COMMANDS:
        if f"#TSI_{name}\n" in text or text.endswith(f"#TSI_{name}"):
            return name
    return None


def get_param(message: str, name: str) -> str | None:
    """The value of the first header line ``#TSI_<name> <value>``; None if absent or
    empty."""
    prefix = f"#TSI_{name} "
    for line in header_lines(message):
        if line.startswith(prefix):
            return line[len(prefix):] or None
    return None


def get_number(message: str, name: str, default: int = -1) -> int:
    """A numeric parameter: parsed as float and truncated; absent gives ``default``,
    anything unparsable gives -1 (the official TSI's rule)."""
    value = get_param(message, name)
    if value is None:
        return default
    try:
        return int(float(value))
    except ValueError:
        return -1


def get_identity(message: str) -> tuple[str, str] | None:
    """``(user, groups)`` from the ``#TSI_IDENTITY`` line (the trailer after the script:
    the last such line), or None."""
    matches = _IDENTITY_RE.findall(message)
    return matches[-1] if matches else None


# --------------------------------------------------------------------------------------------
# replies


def ok_reply(payload: str | None = None) -> bytes:
    """``TSI_OK`` with an optional payload, framed; one buffer so it leaves in one write."""
    if payload is None:
        return f"{TSI_OK}\n{ENDOFMESSAGE}\n".encode()
    return f"{TSI_OK}\n{payload}\n{ENDOFMESSAGE}\n".encode("utf-8", "replace")


def failed_reply(message: str) -> bytes:
    text = str(message).replace("\r", "").replace("\n", ":")
    return f"{TSI_FAILED}: {text}\n{ENDOFMESSAGE}\n".encode("utf-8", "replace")


class Reply:
    """A parsed reply: ``ok``, the ``payload`` after ``TSI_OK`` and the ``error`` text."""

    __slots__ = ("error", "ok", "payload")

    def __init__(self, ok: bool, payload: str, error: str | None) -> None:
        self.ok = ok
        self.payload = payload
        self.error = error

    @property
    def lines(self) -> list[str]:
        return self.payload.split("\n") if self.payload else []

    def __repr__(self) -> str:
        return f"Reply(ok={self.ok!r}, payload={self.payload!r}, error={self.error!r})"


#: Commands the official TSI answers *without* the ``TSI_OK`` line when the handler comes from
#: its older modules (TSI < 11.0: the nobatch ``BSS``/``BSSCommon``/``IO`` code we ran against
#: writes ``QSTAT``, ``START_LISTING``, ``START_DF`` or the bare BSSID first; UNICORE/X's LS
#: parser skips a ``TSI_OK`` line rather than requiring it).  Value: the payload's first line
#: (None: SUBMIT's one-token BSSID).  See docs/tsi-bridge.md, "Against the official UNICORE TSI".
UNTAGGED_REPLIES = {"GETSTATUSLISTING": "QSTAT", "LS": "START_LISTING", "DF": "START_DF",
                    "SUBMIT": None}


def _untagged_payload(command: str | None, lines: list[str]) -> bool:
    if command not in UNTAGGED_REPLIES:
        return False
    first = UNTAGGED_REPLIES[command]
    if first is not None:
        return lines[0] == first
    content = [line for line in lines if line]
    return (len(content) == 1 and content[0] == lines[0] and len(lines[0].split()) == 1
            and not lines[0].startswith("TSI_"))


def parse_reply(message: bytes, command: str | None = None) -> Reply:
    """Parse one reply (without its ``ENDOFMESSAGE`` line) to ``command`` (e.g. ``"LS"``).

    Success means: the first line is ``TSI_OK`` and no line starts with ``TSI_FAILED`` (a
    handler that fails after ``TSI_OK`` appends such a line).  For the commands in
    ``UNTAGGED_REPLIES`` a reply that starts with the payload's own first line instead of
    ``TSI_OK`` is a success too (the whole reply is the payload).  Anything else is a
    ProtocolError.
    """
    text = message.decode("utf-8", "replace")
    lines = text.split("\n")
    for line in lines:
        if line.startswith(TSI_FAILED):
            error = line[len(TSI_FAILED):].lstrip(":").strip()
            return Reply(False, "", error or "TSI_FAILED without a message")
    if lines[0] != TSI_OK:
        if _untagged_payload(command, lines):
            return Reply(True, text[:-1] if text.endswith("\n") else text, None)
        raise ProtocolError(f"reply starts with neither TSI_OK nor TSI_FAILED: {text[:200]!r}")
    payload = text[len(TSI_OK) + 1:]
    if payload.endswith("\n"):
        payload = payload[:-1]
    return Reply(True, payload, None)


def chunk_length(reply: Reply) -> int:
    """``m`` from a GETFILECHUNK header reply ``TSI_OK\\nTSI_LENGTH m``."""
    for line in reply.lines:
        if line.startswith("TSI_LENGTH "):
            try:
                length = int(line[len("TSI_LENGTH "):])
            except ValueError:
                break
            if length >= 0:
                return length
    raise ProtocolError(f"GETFILECHUNK reply without a valid TSI_LENGTH: {reply.payload!r}")


# --------------------------------------------------------------------------------------------
# streams (GRIDVM_GETDIRECTORY)

#: A stream frame on the data channel: a 4-byte big-endian length, then that many bytes; an
#: empty frame ends the stream.
FRAME = struct.Struct(">I")
MAX_FRAME = 4 * 1024 * 1024
STREAM_HEADER = "TSI_STREAM"


def escape_name(name: bytes) -> str:
    """A file name for one line of text: printable characters as they are, a backslash
    doubled, anything else (control characters, bytes that are not UTF-8) as ``\\xHH``."""
    out = []
    for char in name.decode("utf-8", "surrogateescape"):
        if char == "\\":
            out.append("\\\\")
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif not char.isprintable():
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)


def format_report_line(kind: str, name: bytes, detail: str) -> str:
    """One report line of a stream: ``<KIND>\\t<escaped name>\\t<detail>``."""
    detail = str(detail).replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return f"{kind}\t{escape_name(name)}\t{detail}"


def format_removed(total: int, free: int) -> str:
    """The last report line of a stream whose directory was removed after it: the total
    and free bytes of its parent's file system, as GRIDVM_REMOVE answers them."""
    return f"REMOVED {total} {free}"


def parse_report(payload: str) -> tuple[list[tuple[str, str, str]], int, int]:
    """``([(kind, escaped name, detail)], files, bytes)`` from a stream's final reply."""
    entries: list[tuple[str, str, str]] = []
    files = size = -1
    for line in payload.split("\n"):
        if line.startswith("REMOVED "):
            continue  # parse_removed
        if line.startswith("TOTAL "):
            try:
                files, size = (int(x) for x in line.split()[1:3])
            except ValueError as err:
                raise ProtocolError(f"bad stream total {line!r}") from err
        elif line.count("\t") >= 2:
            kind, name, detail = line.split("\t", 2)
            entries.append((kind, name, detail))
    if files < 0:
        raise ProtocolError(f"stream report without its TOTAL line: {payload[-200:]!r}")
    return entries, files, size


# --------------------------------------------------------------------------------------------
# listings


def format_status_listing(jobs: list[tuple[str, str, str, str]]) -> str:
    """The GETSTATUSLISTING payload for ``(bssid, state, queue, raw)`` tuples, byte for byte
    like the official TSI (leading blanks, a blank line at the end)."""
    return "QSTAT\n" + "".join(f" {b} {s} {q} {r}\n" for b, s, q, r in jobs)


def parse_status_listing(payload: str) -> dict[str, tuple[str, str, str]]:
    """``{bssid: (state, queue, raw_state)}`` from a GETSTATUSLISTING payload."""
    lines = payload.split("\n")
    if not lines or lines[0].strip() != "QSTAT":
        raise ProtocolError(f"status listing does not start with QSTAT: {payload[:200]!r}")
    jobs = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) >= 2:
            state = fields[1] if fields[1] in JOB_STATES else "UNKNOWN"
            queue = fields[2] if len(fields) > 2 else ""
            raw = fields[3] if len(fields) > 3 else ""
            jobs[fields[0]] = (state, queue, raw)
    return jobs


class FileInfo:
    """One LS entry."""

    __slots__ = ("executable", "group", "is_dir", "mtime", "owned", "owner", "path",
                 "permissions", "readable", "size", "writable")

    def __init__(self, path: str, is_dir: bool, readable: bool, writable: bool,
                 executable: bool, owned: bool, size: int, mtime: int,
                 permissions: str = "", owner: str = "", group: str = "") -> None:
        self.path, self.is_dir, self.size, self.mtime = path, is_dir, size, mtime
        self.readable, self.writable, self.executable, self.owned = (
            readable, writable, executable, owned)
        self.permissions, self.owner, self.group = permissions, owner, group

    def __repr__(self) -> str:
        kind = "dir" if self.is_dir else "file"
        return f"FileInfo({self.path!r}, {kind}, size={self.size}, {self.permissions})"


def format_ls_entry(info: FileInfo) -> str:
    flags = "".join((
        "D" if info.is_dir else " ", "R" if info.readable else " ",
        "W" if info.writable else " ", "X" if info.executable else " ",
        "O" if info.owned else " "))
    path = info.path.replace("\n", "?").replace("\r", "?")
    return (f" {flags} {info.size} {info.mtime} {path}\n"
            f"-{info.permissions} {info.owner} {info.group}")


#: The first letter of ``stat.filemode``: regular file, directory, link, FIFO, socket, devices.
_FILE_TYPES = tuple("-dlpscb")


def parse_ls(payload: str) -> list[FileInfo]:
    """The entries of an LS payload (``START_LISTING`` ... ``END_LISTING``)."""
    lines = payload.split("\n")
    if "START_LISTING" not in lines or "END_LISTING" not in lines:
        raise ProtocolError(f"LS reply without START_LISTING/END_LISTING: {payload[:200]!r}")
    entries: list[FileInfo] = []
    for line in lines[lines.index("START_LISTING") + 1: lines.index("END_LISTING")]:
        if line[:1] == "-" and line[1:2] in _FILE_TYPES and entries:
            fields = line[1:].split(" ")
            entries[-1].permissions = fields[0]
            entries[-1].owner = fields[1] if len(fields) > 1 else ""
            entries[-1].group = fields[2] if len(fields) > 2 else ""
        elif line.startswith(" ") and len(line) > 7:
            flags, fields = line[1:6], line[7:].split(" ", 2)
            if len(fields) != 3 or not (fields[0].isascii() and fields[0].isdigit()
                                        and re.fullmatch(r"-?[0-9]+", fields[1])):
                raise ProtocolError(f"bad LS entry {line[:200]!r}: expected flags, size, "
                                    "mtime and path")
            size, mtime, path = fields
            entries.append(FileInfo(path, flags[0] == "D", flags[1] == "R", flags[2] == "W",
                                    flags[3] == "X", flags[4] == "O", int(size), int(mtime)))
    return entries


def parse_removed(payload: str) -> dict[str, int] | None:
    """The DF figures (as ``parse_df``) of a stream's ``REMOVED`` line; None without one
    (the directory is still there)."""
    for line in reversed(payload.split("\n")):
        fields = line.split()
        if len(fields) == 3 and fields[0] == "REMOVED":
            try:
                return {"TOTAL": int(fields[1]), "FREE": int(fields[2]), "USER": -1}
            except ValueError as err:
                raise ProtocolError(f"bad removal line {line!r}") from err
    return None


def format_df(total: int, free: int, user: int = -1) -> str:
    return f"START_DF\nTOTAL {total}\nFREE {free}\nUSER {user}\nEND_DF"


def parse_df(payload: str) -> dict[str, int]:
    """``{"TOTAL": bytes, "FREE": bytes, "USER": quota or -1}``."""
    values = {}
    for line in payload.split("\n"):
        fields = line.split()
        if len(fields) == 2 and fields[0] in ("TOTAL", "FREE", "USER"):
            try:
                values[fields[0]] = int(fields[1])
            except ValueError as err:
                raise ProtocolError(f"bad DF line {line!r}") from err
    if "TOTAL" not in values or "FREE" not in values:
        raise ProtocolError(f"DF reply without TOTAL/FREE: {payload[:200]!r}")
    values.setdefault("USER", -1)
    return values


def parse_user_info(payload: str) -> dict[str, object]:
    """``{"home": str, "keys": [str], "attributes": {k: v}, "status": str}``."""
    info: dict[str, object] = {"home": "", "keys": [], "attributes": {}, "status": ""}
    keys: list[str] = info["keys"]  # type: ignore[assignment]
    attributes: dict[str, str] = info["attributes"]  # type: ignore[assignment]
    for line in payload.split("\n"):
        if line.startswith("home: "):
            info["home"] = line[len("home: "):]
        elif line.startswith("Accepted key ") and ": " in line:
            keys.append(line.split(": ", 1)[1])
        elif line.startswith("Attribute: ") and "=" in line:
            key, value = line[len("Attribute: "):].split("=", 1)
            attributes[key] = value
        elif line.startswith("status: "):
            info["status"] = line[len("status: "):].strip()
    return info
