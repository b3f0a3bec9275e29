"""Memory snapshots of booted guests, and new instances restored from them.

A snapshot is taken once per :class:`SnapshotKey` (the image, the guest software, QEMU,
libvirt and the domain's hardware): a template domain boots with a medium that holds no
identity, its agent imports everything and reports a quiescent point on the console, and
the domain's state is saved (``memory.save``), with its writable overlay (``disk.qcow2``)
and its medium (``medium.iso``: no secrets) beside it.

libvirt restores a save file only into a domain of the saved name and uuid, so one file is
restored many times through a FIFO: a feeder thread writes the file's header with the
saved ``<name>`` and ``<uuid>`` replaced by the new instance's values of the same length
(nothing in the header moves), then the rest of the file as it is.  The guest still sees
the template's SMBIOS uuid (it is in guest memory): an instance learns its id with the
identity injected after the restore (``vmm.injection``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vmm.errors import RestoreFailed

log = logging.getLogger(__name__)

SAVE_MAGIC = b"LibvirtQemudSave"
#: magic, version, data_len, was_running, compressed, cookieOffset, unused[14]
SAVE_HEADER = struct.Struct("<16s5I14I")
#: the channel a restored guest's identity comes by (also in every template domain)
IDENTITY_CHANNEL = "org.gridvm.identity.0"
#: what the agent prints on the console once it waits for its identity
QUIESCENT_LINE = "gridvm: agent awaiting identity"
#: the marker on a template's medium that makes the guest's agent wait for its identity
AWAIT_IDENTITY_FILE = "tsi/await-identity"
#: bumped when what a snapshot holds, or how it is restored, changes
FORMAT = 1
#: the guest software as shipped in an image, relative to the source tree's root
GUEST_SOURCES = ("tsi_bridge/agent", "tsi_bridge/protocol.py", "image_builder/guest")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SnapshotKey:
    """Everything a saved guest state depends on; ``digest`` names its directory."""

    image_files: tuple[str, ...]  #: the sha512s of the image's files, boot order
    guest_sources: str  #: sha256 over the agent and guest init as shipped
    qemu_version: int
    libvirt_version: int
    memory_mib: int
    vcpus: int
    machine: str
    domain_xml: str  #: sha256 of the domain XML without its per-instance parts
    format: int = FORMAT

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def guest_sources_digest(root: Path = _SOURCE_ROOT,
                         sources: Iterable[str] = GUEST_SOURCES) -> str:
    """sha256 over the names and contents of the guest software's source files."""
    digest = hashlib.sha256()
    for source in sources:
        top = root / source
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot: its files and the template domain's name and uuid."""

    directory: Path
    key: str
    slot: str  #: what it is a snapshot of (image, memory, vcpus): one snapshot per slot
    name: str
    uuid: str
    created: float
    save_bytes: int

    @property
    def memory(self) -> Path:
        return self.directory / "memory.save"

    @property
    def disk(self) -> Path | None:
        disk = self.directory / "disk.qcow2"
        return disk if disk.exists() else None

    @property
    def medium(self) -> Path:
        return self.directory / "medium.iso"


class SnapshotStore:
    """``<root>/<key digest>/{memory.save, disk.qcow2, medium.iso, snapshot.json}``.

    A snapshot is complete once its ``snapshot.json`` is there (written last); one whose
    key no longer matches its slot is deleted, and beyond ``limit`` the oldest are."""

    def __init__(self, root: Path, limit: int = 8):
        self.root = Path(root)
        self.limit = limit  #: snapshots kept at most (the oldest go first)

    def find(self, key: str) -> Snapshot | None:
        meta = self.root / key / "snapshot.json"
        try:
            data = json.loads(meta.read_text())
            return Snapshot(directory=meta.parent, **data)
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Snapshot]:
        if not self.root.exists():
            return []
        found = (self.find(entry.name) for entry in sorted(self.root.iterdir()))
        return [snapshot for snapshot in found if snapshot is not None]

    def invalidate(self, slot: str, key: str) -> list[str]:
        """Delete the snapshots of ``slot`` whose key is not ``key``; returns their keys."""
        stale = [s for s in self.all() if s.slot == slot and s.key != key]
        for snapshot in stale:
            log.info("snapshot %s of %s is out of date: deleted", snapshot.key, slot)
            self.delete(snapshot.key)
        return [s.key for s in stale]

    def delete(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)

    def building(self, key: str) -> Path:
        """A fresh directory to build the snapshot ``key`` in."""
        self.root.mkdir(parents=True, exist_ok=True)
        directory = self.root / f".{key}.partial"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700)
        return directory

    def commit(self, building: Path, key: str, slot: str, name: str, uuid: str) -> Snapshot:
        """Make the snapshot built in ``building`` the one of ``key``."""
        meta = {"key": key, "slot": slot, "name": name, "uuid": uuid, "created": time.time(),
                "save_bytes": (building / "memory.save").stat().st_size}
        (building / "snapshot.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.delete(key)
        building.rename(self.root / key)
        snapshot = self.find(key)
        assert snapshot is not None
        for old in sorted(self.all(), key=lambda s: s.created)[:-self.limit]:
            log.info("snapshot %s of %s: more than %d kept, deleted", old.key, old.slot,
                     self.limit)
            self.delete(old.key)
        return snapshot


# -- the save file's header ---------------------------------------------------------------------

def xml_area(head: bytes) -> tuple[int, int]:
    """(start, end) of the domain XML in a save file that begins with ``head``."""
    if len(head) < SAVE_HEADER.size:
        raise RestoreFailed("the save file is shorter than its header")
    magic, _version, data_len, *_rest = SAVE_HEADER.unpack_from(head)
    if magic != SAVE_MAGIC:
        raise RestoreFailed("not a libvirt QEMU save file (bad magic)")
    start = SAVE_HEADER.size
    end = start + data_len
    if len(head) < end:
        raise RestoreFailed(f"the save file's XML area ({data_len} bytes) is cut short")
    xml_end = head.find(b"\0", start, end)
    if not head.startswith(b"<domain", start) or xml_end < 0:
        raise RestoreFailed("the save file holds no domain XML where its header says")
    return start, xml_end


def edit_save_head(head: bytes, replacements: Sequence[tuple[str, str]]) -> bytes:
    """``head`` with each ``(old, new)`` replaced once inside the XML area only; ``new``
    must be exactly as long as ``old`` (so that no offset of the header moves)."""
    start, end = xml_area(head)
    area = head[start:end]
    for old, new in replacements:
        old_b, new_b = old.encode(), new.encode()
        if len(old_b) != len(new_b):
            raise RestoreFailed(f"cannot put {new!r} where {old!r} was: not the same length")
        at = area.find(old_b)
        if at < 0:
            raise RestoreFailed(f"{old!r} is not in the save file's domain XML")
        area = area[:at] + new_b + area[at + len(old_b):]
    return head[:start] + area + head[end:]


def identity_replacements(snapshot: Snapshot, name: str, uuid: str) -> list[tuple[str, str]]:
    return [(f"<name>{snapshot.name}</name>", f"<name>{name}</name>"),
            (f"<uuid>{snapshot.uuid}</uuid>", f"<uuid>{uuid}</uuid>")]


class SaveFeeder:
    """Writes a save file, its header edited, into a FIFO that libvirt restores from.

    ``start()`` runs the feeding in a thread; ``stop()`` ends it whether or not libvirt ever
    opened or drained the FIFO."""

    def __init__(self, source: Path, fifo: Path, replacements: Sequence[tuple[str, str]],
                 open_timeout: float = 30.0):
        self.source, self.fifo = source, fifo
        self.replacements = list(replacements)
        self.open_timeout = open_timeout
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed {fifo.name}",
                                        daemon=True)

    def start(self) -> SaveFeeder:
        with contextlib.suppress(FileNotFoundError):
            self.fifo.unlink()
        os.mkfifo(self.fifo, 0o600)
        self._thread.start()
        return self

    def _open_fifo(self) -> int | None:
        deadline = time.monotonic() + self.open_timeout
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                if err.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.002)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        try:
            with open(self.source, "rb") as source:
                head = source.read(SAVE_HEADER.size)
                _magic, _version, data_len, *_rest = SAVE_HEADER.unpack(head)
                head += source.read(data_len)
                edited = edit_save_head(head, self.replacements)
                size = os.fstat(source.fileno()).st_size
                fd = self._open_fifo()
                if fd is None:
                    raise RestoreFailed("libvirt never opened the restore FIFO")
                try:
                    _write_all(fd, edited)
                    offset = len(head)
                    while offset < size and not self._stopping.is_set():
                        sent = os.sendfile(fd, source.fileno(), offset, size - offset)
                        if sent == 0:
                            break
                        offset += sent
                finally:
                    os.close(fd)
        except BrokenPipeError:
            pass  # libvirt stopped reading: its own error says why
        except BaseException as err:  # reported by the restore
            self.error = err

    def stop(self, timeout: float = 5.0) -> None:
        """End the feeding: unblock a writer libvirt no longer reads from."""
        self._stopping.set()
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
                os.close(reader)  # the writer gets EPIPE
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.lstat(self.fifo).st_mode):
                self.fifo.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_sparse(source: Path, target: Path) -> None:
    """A copy of a (sparse) disk image that stays sparse."""
    result = subprocess.run(["cp", "--sparse=always", str(source), str(target)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RestoreFailed(f"copying {source.name}: {result.stderr.strip()}")
