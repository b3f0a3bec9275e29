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


# -- layered disks -------------------------------------------------------------------------

def _qcow2(path, *io_commands, backing=None, names=None):
    """A qcow2 file (on ``backing``, with ``io_commands`` written) that then names its base
    as ``names``; (path, sha512)."""
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    args += ["-b", str(backing), "-F", "qcow2", str(path)] if backing else [str(path), "64M"]
    subprocess.run(args, check=True)
    for command in io_commands:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True,
                       capture_output=True)
    if names:
        subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", names, "-F",
                        "qcow2", str(path)], check=True)
    return path, hashlib.sha512(path.read_bytes()).hexdigest()


@pytest.fixture
def chain(tmp_path):
    """(base, layer) as (path, sha512): the layer names the base by its place in a cache."""
    from image_repo.layers import backing_reference

    base = _qcow2(tmp_path / "base.qcow2", "write -P 0x11 0 1M")
    layer = _qcow2(tmp_path / "layer.qcow2", "write -P 0x22 2M 1M", backing=base[0],
                   names=backing_reference(base[1]))
    return base, layer


def test_a_layered_disk_is_cached_member_by_member_and_its_chain_checked(tmp_path, chain):
    base, layer = chain
    cache = BaseImageCache(tmp_path / "cache")
    cached = cache.ensure_chain([base, layer])
    assert cached == cache.path_for(layer[1]) and cache.contains(base[1])
    overlay = create_overlay(cached, tmp_path / "overlay.qcow2")
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c",
                           "read -P 0x22 2M 1M", str(overlay)], capture_output=True, text=True)
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout


def test_a_tampered_base_is_refused_before_and_after_it_was_cached(tmp_path, chain):
    base, layer = chain
    cache = BaseImageCache(tmp_path / "cache")
    original = base[0].read_bytes()
    base[0].write_bytes(original[:-1] + b"\x01")
    with pytest.raises(ImageChecksumMismatch) as err:
        cache.ensure_chain([base, layer])
    assert err.value.reason == "IMAGE_CHECKSUM_MISMATCH" and not cache.contains(base[1])
    base[0].write_bytes(original)
    cache.ensure_chain([base, layer])
    cached_base = cache.path_for(base[1])
    cached_base.chmod(0o644)
    with cached_base.open("r+b") as handle:  # changed in the cache, behind its back
        handle.seek(1 << 16)
        handle.write(b"\x99")
    with pytest.raises(ImageChecksumMismatch, match="changed after it was verified"):
        cache.ensure_chain([base, layer])
    assert not cache.contains(base[1])
    assert cache.ensure_chain([base, layer]) == cache.path_for(layer[1])  # cached anew


def test_a_layer_whose_chain_is_not_the_images_is_refused(tmp_path, chain):
    from image_repo.layers import backing_reference

    base, _layer = chain
    other = _qcow2(tmp_path / "other.qcow2", "write -P 0x33 0 1M")
    cache = BaseImageCache(tmp_path / "cache")
    cache.ensure(*other)
    sneaky = _qcow2(tmp_path / "sneaky.qcow2", backing=other[0],
                    names=backing_reference(other[1]))
    with pytest.raises(ImageUnavailable, match="backing chain"):
        cache.ensure_chain([base, sneaky])


def test_several_layers_share_the_one_cached_base(tmp_path, chain):
    from image_repo.layers import backing_reference

    base, layer = chain
    second = _qcow2(tmp_path / "second.qcow2", "write -P 0x44 4M 1M", backing=base[0],
                    names=backing_reference(base[1]))
    cache = BaseImageCache(tmp_path / "cache")
    cache.ensure_chain([base, layer])
    cached_base = cache.path_for(base[1])
    before = cached_base.stat()
    base[0].unlink()  # the second layer needs no source for its base any more
    cache.ensure_chain([base, second])
    after = cached_base.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in cache.root.rglob("*") if p.is_file()) == sorted(
        [base[1], f"{base[1]}.verified", layer[1], f"{layer[1]}.verified", second[1],
         f"{second[1]}.verified"])
