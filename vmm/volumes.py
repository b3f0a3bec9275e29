"""An instance's files as volumes of a libvirt storage pool on its host.

A remote hypervisor host needs nothing but libvirtd: base images are uploaded into the
host's pool with libvirt's stream API, read back and checked against their sha512 on
arrival, and kept there by checksum (``base-<sha512 prefix>``); each instance gets a qcow2
overlay created as a volume backed by its base, its contextualization medium uploaded, and
an empty console log volume QEMU writes.  A layered disk's members are uploaded the same
way, each layer with its backing reference rewritten to the volume of the one below it
(``base-<sha512 prefix>`` beside it; the rewritten copy is what is checked on arrival).
``remove_instance`` deletes an instance's own
volumes when it ends; the bases stay cached.

Every function here blocks on libvirt: they run on the host connection's worker thread
(``Hypervisor.run``), which hands them the connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape

import libvirt

from base.files import sha512_file
from vmm.errors import HypervisorError, ImageChecksumMismatch, ImageUnavailable
from vmm.storage import name_backing

BASE_PREFIX = "base-"
VERIFIED = ".verified"  #: an empty volume beside a base: it arrived whole and checked
#: the volumes an instance owns, by their suffix after the domain name
INSTANCE_SUFFIXES = ("-root.qcow2", "-context.iso", "-console.log")
CONSOLE_TAIL_BYTES = 16384


@dataclass(frozen=True)
class StoragePool:
    """The directory pool gridvm keeps on one host: its libvirt name and its path there."""

    name: str
    path: str

    def open(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        """The pool, defined, built and started first if it is not there yet."""
        try:
            pool = conn.storagePoolLookupByName(self.name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>{escape(self.name)}</name>"
                f"<target><path>{escape(self.path)}</path></target></pool>", 0)
            pool.build(0)
            with contextlib.suppress(libvirt.libvirtError):
                pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        return pool

    # -- bases -----------------------------------------------------------------------------
    def base(self, conn: libvirt.virConnect, source: Path, sha512: str) -> str:
        """The path on the host of the verified copy of ``source``: uploaded once, then
        found by its checksum (a shorter volume, a broken upload, is replaced)."""
        pool = self.open(conn)
        name = base_volume(sha512)
        return self._verified(pool, name) or self._place(conn, pool, name, source, sha512)

    def layer(self, conn: libvirt.virConnect, source: Path, sha512: str, lower: str,
              scratch: Path) -> str:
        """The path on the host of a layer (``source``, verified here against ``sha512``)
        whose backing file is the volume at ``lower``: a copy naming that volume is
        uploaded once (made in ``scratch``), then found by the layer's checksum."""
        pool = self.open(conn)
        name = base_volume(sha512)
        found = self._verified(pool, name)
        if found:
            return found
        renamed = scratch / f".layer-{sha512[:16]}.qcow2"
        try:
            shutil.copyfile(source, renamed)
            name_backing(renamed, PurePosixPath(lower).name)
            return self._place(conn, pool, name, renamed, sha512_file(renamed))
        except OSError as err:
            raise ImageUnavailable(f"cannot prepare the layer {source.name}: "
                                   f"{err.strerror or err}") from err
        finally:
            renamed.unlink(missing_ok=True)

    @staticmethod
    def _verified(pool: libvirt.virStoragePool, name: str) -> str | None:
        """The path of the volume ``name`` when it arrived whole and checked, else None
        (what an upload that never finished left is deleted)."""
        vol, verified = _lookup(pool, name), _lookup(pool, name + VERIFIED)
        if vol is not None and verified is not None:
            return vol.path()
        for stale in (vol, verified):
            if stale is not None:
                stale.delete(0)
        return None

    @staticmethod
    def _place(conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str,
               source: Path, sha512: str) -> str:
        """Upload ``source`` as the volume ``name``, check it arrived as ``sha512``."""
        vol = _upload(conn, pool, name, source)
        arrived = _sha512(conn, vol)
        if arrived != sha512:
            vol.delete(0)
            raise ImageChecksumMismatch(f"{source.name} arrived on the host with sha512 "
                                        f"{arrived[:16]}…, metadata says {sha512[:16]}…")
        _empty(pool, name + VERIFIED)
        return vol.path()

    # -- an instance's own volumes ---------------------------------------------------------
    def overlay(self, conn: libvirt.virConnect, domain: str, base_path: str,
                backing_format: str) -> str:
        pool = self.open(conn)
        base = conn.storageVolLookupByPath(base_path)
        capacity = _virtual_size(base, backing_format)
        vol = pool.createXML(
            f"<volume><name>{escape(domain)}-root.qcow2</name>"
            f"<capacity unit='bytes'>{capacity}</capacity>"
            "<target><format type='qcow2'/></target>"
            f"<backingStore><path>{escape(base_path)}</path>"
            f"<format type='{escape(backing_format)}'/></backingStore></volume>", 0)
        return vol.path()

    def upload(self, conn: libvirt.virConnect, domain: str, suffix: str, source: Path) -> str:
        pool = self.open(conn)
        name = f"{domain}{suffix}"
        old = _lookup(pool, name)
        if old is not None:
            old.delete(0)
        return _upload(conn, pool, name, source).path()

    def console(self, conn: libvirt.virConnect, domain: str) -> str:
        """An empty console log volume for QEMU to write."""
        pool = self.open(conn)
        name = f"{domain}-console.log"
        old = _lookup(pool, name)
        if old is not None:
            old.delete(0)
        return _empty(pool, name).path()

    def console_tail(self, conn: libvirt.virConnect, domain: str) -> bytes:
        """The end of the instance's console log (empty when there is none)."""
        pool = self.open(conn)
        vol = _lookup(pool, f"{domain}-console.log")
        if vol is None:
            return b""
        with contextlib.suppress(libvirt.libvirtError):
            pool.refresh(0)
            vol = _lookup(pool, f"{domain}-console.log") or vol
        size = vol.info()[1]
        offset = max(0, size - CONSOLE_TAIL_BYTES)
        chunks: list[bytes] = []
        stream = conn.newStream(0)
        vol.download(stream, offset, size - offset, 0)
        stream.recvAll(lambda _s, data, out: out.append(data), chunks)
        stream.finish()
        return b"".join(chunks)

    def remove_instance(self, conn: libvirt.virConnect, domain: str) -> None:
        """Delete the instance's overlay, medium and console log (gone already: fine)."""
        pool = self.open(conn)
        for suffix in INSTANCE_SUFFIXES:
            vol = _lookup(pool, f"{domain}{suffix}")
            if vol is not None:
                vol.delete(0)


def base_volume(sha512: str) -> str:
    if len(sha512) != 128 or any(c not in "0123456789abcdef" for c in sha512):
        raise ImageUnavailable(f"not a sha512 checksum: {sha512[:20]!r}")
    return f"{BASE_PREFIX}{sha512[:64]}"


def _lookup(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def _empty(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol:
    return pool.createXML(f"<volume><name>{escape(name)}</name>"
                          "<capacity unit='bytes'>0</capacity>"
                          "<target><format type='raw'/></target></volume>", 0)


def _upload(conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str,
            source: Path) -> libvirt.virStorageVol:
    """A raw volume holding ``source``'s bytes, streamed to the host."""
    size = source.stat().st_size
    vol = pool.createXML(f"<volume><name>{escape(name)}</name>"
                         f"<capacity unit='bytes'>{size}</capacity>"
                         "<target><format type='raw'/></target></volume>", 0)
    try:
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with open(source, "rb") as handle:
            stream.sendAll(lambda _s, n, f: f.read(n), handle)
        stream.finish()
    except (OSError, libvirt.libvirtError) as err:
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        if isinstance(err, OSError):
            raise ImageUnavailable(f"cannot read {source}: {err.strerror or err}") from err
        raise HypervisorError(f"uploading {source.name} to the host failed: "
                              f"{err.get_error_message()}") from err
    return vol


def _sha512(conn: libvirt.virConnect, vol: libvirt.virStorageVol) -> str:
    """The sha512 of the volume's bytes, as they are on the host."""
    digest = hashlib.sha512()
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    stream.recvAll(lambda _s, data, d: d.update(data), digest)
    stream.finish()
    return digest.hexdigest()


def _virtual_size(base: libvirt.virStorageVol, backing_format: str) -> int:
    """The disk size an overlay of ``base`` shows the guest: a qcow2's virtual size (read
    from its header, streamed from the host), else the file's size."""
    size = base.info()[1]
    if backing_format != "qcow2":
        return size
    chunks: list[bytes] = []
    stream = base.connect().newStream(0)
    base.download(stream, 0, 32, 0)
    stream.recvAll(lambda _s, data, out: out.append(data), chunks)
    stream.finish()
    header = b"".join(chunks)
    if header[:4] != b"QFI\xfb" or len(header) < 32:
        raise ImageUnavailable("the base image is not a qcow2 file")
    return int.from_bytes(header[24:32], "big")
