"""The guest image builder: real Debian packages in, bootable cached images out."""

import hashlib
import json
import subprocess
import sys
import time

import pytest

from image_builder import BuildError, build_image
from image_builder.metadata import upstream_version
from image_builder.rootfs import CHARSET_MODULES, module_load_order, prune
from tests.conftest import TEST_ROOT


def test_module_load_order_puts_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/a/virtio_ring.ko:\n"
        "kernel/a/virtio.ko: kernel/a/virtio_ring.ko\n"
        "kernel/b/virtio_net.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko kernel/c/failover.ko\n"
        "kernel/c/failover.ko:\n"
        "kernel/d/virtio-rng.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n"
    )
    order = module_load_order(tmp_path, ("virtio_net", "virtio-rng"))
    assert order == ["kernel/c/failover.ko", "kernel/a/virtio_ring.ko", "kernel/a/virtio.ko",
                     "kernel/b/virtio_net.ko", "kernel/d/virtio-rng.ko"]
    with pytest.raises(BuildError, match="nope not found"):
        module_load_order(tmp_path, ("nope",))


@pytest.mark.parametrize("keep", [False, True])
def test_prune_drops_the_iconv_charsets_unless_told_to_keep_them(tmp_path, keep):
    gconv = tmp_path / CHARSET_MODULES
    gconv.mkdir(parents=True)
    (gconv / "BIG5.so").write_bytes(b"x")
    (tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"x")
    prune(tmp_path, keep_charsets=keep)
    assert gconv.exists() is keep
    assert (tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6").exists()


@pytest.mark.parametrize(("debian", "upstream"), [
    ("3.11.2-6+deb12u9", "3.11.2"), ("1:1.35.0-4+deb12u1+b1", "1.35.0"), ("5.2.15-2+b7", "5.2.15"),
])
def test_upstream_version(debian, upstream):
    assert upstream_version(debian) == upstream


def test_unknown_kind_is_bad_input(tmp_path):
    with pytest.raises(BuildError) as err:
        build_image("floppy", output_root=tmp_path)
    assert err.value.bad_input


def listing(archive) -> list[str]:
    cpio = subprocess.run(f"zstd -dc {archive} | cpio -t --quiet", shell=True, check=True,
                          capture_output=True, text=True)
    return cpio.stdout.split()


def test_initramfs_image_contents_and_metadata(built_images):
    image = built_images["initramfs"]
    meta = image.metadata
    for ref in meta["origin"]["content"]:
        data = (image.directory / ref["file"]).read_bytes()
        assert hashlib.sha512(data).hexdigest() == ref["sha512"]
        assert len(data) == ref["size"]
    assert {r["role"] for r in meta["origin"]["content"]} == {"kernel", "initrd"}
    assert meta["origin"]["content_type"] == "kernel+initramfs"
    assert meta["origin"]["boot"]["initrd"] == "initrd.img"
    assert "console=ttyS0" in meta["origin"]["boot"]["cmdline"]
    assert meta["semantic"]["os"] == {"distro": "debian", "version": "12", "family": "linux"}
    python = next(a for a in meta["idb"]["applications"] if a["name"] == "python3")
    assert python["version"].startswith("3.11.")
    files = set(listing(image.directory / "initrd.img"))
    assert {"init", "etc/inittab", "etc/gridvm/rcS", "opt/gridvm/lib/tsi_bridge/agent/__main__.pyc",
            "usr/bin/python3.11", "bin/bash"} <= files
    # sourceless bytecode: the .pyc beside where its .py was, no source in the guest
    assert {"usr/lib/python3.11/socket.pyc", "usr/lib/python3.11/json/__init__.pyc"} <= files
    assert not any(f.endswith(".py") for f in files)
    assert not any(f.startswith(("usr/share/doc", "usr/lib/python3.11/test/")) for f in files)
    assert any(f.endswith("/virtio_net.ko") for f in files)


def test_disk_image_is_qcow2_with_a_loader(built_images):
    image = built_images["qcow2"]
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(image.directory / "disk.qcow2")],
        check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30
    loader = set(listing(image.directory / "initrd.img"))
    assert {"init", "bin/busybox", "modules/order", "modules/virtio_blk.ko"} <= loader
    assert image.metadata["origin"]["content_type"] == "qcow2"


def test_same_inputs_are_not_rebuilt(built_images):
    started = time.monotonic()
    again = build_image("initramfs", output_root=TEST_ROOT / "images")
    assert again.cached and again.key == built_images["initramfs"].key
    assert again.directory == built_images["initramfs"].directory
    assert time.monotonic() - started < 10


def test_cli_build_reports_a_cached_image_as_json(built_images, monkeypatch):
    result = subprocess.run(
        [sys.executable, "-m", "gridvm", "catalogue", "build", "--kind", "qcow2", "--json",
         "--output", str(TEST_ROOT / "images")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["kind"] == "qcow2"
    assert summary["metadata"].endswith("metadata.json")


def test_cli_rejects_an_unknown_kind():
    result = subprocess.run([sys.executable, "-m", "gridvm", "catalogue", "build", "--kind",
                             "floppy"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["initramfs", "qcow2"])
def test_built_image_registers_as_it_is(built_images, tmp_path, kind):
    image = built_images[kind]
    files = [str(image.directory / ref["file"]) for ref in image.metadata["origin"]["content"]]
    result = subprocess.run(
        [sys.executable, "-m", "gridvm", "catalogue", "register", str(image.metadata_path),
         *files, "--db", f"sqlite:///{tmp_path}/catalogue.sqlite", "--store",
         str(tmp_path / "store"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout)
    assert registered["general"]["name"] == f"gridvm-debian12-{kind}"
    assert registered["general"]["version"] == 1


def test_erofs_image_is_a_read_only_root_with_the_agent_and_an_overlay_loader(
        erofs_image, tmp_path):
    image = erofs_image
    meta = image.metadata
    assert meta["origin"]["content_type"] == "raw"
    assert meta["origin"]["boot"]["readonly_disk"] is True
    assert {r["role"]: r["file"] for r in meta["origin"]["content"]} == {
        "kernel": "vmlinuz", "initrd": "initrd.img", "disk": "root.erofs"}
    root = tmp_path / "root"
    subprocess.run(["fsck.erofs", f"--extract={root}", str(image.directory / "root.erofs")],
                   check=True, capture_output=True)
    assert (root / "opt/gridvm/lib/tsi_bridge/agent/__main__.pyc").is_file()
    assert (root / "usr/lib/python3.11/socket.pyc").is_file()
    assert not list(root.rglob("*.py"))  # sourceless bytecode, as in the initramfs
    assert (root / "etc/gridvm/rcS").is_file() and (root / "usr/bin/python3.11").is_file()
    assert (root / "init").is_symlink() and (root / "sbin/init").exists()
    loader = set(listing(image.directory / "initrd.img"))
    assert {"init", "rootfs", "modules/order", "modules/virtio_blk.ko", "modules/erofs.ko",
            "modules/overlay.ko"} <= loader
    assert not any(f.startswith("usr/") for f in loader)  # the root is on the disk only
    files = tmp_path / "loader"
    files.mkdir()
    subprocess.run(f"zstd -dc {image.directory / 'initrd.img'} | cpio -id --quiet init rootfs",
                   shell=True, check=True, cwd=files)
    assert (files / "rootfs").read_text() == "erofs\n"
    init = (files / "init").read_text()
    assert "mount -t erofs -o ro" in init and "mount -t overlay" in init
