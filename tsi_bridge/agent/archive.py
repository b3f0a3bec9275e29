"""A job directory as one tar stream: its regular files, directories and inner links.

Runs with the job user's permissions (in a forked child, see ``worker``) and confines every
step to the directory: directories are opened relative to their parent's descriptor with
``O_NOFOLLOW``, files with ``O_NOFOLLOW | O_NONBLOCK`` and kept only if ``fstat`` says they
are regular (a FIFO never blocks, a device is never read).  Symbolic links whose target
resolves inside the directory are archived as relative links; links leading outside and
special files are skipped, unreadable files too, and each is reported (one report line per
name, see ``protocol.format_report_line``).  A file that shrinks while it is read is padded
with zeros and reported, so the stream stays a valid archive.  Names are byte-exact (PAX
headers; non-UTF-8 bytes travel as ``hdrcharset=BINARY``).
"""

from __future__ import annotations

import os
import stat
import tarfile

from tsi_bridge import protocol

BLOCK = tarfile.BLOCKSIZE
PIECE = 256 * 1024
#: Directory levels followed below the job directory (deeper ones are skipped, reported).
MAX_DEPTH = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


class _Writer:
    """Buffered writes of the stream to a descriptor; counts members and bytes."""

    def __init__(self, out_fd: int, report_fd: int) -> None:
        self.out_fd, self.report_fd = out_fd, report_fd
        self.buffer = bytearray()
        self.files = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= PIECE:
            self.flush()

    def flush(self) -> None:
        with memoryview(self.buffer) as view:
            done = 0
            while done < len(view):
                done += os.write(self.out_fd, view[done:])
        self.buffer.clear()

    def report(self, kind: str, rel: str, detail: str) -> None:
        data = (protocol.format_report_line(kind, os.fsencode(rel), detail) + "\n").encode()
        while data:
            data = data[os.write(self.report_fd, data):]

    def header(self, info: tarfile.TarInfo) -> None:
        self.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))


def _info(rel: str, status: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.type = kind
    info.mtime = int(status.st_mtime)
    info.mode = stat.S_IMODE(status.st_mode)
    return info


def _add_file(out: _Writer, dir_fd: int, name: str, rel: str) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        out.report("SKIPPED", rel, err.strerror or str(err))
        return
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):  # replaced by something else meanwhile
            out.report("SKIPPED", rel, "not a regular file")
            return
        info = _info(rel, status, tarfile.REGTYPE)
        info.size = status.st_size
        out.header(info)
        remaining = info.size
        while remaining > 0:
            try:
                piece = os.read(fd, min(remaining, PIECE))
            except OSError as err:
                out.report("INCOMPLETE", rel, err.strerror or str(err))
                piece = b""
            if not piece:
                out.report("INCOMPLETE", rel, f"{remaining} bytes missing (padded with zeros)")
                out.write(bytes(remaining))
                break
            out.write(piece)
            remaining -= len(piece)
        out.write(bytes(-info.size % BLOCK))
        out.files += 1
        out.bytes += info.size
    finally:
        os.close(fd)


def _add_link(out: _Writer, root: str, dir_fd: int, name: str, rel: str,
              status: os.stat_result) -> None:
    try:
        os.readlink(name, dir_fd=dir_fd)
    except OSError as err:
        out.report("SKIPPED", rel, err.strerror or str(err))
        return
    resolved = os.path.realpath(os.path.join(root, rel))
    if resolved != root and not resolved.startswith(root + os.sep):
        out.report("SKIPPED", rel, "symbolic link to outside the job directory")
        return
    parent = os.path.dirname(os.path.join(root, rel))
    info = _info(rel, status, tarfile.SYMTYPE)
    info.linkname = os.path.relpath(resolved, parent)
    info.mode = 0o777
    out.header(info)


def write_archive(root: str, out_fd: int, report_fd: int) -> None:
    """Write the tar stream of directory ``root`` to ``out_fd``, the report to ``report_fd``
    (ending with a ``TOTAL <files> <bytes>`` line).  A missing ``root`` is an empty archive
    (as LS lists nothing for it); raises OSError if ``root`` cannot be opened otherwise."""
    root = os.path.realpath(root)
    out = _Writer(out_fd, report_fd)
    try:
        dir_fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        dir_fd = None
    if dir_fd is not None:
        try:
            _add_directory(out, root, dir_fd, "", 0)
        finally:
            os.close(dir_fd)
    out.write(bytes(2 * BLOCK))
    out.flush()
    data = f"TOTAL {out.files} {out.bytes}\n".encode()
    while data:
        data = data[os.write(out.report_fd, data):]


def _add_directory(out: _Writer, root: str, dir_fd: int, prefix: str, depth: int) -> None:
    """Depth first, in name order; at most MAX_DEPTH descriptors open at once."""
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError as err:
        out.report("SKIPPED", prefix or ".", err.strerror or str(err))
        return
    for name in names:
        rel = prefix + name
        try:
            status = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as err:
            out.report("SKIPPED", rel, err.strerror or str(err))
            continue
        if stat.S_ISREG(status.st_mode):
            _add_file(out, dir_fd, name, rel)
        elif stat.S_ISLNK(status.st_mode):
            _add_link(out, root, dir_fd, name, rel, status)
        elif stat.S_ISDIR(status.st_mode):
            if depth >= MAX_DEPTH:
                out.report("SKIPPED", rel, f"more than {MAX_DEPTH} directory levels deep")
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as err:
                out.report("SKIPPED", rel, err.strerror or str(err))
                continue
            try:
                info = _info(rel, status, tarfile.DIRTYPE)
                info.mode = 0o755  # the site must be able to write into it
                out.header(info)
                _add_directory(out, root, child, rel + "/", depth + 1)
            finally:
                os.close(child)
        else:
            out.report("SKIPPED", rel, f"special file ({_kind(status.st_mode)})")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"
