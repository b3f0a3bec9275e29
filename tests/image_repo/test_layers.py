"""Layered images: a qcow2 layer registered on a base image, with real qemu-img files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from base.reasons import Reason
from image_repo import layers
from image_repo.errors import BadRequest, ImageInUse
from image_repo.layers import backing_reference, inspect_disk, make_layer
from image_repo.schema import ContentRef
from image_repo.strict import to_json

from .conftest import ALICE, CAROL

MIB = 1 << 20


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_io(path: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True,
                   capture_output=True)


def disk_document(name: str, disk: Path, *, backing: str | None = None,
                  permissions: dict | None = None) -> dict:
    ref = to_json(ContentRef.for_file(disk, "disk"))
    origin = {"content_type": "qcow2", "content": [ref], "boot": {"mode": "bootloader"}}
    if backing is not None:
        origin["backing_image"] = backing
    general = {"name": name, "permissions": permissions or {"owner": "rw", "group": "r",
                                                            "others": ""}}
    return {"general": general, "origin": origin}


@pytest.fixture
def disks(tmp_path):
    """base.qcow2 (8 MiB of data), and flat.qcow2 = the base plus 1 MiB more."""
    base, flat = tmp_path / "base.qcow2", tmp_path / "flat.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_io(base, "write -P 0x11 0 8M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    qemu_io(overlay, "write -P 0x22 16M 1M")
    qemu_img("convert", "-O", "qcow2", str(overlay), str(flat))
    return base, flat


def test_make_layer_holds_only_the_difference_and_names_the_base_by_file_name(disks,
                                                                             tmp_path):
    base, flat = disks
    layer = make_layer(flat, base, tmp_path / "layer.qcow2")
    assert inspect_disk(layer).backing_filename == "base.qcow2"
    assert layer.stat().st_size < 3 * MIB < flat.stat().st_size
    result = subprocess.run(["qemu-img", "compare", str(layer), str(flat)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_layer_is_registered_with_its_backing_file_rewritten_to_the_cached_base(
        repo, disks, tmp_path):
    base, flat = disks
    base_record = repo.register(disk_document("deb12-base", base), [base], ALICE)
    layer = make_layer(flat, base, tmp_path / "layer.qcow2")
    record = repo.register(disk_document("deb12-tools", layer, backing="deb12-base:1"),
                           [layer], ALICE)
    origin = record.metadata.origin
    assert origin.backing_image == base_record.id
    [ref] = origin.content
    stored = repo.store.path(ref.sha512)
    assert ref.sha512 == ContentRef.for_file(stored, "disk").sha512  # the rewritten file
    base_sha = base_record.metadata.origin.content[0].sha512
    assert inspect_disk(stored).backing_filename == backing_reference(base_sha)
    assert inspect_disk(layer).backing_filename == "base.qcow2"  # the upload is untouched
    assert origin.size == ref.size and origin.os_hash_value is not None
    [member] = repo.backing_files(record.id, ALICE)
    assert (member.image_id, member.sha512, member.path) == (
        base_record.id, base_sha, repo.store.path(base_sha))
    assert repo.backing_files(base_record.id, ALICE) == []
    # a new version keeps the layer (from the store) on the same base
    again = repo.new_version(record.id, {"general": {"title": "v2"}}, ALICE)
    assert again.metadata.origin.content[0].sha512 == ref.sha512


@pytest.mark.parametrize("backing", ["/etc/passwd", "../../secret.qcow2",
                                     "nbd://127.0.0.1:10809/base.qcow2",
                                     'json:{"file.filename": "base.qcow2"}'])
def test_a_layer_naming_any_other_backing_file_is_refused(repo, disks, tmp_path, backing):
    base, _flat = disks
    repo.register(disk_document("deb12-base", base), [base], ALICE)
    layer = tmp_path / "layer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2", str(layer),
             "64M")
    with pytest.raises(BadRequest) as caught:
        repo.register(disk_document("evil", layer, backing="deb12-base"), [layer], ALICE)
    assert caught.value.path == "origin.content[0]"
    assert "must name the base's disk 'base.qcow2'" in str(caught.value)
    assert repo.list(ALICE, name="evil") == []


def test_an_absolute_path_to_a_file_named_like_the_base_is_accepted_and_rewritten(
        repo, disks, tmp_path):
    base, _flat = disks
    base_record = repo.register(disk_document("deb12-base", base), [base], ALICE)
    layer = tmp_path / "layer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(layer))
    record = repo.register(disk_document("deb12-tools", layer, backing=base_record.id),
                           [layer], ALICE)
    stored = repo.store.path(record.metadata.origin.content[0].sha512)
    assert inspect_disk(stored).backing_filename == backing_reference(
        base_record.metadata.origin.content[0].sha512)


def test_a_layer_needs_a_visible_qcow2_base_and_a_backing_file(repo, disks, tmp_path):
    base, flat = disks
    repo.register(disk_document("private-base", base), [base], ALICE)
    layer = make_layer(flat, base, tmp_path / "layer.qcow2")
    with pytest.raises(BadRequest, match="no image 'private-base' is visible to carol") as c:
        repo.register(disk_document("tools", layer, backing="private-base"), [layer], CAROL)
    assert c.value.path == "origin.backing_image"
    with pytest.raises(BadRequest, match="has no backing file"):
        repo.register(disk_document("tools", flat, backing="private-base"), [flat], ALICE)
    doc = disk_document("tools", layer, backing="private-base")
    doc["origin"]["content_type"] = "raw"
    with pytest.raises(BadRequest, match="a layered image is qcow2") as c:
        repo.register(doc, [layer], ALICE)
    assert c.value.path == "origin.backing_image"


def test_layer_depth_is_bounded(repo, disks, tmp_path, monkeypatch):
    monkeypatch.setattr(layers, "MAX_DEPTH", 2)
    base, _flat = disks
    below = repo.register(disk_document("layer0", base), [base], ALICE)
    for depth in (1, 2):
        layer = tmp_path / f"layer{depth}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b",
                 below.metadata.origin.content[0].file, "-F", "qcow2", str(layer), "64M")
        below = repo.register(disk_document(f"layer{depth}", layer, backing=below.id),
                              [layer], ALICE)
    assert [m.ref for m in repo.backing_files(below.id, ALICE)] == ["layer0:1", "layer1:1"]
    layer = tmp_path / "layer3.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "layer2.qcow2", "-F", "qcow2",
             str(layer), "64M")
    with pytest.raises(BadRequest, match="at most 2 layers"):
        repo.register(disk_document("layer3", layer, backing=below.id), [layer], ALICE)


def test_a_base_cannot_be_deleted_while_layers_depend_on_it(repo, disks, tmp_path):
    base, flat = disks
    base_record = repo.register(disk_document("deb12-base", base), [base], ALICE)
    layer = make_layer(flat, base, tmp_path / "layer.qcow2")
    one = repo.register(disk_document("tools", layer, backing=base_record.id), [layer], ALICE)
    with pytest.raises(ImageInUse, match="is the base of tools:1") as caught:
        repo.delete(base_record.id, ALICE)
    assert caught.value.reason == Reason.IMAGE_IN_USE
    repo.deprecate(base_record.id, ALICE)  # deprecating is fine
    repo.delete(one.id, ALICE)
    repo.delete(base_record.id, ALICE)
    assert not repo.store.has(base_record.metadata.origin.content[0].sha512)


def test_a_disk_that_names_another_file_is_refused_unless_it_is_a_layer(repo, disks, tmp_path):
    base, _flat = disks
    for name, args in (("backed", ["-b", "/etc/shadow", "-F", "raw"]),
                       ("data-file", ["-o", f"data_file={tmp_path / 'data.raw'}"])):
        disk = tmp_path / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", *args, str(disk), "64M")
        assert layers.names_other_files(disk)
        with pytest.raises(BadRequest, match="names a backing or data file") as caught:
            repo.register(disk_document(name, disk), [disk], ALICE)
        assert caught.value.path == "origin.content[0]"
    assert not layers.names_other_files(base)


def test_matching_requires_trust_in_every_base_of_a_layer(repo, disks, tmp_path, pki):
    """A layer's bases boot with it: a requiring site matches a layer only if it trusts each
    base too, and says which base it does not trust (it used to refuse only right before boot)."""
    from tests.image_repo.test_trust import endorsement, policy

    base, flat = disks
    base_record = repo.register(disk_document("deb12-base", base), [base], ALICE)
    layer = make_layer(flat, base, tmp_path / "layer.qcow2")
    record = repo.register(disk_document("deb12-tools", layer, backing="deb12-base:1"),
                           [layer], ALICE)
    ec = pki.endorsers["ec"]
    repo.endorse(record.ref, endorsement(ec, record).to_dict(), ALICE)
    requiring = policy(pki.ca)

    result = repo.match({"image": "deb12-tools"}, ALICE, policy=requiring)
    assert result.candidates == []
    [rejection] = [r for r in result.rejected if r.name == "deb12-tools"]
    [reason] = rejection.reasons
    assert (reason.code, reason.path) == (Reason.IMAGE_UNTRUSTED, "origin.backing_image")
    assert reason.message == "a layer on deb12-base:1, which is not trusted: not endorsed"

    repo.endorse(base_record.ref, endorsement(ec, base_record).to_dict(), ALICE)
    trusted = repo.match({"image": "deb12-tools"}, ALICE, policy=requiring)
    assert [c.id for c in trusted.candidates] == [record.id]
    assert [c.id for c in repo.match({"image": "deb12-tools"}, ALICE).candidates] == [record.id]
