"""Bundles: an image with its lineage, files and endorsements, exported from one repository
and imported into another (two catalogues, two stores); damaged bundles are refused."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime, timedelta

import pytest

from image_repo.bundle import MANIFEST, BundleError, export_bundle, import_bundle
from image_repo.errors import ChecksumMismatch, ImageUntrusted
from image_repo.repository import ImageRepository
from image_repo.trust import create_endorsement

from .conftest import ADMIN, ALICE, BOB
from .examples import builder_document, write_files


@pytest.fixture
def other(database_url, tmp_path):
    """A second site's repository (its own catalogue and store)."""
    url = (database_url.replace("catalogue.sqlite", "second.sqlite")
           if database_url.startswith("sqlite") else database_url + "_second")
    if not url.startswith("sqlite"):
        pytest.skip("the second catalogue is a SQLite file")
    repository = ImageRepository(url, tmp_path / "second-store")
    yield repository
    repository.close()


def lineage_of_three(repo, tmp_path):
    first = repo.register(builder_document(), write_files(
        tmp_path / "v1", {"vmlinuz": b"kernel-bytes", "initrd.img": b"initrd-bytes"}), ALICE)
    second = repo.new_version(first.ref, {"general": {"title": "second"}}, ALICE)
    doc = builder_document(initrd=b"new-initrd")
    third = repo.new_version(second.ref, {"general": {"title": "third"},
                                          "origin": {"content": doc["origin"]["content"]}},
                             ALICE, files=write_files(tmp_path / "v3",
                                                      {"initrd.img": b"new-initrd"}))
    return first, second, third


def endorse(repo, pki, record):
    endorser = pki.endorsers["ec"]
    return repo.endorse(record.id, create_endorsement(
        record.identity, endorser.cert_pem, endorser.key_pem(),
        expires=datetime.now(UTC) + timedelta(days=30)), ALICE)


def test_a_round_trip_keeps_ids_versions_lineage_and_endorsements(repo, other, tmp_path, pki):
    first, second, third = lineage_of_three(repo, tmp_path)
    endorse(repo, pki, third)
    bundle = export_bundle(repo, third.ref, ALICE, tmp_path / "image.tar")
    result = import_bundle(other, bundle, BOB)
    assert [(r.id, r.version) for r in result.imported] == [
        (first.id, 1), (second.id, 2), (third.id, 3)]
    copy = other.get(third.id, BOB)
    assert copy.base_id == second.id
    assert copy.metadata.general.created == third.metadata.general.created
    assert copy.owner == "bob"  # the importer owns what it imports
    assert copy.metadata.general.title == "third"
    assert [e.fingerprint for e in copy.endorsements] == [
        e.fingerprint for e in repo.get(third.id, ALICE).endorsements]
    assert result.endorsements == 1
    paths = other.content_paths(third.id, BOB)
    assert paths["initrd.img"].read_bytes() == b"new-initrd"
    assert [r.id for r in other.lineage(third.id, BOB)] == [third.id, second.id, first.id]
    again = import_bundle(other, bundle, BOB)  # nothing changes the second time
    assert again.imported == [] and sorted(again.skipped) == sorted(
        [first.id, second.id, third.id])


def test_an_admin_import_keeps_the_owner(repo, other, tmp_path):
    record = repo.register(builder_document(b"k", b"i"), write_files(
        tmp_path / "f", {"vmlinuz": b"k", "initrd.img": b"i"}), ALICE)
    bundle = export_bundle(repo, record.ref, ALICE, tmp_path / "b.tar")
    [copy] = import_bundle(other, bundle, ADMIN).imported
    assert copy.owner == "alice" and copy.group == "physics"


def rewrite(bundle, target, change):
    """Copy a bundle, letting ``change(name, data)`` return new bytes (or None: drop)."""
    with tarfile.open(bundle) as source, tarfile.open(target, "w") as out:
        for member in source:
            data = change(member.name, source.extractfile(member).read())
            if data is None:
                continue
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return target


def test_damaged_bundles_are_refused_and_nothing_is_registered(repo, other, tmp_path, pki):
    record = repo.register(builder_document(b"kernel", b"initrd"), write_files(
        tmp_path / "f", {"vmlinuz": b"kernel", "initrd.img": b"initrd"}), ALICE)
    endorse(repo, pki, record)
    bundle = export_bundle(repo, record.ref, ALICE, tmp_path / "b.tar")

    flipped = rewrite(bundle, tmp_path / "flip.tar", lambda name, data:
                      data.replace(b"kernel", b"kernal") if name.startswith("blobs/") else data)
    with pytest.raises(ChecksumMismatch, match="is damaged"):
        import_bundle(other, flipped, BOB)

    def forged(name, data):
        if name != MANIFEST:
            return data
        doc = json.loads(data)
        doc["images"][0]["document"]["general"]["name"] = "other-name"
        return json.dumps(doc).encode()

    with pytest.raises(ImageUntrusted, match="an endorsement does not verify"):
        import_bundle(other, rewrite(bundle, tmp_path / "forged.tar", forged), BOB)
    no_blob = rewrite(bundle, tmp_path / "noblob.tar",
                      lambda name, data: None if name.startswith("blobs/") else data)
    with pytest.raises(BundleError, match=r"origin\.content\[\d\]: has no blob"):
        import_bundle(other, no_blob, BOB)
    no_manifest = rewrite(bundle, tmp_path / "nom.tar",
                          lambda name, data: None if name == MANIFEST else data)
    with pytest.raises(BundleError, match=r"has no gridvm-bundle\.json"):
        import_bundle(other, no_manifest, BOB)
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)
    with pytest.raises(BundleError, match="is not a tar archive"):
        import_bundle(other, tmp_path / "junk.tar", BOB)
    with tarfile.open(tmp_path / "link.tar", "w") as out:
        link = tarfile.TarInfo("blobs/" + "0" * 128)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        out.addfile(link)
    with pytest.raises(BundleError, match="is not a regular file"):
        import_bundle(other, tmp_path / "link.tar", BOB)
    with pytest.raises(BundleError, match="is larger than 100 bytes"):
        import_bundle(other, bundle, BOB, max_bytes=100)
    (tmp_path / "cut.tar").write_bytes(bundle.read_bytes()[:1000])  # cut in the manifest
    with pytest.raises(BundleError, match="is damaged: it ends early"):
        import_bundle(other, tmp_path / "cut.tar", BOB)
    assert other.list(ADMIN, include_deleted=True) == []
    assert list(other.store.digests()) == []


def test_a_layered_image_travels_with_its_base_and_keeps_its_layer(repo, other, tmp_path):
    from .test_layers import disk_document, qemu_img

    base, layer = tmp_path / "base.qcow2", tmp_path / "layer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(layer))
    base_record = repo.register(disk_document("bundle-base", base), [base], ALICE)
    layered = repo.register(disk_document("bundle-layer", layer, backing=base_record.id),
                            [layer], ALICE)
    bundle = export_bundle(repo, layered.ref, ALICE, tmp_path / "layer.tar")
    result = import_bundle(other, bundle, BOB)
    assert [r.id for r in result.imported] == [base_record.id, layered.id]
    [member] = other.backing_files(layered.id, BOB)
    assert member.image_id == base_record.id
    imported = other.get(layered.id, BOB).metadata.origin.content[0]
    assert imported.sha512 == layered.metadata.origin.content[0].sha512  # not rewritten again
