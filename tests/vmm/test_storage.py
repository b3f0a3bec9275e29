"""Base-image cache and overlays."""

import hashlib
import json
import subprocess

import pytest

from vmm.errors import ImageChecksumMismatch, ImageUnavailable
from vmm.storage import BaseImageCache, create_overlay


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def test_cache_verifies_once_then_trusts_its_name(tmp_path):
    source = tmp_path / "base.img"
    source.write_bytes(b"kernel bytes")
    cache = BaseImageCache(tmp_path / "cache")
    digest = sha512(b"kernel bytes")
    cached = cache.ensure(source, digest)
    assert cached.read_bytes() == b"kernel bytes"
    assert cached.stat().st_mode & 0o777 == 0o444  # readable by libvirt-qemu, never written
    assert cache.contains(digest)
    source.unlink()  # the cache no longer needs the source
    assert cache.ensure(source, digest) == cached


def test_wrong_checksum_is_refused_and_leaves_nothing(tmp_path):
    source = tmp_path / "base.img"
    source.write_bytes(b"tampered")
    cache = BaseImageCache(tmp_path / "cache")
    with pytest.raises(ImageChecksumMismatch) as err:
        cache.ensure(source, sha512(b"original"))
    assert err.value.reason == "IMAGE_CHECKSUM_MISMATCH"
    assert not cache.contains(sha512(b"original"))
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_missing_source_is_image_unavailable(tmp_path):
    cache = BaseImageCache(tmp_path / "cache")
    with pytest.raises(ImageUnavailable, match="does not exist"):
        cache.ensure(tmp_path / "nope", sha512(b"x"))


def test_not_a_checksum_is_refused(tmp_path):
    with pytest.raises(ImageUnavailable, match="not a sha512"):
        BaseImageCache(tmp_path).path_for("../../etc/passwd")


def test_overlay_is_backed_by_the_base(tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    overlay = create_overlay(base, tmp_path / "overlay.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["backing-filename"] == str(base)
    assert info["virtual-size"] == 1 << 30
    assert overlay.stat().st_size < 1 << 20


def test_overlay_on_a_corrupt_base_is_image_unavailable(tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"QFI\xfb" + b"\0" * 100)  # qcow2 magic, garbage header
    with pytest.raises(ImageUnavailable, match="cannot create overlay"):
        create_overlay(base, tmp_path / "overlay.qcow2")
