"""Registration (atomic, verified), versions and lineage, status, permissions and VOs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from base.db import current_revision, head_revision, migrate
from base.identity import Caller
from image_repo.errors import (
    BadRequest,
    ChecksumMismatch,
    ImageNotFound,
    ImageUnavailable,
    NotAuthorized,
)
from image_repo.repository import ImageRepository
from tests.support.oci import oci_archive, tar_bytes

from .conftest import ADMIN, ALICE, BOB, CAROL
from .examples import builder_document, sha512, variant, write_files

KERNEL, INITRD = b"kernel-bytes", b"initrd-bytes"


@pytest.fixture
def built(tmp_path):
    """The builder's output: metadata plus vmlinuz and initrd.img."""
    files = write_files(tmp_path / "build", {"vmlinuz": KERNEL, "initrd.img": INITRD})
    return builder_document(KERNEL, INITRD), files


def stored_digests(repo) -> set[str]:
    return set(repo.store.digests())


def test_registration_fills_in_the_repository_fields(repo, built):
    doc, files = built
    record = repo.register(doc, files, ALICE)
    assert (record.name, record.version, record.status) == ("gridvm-debian12-initramfs", 1,
                                                            "active")
    assert (record.owner, record.group) == ("alice", "physics")
    assert record.base_id is None
    origin = record.metadata.origin
    assert origin.os_hash_algo == "sha512" and len(origin.os_hash_value) == 128
    assert origin.size == len(KERNEL) + len(INITRD)
    shown = repo.get(record.id, ALICE).to_dict()
    assert shown["id"] == record.id
    assert shown["general"]["owner"] == "alice" and shown["general"]["version"] == 1
    assert shown["general"]["created"].endswith("Z")
    assert shown["general"]["counters"] == {"deployments": 0, "exports": 0}
    assert stored_digests(repo) == {sha512(KERNEL), sha512(INITRD)}
    paths = repo.content_paths(record.ref, ALICE)
    assert paths["vmlinuz"].read_bytes() == KERNEL
    assert paths["initrd.img"].read_bytes() == INITRD


def test_schema_is_at_the_newest_revision_and_migrate_is_idempotent(repo):
    assert current_revision(repo.engine) == head_revision()
    migrate(repo.engine)
    assert current_revision(repo.engine) == head_revision()


def test_wrong_checksum_registers_nothing(repo, built):
    doc, files = built
    files[1].write_bytes(b"tampered initrd")  # same name, other bytes
    with pytest.raises(ChecksumMismatch) as info:
        repo.register(doc, files, ALICE)
    assert info.value.reason == "IMAGE_CHECKSUM_MISMATCH"
    assert info.value.path == "origin.content[1]"
    assert "initrd.img has sha512" in str(info.value)
    assert repo.list(ADMIN, include_deleted=True) == []
    assert stored_digests(repo) == set()
    assert list(repo.store.tmp.iterdir()) == []


def container(path: Path, architecture: str | None = "x86_64") -> dict:
    origin = {"runtime_technology": "container", "content_type": "oci",
              "source_url": "docker://localhost/c:1",
              "content": [{"role": "container", "file": path.name,
                           "sha512": sha512(path.read_bytes()), "size": path.stat().st_size}]}
    if architecture:
        origin["architecture"] = architecture
    return {"general": {"name": "c"}, "origin": origin}


def test_an_oci_archive_is_checked_at_registration(repo, tmp_path):
    """It must be an OCI image layout for the metadata's architecture; a refused one leaves
    nothing behind."""
    image = tmp_path / "image.oci.tar"
    oci_archive(image, [[("etc", None)]], architecture="arm64")
    with pytest.raises(BadRequest) as info:
        repo.register(container(image), [image], ALICE)
    assert info.value.path == "origin.architecture"
    assert str(info.value).endswith("the archive's image is for arm64, not amd64 (x86_64)")
    plain = tmp_path / "plain.tar"
    plain.write_bytes(tar_bytes([("hello", b"hi")]))
    with pytest.raises(BadRequest, match=r"not an OCI archive: it has no index\.json") as info:
        repo.register(container(plain), [plain], ALICE)
    assert info.value.path == "origin.content[0]"
    assert stored_digests(repo) == set() and list(repo.store.tmp.iterdir()) == []
    assert repo.register(container(image, "aarch64"), [image], ALICE).name == "c"
    assert repo.register(container(image, None), [image], ALICE).version == 2


def test_wrong_size_is_a_mismatch(repo, built):
    doc, files = built
    doc["origin"]["content"][0]["size"] += 1
    with pytest.raises(ChecksumMismatch, match="bytes, the metadata says"):
        repo.register(doc, files, ALICE)
    assert stored_digests(repo) == set()


def test_stated_content_digest_is_checked(repo, built):
    doc, files = built
    doc["origin"]["os_hash_value"] = "0" * 128
    with pytest.raises(ChecksumMismatch) as info:
        repo.register(doc, files, ALICE)
    assert info.value.path == "origin.os_hash_value"


def test_interrupted_registration_leaves_nothing(repo, built, tmp_path, monkeypatch):
    kept = repo.register(builder_document(name="kept"), built[1], ALICE)
    doc = builder_document(KERNEL, b"new initrd", name="interrupted")
    files = write_files(tmp_path / "new", {"vmlinuz": KERNEL, "initrd.img": b"new initrd"})

    def crash():
        raise RuntimeError("power failure")

    monkeypatch.setattr(repo, "_before_commit", crash)
    with pytest.raises(RuntimeError):
        repo.register(doc, files, ALICE)
    assert [r.name for r in repo.list(ADMIN, include_deleted=True)] == ["kept"]
    assert stored_digests(repo) == {sha512(KERNEL), sha512(INITRD)}  # the shared kernel stays
    assert repo.content_paths(kept.id, ALICE)["vmlinuz"].read_bytes() == KERNEL


def test_a_killed_registration_is_cleaned_up_on_next_open(repo, database_url, tmp_path):
    files = write_files(tmp_path / "build", {"vmlinuz": KERNEL, "initrd.img": INITRD})
    script = textwrap.dedent(f"""
        import os
        from base.identity import Caller
        from image_repo.repository import ImageRepository
        from tests.image_repo.examples import builder_document
        repo = ImageRepository({database_url!r}, {str(tmp_path / "store")!r})
        repo._before_commit = lambda: os._exit(9)   # the process dies mid-registration
        repo.register(builder_document(), {[str(f) for f in files]!r}, Caller.of("alice"))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 9, result.stderr
    assert stored_digests(repo) == {sha512(KERNEL), sha512(INITRD)}  # placed, not committed
    reopened = ImageRepository(database_url, tmp_path / "store")
    try:
        assert reopened.list(ADMIN, include_deleted=True) == []
        assert stored_digests(reopened) == set()
        assert list(reopened.store.pending.iterdir()) == []
    finally:
        reopened.close()


def test_register_many_is_all_or_nothing(repo, built):
    doc, files = built
    bad = variant(doc, **{"general.name": "second", "general.version": 5})
    with pytest.raises(BadRequest, match="next version of second is 1"):
        repo.register_many([(doc, files), (bad, files)], ALICE)
    assert repo.list(ADMIN) == []
    assert stored_digests(repo) == set()


def test_files_must_match_the_content_refs(repo, built, tmp_path):
    doc, files = built
    extra = write_files(tmp_path / "x", {"disk.qcow2": b"d"})
    with pytest.raises(BadRequest) as info:
        repo.register(doc, [*files, *extra], ALICE)
    assert info.value.path == "origin.content" and "'disk.qcow2' is not listed" in str(info.value)
    with pytest.raises(BadRequest) as info:
        repo.register(doc, files[:1], ALICE)
    assert info.value.path == "origin.content[1]" and "no file given for 'initrd.img'" in str(
        info.value)


def test_content_already_stored_need_not_be_given_again(repo, built):
    doc, files = built
    repo.register(doc, files, ALICE)
    again = repo.register(variant(doc, **{"general.name": "same-bytes"}), [], ALICE)
    assert again.version == 1
    assert stored_digests(repo) == {sha512(KERNEL), sha512(INITRD)}


@pytest.mark.parametrize(("changes", "path", "error"), [
    ({"general.status": "deprecated"}, "general.status", BadRequest),
    ({"general.counters": {"deployments": 3}}, "general.counters", BadRequest),
    ({"general.ratings": [{"user": "x", "score": 5}]}, "general.ratings", BadRequest),
    ({"general.version": 2}, "general.version", BadRequest),
    ({"general.owner": "bob"}, "general.owner", NotAuthorized),
    ({"general.group": "chemistry"}, "general.group", NotAuthorized),
    ({"general.base_image": "nonexistent:1"}, "general.base_image", BadRequest),
    ({"origin.size": 1}, "origin.size", BadRequest),
])
def test_repository_fields_are_checked(repo, built, changes, path, error):
    doc, files = built
    with pytest.raises(error) as info:
        repo.register(variant(doc, **changes), files, ALICE)
    assert info.value.path == path
    assert repo.list(ADMIN) == []


def test_an_administrator_may_register_for_another_user(repo, built):
    doc, files = built
    record = repo.register(variant(doc, **{"general.owner": "bob"}), files, ADMIN)
    assert record.owner == "bob"


def test_versions_are_immutable_and_record_their_base(repo, built, tmp_path):
    doc, files = built
    first = repo.register(doc, files, ALICE)
    second = repo.new_version(first.ref, {"general": {"description": "now with more"}}, ALICE)
    assert (second.version, second.base_id) == (2, first.id)
    assert second.metadata.general.description == "now with more"
    assert second.metadata.origin.content == first.metadata.origin.content
    assert repo.get(first.id, ALICE).metadata.general.description == doc["general"][
        "description"]
    new_initrd = b"initrd v3"
    third = repo.new_version(
        second.id,
        {"origin": {"content": [doc["origin"]["content"][0],
                                {"file": "initrd.img", "role": "initrd",
                                 "sha512": sha512(new_initrd), "size": len(new_initrd)}]}},
        ALICE, files=write_files(tmp_path / "v3", {"initrd.img": new_initrd}))
    assert third.version == 3
    assert repo.content_paths(third.ref, ALICE)["initrd.img"].read_bytes() == new_initrd
    assert [r.version for r in repo.lineage(third.ref, ALICE)] == [3, 2, 1]
    assert repo.get("gridvm-debian12-initramfs", ALICE).version == 3
    # registering the same name again continues the lineage
    fourth = repo.register(doc, files, ALICE)
    assert (fourth.version, fourth.base_id) == (4, third.id)


@pytest.mark.parametrize(("patch", "path"), [
    ({"general": {"name": "renamed"}}, "general.name"),
    ({"general": {"version": 9}}, "general.version"),
    ({"general": {"status": "deleted"}}, "general.status"),
    ({"semantic": {"os": {"distro": "Debian"}}}, "semantic.os.distro"),
])
def test_bad_new_versions(repo, built, patch, path):
    first = repo.register(*built, ALICE)
    with pytest.raises(BadRequest) as info:
        repo.new_version(first.ref, patch, ALICE)
    assert info.value.path == path
    assert [r.version for r in repo.list(ALICE)] == [1]


def test_status_transitions(repo, built):
    record = repo.register(*built, ALICE)
    assert repo.deprecate(record.ref, ALICE).status == "deprecated"
    assert repo.set_status(record.ref, "active", ALICE).status == "active"
    with pytest.raises(BadRequest, match="already active"):
        repo.set_status(record.ref, "active", ALICE)
    with pytest.raises(BadRequest, match="expected one of"):
        repo.set_status(record.ref, "archived", ALICE)
    deleted = repo.delete(record.ref, ALICE)
    assert deleted.status == "deleted" and deleted.updated >= record.updated
    with pytest.raises(BadRequest, match="deleted and cannot become active"):
        repo.set_status(record.id, "active", ALICE)
    # the record stays, the content goes
    assert repo.get(record.id, ALICE).status == "deleted"
    assert repo.list(ALICE) == []
    assert [r.status for r in repo.list(ALICE, include_deleted=True)] == ["deleted"]
    with pytest.raises(ImageUnavailable):
        repo.content_paths(record.id, ALICE)
    assert stored_digests(repo) == set()


def test_deleting_keeps_blobs_other_images_use(repo, built):
    doc, files = built
    first = repo.register(doc, files, ALICE)
    repo.register(variant(doc, **{"general.name": "twin"}), [], ALICE)
    repo.delete(first.ref, ALICE)
    assert stored_digests(repo) == {sha512(KERNEL), sha512(INITRD)}


def test_counters_and_ratings(repo, built):
    record = repo.register(*built, ALICE)
    repo.record_deployment(record.id)
    repo.record_deployment(record.id)
    repo.rate(record.ref, 4, BOB)
    repo.rate(record.ref, 5, ALICE, comment="mine")
    repo.rate(record.ref, 3, ALICE)
    shown = repo.get(record.ref, ALICE).to_dict()["general"]
    assert shown["counters"]["deployments"] == 2
    assert shown["ratings"] == [{"user": "alice", "score": 3}, {"user": "bob", "score": 4}]
    with pytest.raises(BadRequest):
        repo.rate(record.ref, 6, ALICE)


def private(doc, **extra):
    return variant(doc, **{"general.permissions": {"owner": "rw", "group": "r", "others": ""},
                           **extra})


def test_visibility_follows_owner_group_others(repo, built):
    doc, files = built
    record = repo.register(private(doc), files, ALICE)
    assert repo.get(record.ref, BOB).id == record.id          # group physics may read
    with pytest.raises(ImageNotFound):
        repo.get(record.ref, CAROL)                            # others may not
    assert repo.list(CAROL) == []
    assert repo.get(record.ref, ADMIN).id == record.id
    with pytest.raises(NotAuthorized):
        repo.deprecate(record.ref, BOB)                        # group may not write
    with pytest.raises(ImageNotFound):
        repo.deprecate(record.ref, CAROL)                      # invisible stays invisible
    with pytest.raises(NotAuthorized, match="taken"):
        repo.register(private(doc), files, CAROL)              # nor extend the lineage
    shared = repo.new_version(record.ref, {"general": {"permissions": {"group": "rw"}}}, ALICE)
    assert repo.deprecate(shared.ref, BOB).status == "deprecated"


def test_vos_restrict_visibility_except_for_the_owner(repo, built):
    doc, files = built
    record = repo.register(variant(doc, **{"semantic.vos": ["atlas"]}), files, ALICE)
    atlas_member = Caller.of("dave", vos=["atlas"])
    assert repo.get(record.ref, atlas_member).id == record.id
    assert repo.get(record.ref, ALICE).id == record.id
    for outsider in (BOB, CAROL):
        with pytest.raises(ImageNotFound):
            repo.get(record.ref, outsider)
        assert repo.list(outsider) == []
    assert repo.get(record.ref, ADMIN).id == record.id


def test_lookup_by_name_prefers_the_newest_usable_version(repo, built):
    first = repo.register(*built, ALICE)
    second = repo.new_version(first.ref, {"general": {"title": "v2"}}, ALICE)
    assert repo.get(first.name, ALICE).id == second.id
    repo.delete(second.ref, ALICE)
    assert repo.get(first.name, ALICE).id == first.id
    with pytest.raises(BadRequest):
        repo.get(f"{first.name}:latest", ALICE)
    with pytest.raises(ImageNotFound):
        repo.get("no-such-image", ALICE)


def test_references_no_image_can_have_are_refused_before_the_database(repo, built):
    """Versions beyond 32 bits overflowed PostgreSQL's INTEGER (beyond 64 SQLite's),
    thousands of digits int() and a NUL PostgreSQL's text: each was a 500 of the REST
    site."""
    record = repo.register(*built, ALICE)
    assert repo.get(f"{record.name}:{record.version:020d}", ALICE).id == record.id
    for version in (str(1 << 31), str(1 << 63), "9" * 5000, "\u00b2"):
        with pytest.raises(BadRequest, match="image version"):
            repo.get(f"{record.name}:{version}", ALICE)
    for ref in (f"{record.name}\0", f"{record.name}\0:1", "x" * 200, ":1"):
        with pytest.raises(ImageNotFound):
            repo.get(ref, ALICE)
