"""Matching: ranking, reasons (words and data), version operators, missing properties,
visibility before matching."""

from __future__ import annotations

import pytest

from base.identity import Caller
from image_repo.errors import BadRequest, NoMatchingImage
from image_repo.matching import find_application
from image_repo.schema import validate
from image_repo.versions import OPERATORS, Version, parse_constraint

from .conftest import ADMIN, ALICE, BOB, CAROL
from .examples import builder_document, sha512, variant

DISK = b"disk"


def image(name, **changes):
    return variant(builder_document(name=name), **changes)


def apps(*pairs):
    return [{"name": n, "version": v} if v else {"name": n} for n, v in pairs]


def silent(name):
    """An image that states nothing but its content."""
    return {"general": {"name": name, "permissions": {"others": "r"}},
            "origin": {"content_type": "qcow2", "content": [
                {"file": "disk.qcow2", "role": "disk", "sha512": sha512(DISK),
                 "size": len(DISK)}]}}


@pytest.fixture
def catalogue(repo, tmp_path):
    """A small catalogue; returns name -> record."""
    (tmp_path / "files").mkdir()
    for name, data in {"vmlinuz": b"kernel-bytes", "initrd.img": b"initrd-bytes",
                       "disk.qcow2": DISK}.items():
        (tmp_path / "files" / name).write_bytes(data)
    kernel_files = [tmp_path / "files" / "vmlinuz", tmp_path / "files" / "initrd.img"]
    docs = {
        "deb12": (image("deb12"), ALICE),
        "deb11": (image("deb11", **{"semantic.os.version": "11",
                                     "idb.applications": apps(("python3", "3.9.2"))}), ALICE),
        "ubuntu": (image("ubuntu", **{"semantic.os": {"distro": "ubuntu", "version": "22.04"},
                                      "idb.applications": apps(("python3", "3.10.12")),
                                      "idb.resource_limits": {"cpus": 2, "memory_mib": 4096}}),
                   ALICE),
        "arm": (image("arm", **{"origin.architecture": "aarch64"}), ALICE),
        "atlas-only": (image("atlas-only", **{"semantic.vos": ["atlas"]}), ALICE),
        "carols": (image("carols", **{"general.permissions": {"others": ""}}), CAROL),
        "silent": (silent("silent"), ALICE),
        "debian-container": ({"general": {"name": "debian-container",
                                          "permissions": {"others": "r"}},
                              "origin": {"runtime_technology": "container",
                                         "content_type": "oci",
                                         "source_url": "docker://debian:12"}}, ALICE),
        "runner": (image("runner", **{"idb.applications": apps(("CONTAINER", "1.3.1"))}),
                   ALICE),
    }
    records = {}
    for name, (doc, owner) in docs.items():
        files = [tmp_path / "files" / "disk.qcow2"] if name == "silent" else (
            [] if name == "debian-container" else kernel_files)
        records[name] = repo.register(doc, files, owner)
    return records


def refs(items):
    return [item.name for item in items]


def reasons_of(result, name):
    [rejection] = [r for r in result.rejected if r.name == name]
    return {reason.code: reason for reason in rejection.reasons}


TYPICAL = {"os": {"distro": "debian", "version": ">=12"}, "architecture": "x86_64",
           "applications": [{"name": "python3", "version": ">=3.10"}]}


def test_typical_requirement_ranks_stated_fits_first(repo, catalogue):
    result = repo.match(TYPICAL, ALICE)
    names = refs(result.candidates)
    assert set(names[:2]) == {"deb12", "atlas-only"}
    # this fits only because it states nothing about OS, architecture or applications
    assert set(names[2:]) == {"silent"}
    assert result.best.name in ("deb12", "atlas-only")
    assert result.candidates[0].stated == ("architecture", "os", "applications")
    assert result.candidates[-1].stated == ()


def test_every_rejected_image_says_why(repo, catalogue):
    result = repo.match(TYPICAL, ALICE)
    deb11 = reasons_of(result, "deb11")
    assert deb11["OS_VERSION"].message == "os.version 11 < required 12"
    assert deb11["OS_VERSION"].path == "semantic.os.version"
    assert (deb11["OS_VERSION"].required, deb11["OS_VERSION"].offered) == (">=12", "11")
    assert deb11["APPLICATION_VERSION"].message == "python3 version 3.9.2 < required 3.10"
    ubuntu = reasons_of(result, "ubuntu")
    assert ubuntu["OS_DISTRO"].message == "os.distro is ubuntu, required debian"
    assert reasons_of(result, "arm")["ARCHITECTURE"].message == (
        "architecture is aarch64, required x86_64")
    runner = reasons_of(result, "runner")
    assert runner["APPLICATION_MISSING"].message == (
        "application python3 is not provided (provides CONTAINER)")
    as_data = result.to_dict()["rejected"]
    assert {"code", "path", "required", "offered", "message"} <= set(
        as_data[0]["reasons"][0])


def test_invisible_images_are_never_mentioned(repo, catalogue):
    result = repo.match(TYPICAL, BOB)
    everything = refs(result.candidates) + refs(result.rejected)
    assert "carols" not in everything
    assert "atlas-only" not in everything              # bob is not in VO atlas
    assert "deb12" in everything
    admin = repo.match(TYPICAL, ADMIN)
    assert "carols" in refs(admin.candidates) and "atlas-only" in refs(admin.candidates)


def test_asking_for_an_invisible_image_does_not_reveal_it(repo, catalogue):
    result = repo.match({"image": "carols"}, ALICE)
    assert result.candidates == []
    assert "carols" not in refs(result.rejected)
    assert {r.reasons[0].code for r in result.rejected} == {"IMAGE_NAME"}


def test_nothing_visible(repo, catalogue):
    result = repo.match({}, Caller.of("nobody"))
    assert "carols" not in refs(result.candidates)
    empty = repo.match({"image": "carols"}, Caller.of("nobody"))
    assert empty.candidates == [] and "carols" not in refs(empty.rejected)


def test_empty_catalogue(repo):
    result = repo.match(TYPICAL, ALICE)
    assert result.candidates == [] and result.rejected == []
    assert result.summary() == "no image is visible to you"


def test_resource_limits(repo, catalogue):
    result = repo.match({"os": {"distro": "ubuntu"}, "cpus": 4, "memory_mib": 1024}, ALICE)
    limit = reasons_of(result, "ubuntu")
    assert limit["CPUS_LIMIT"].message == "cpus 4 > allowed 2 (this image's limit: cpus 1 to 2)"
    assert (limit["CPUS_LIMIT"].required, limit["CPUS_LIMIT"].offered) == (4, 2)
    assert limit["CPUS_LIMIT"].path == "idb.resource_limits.cpus"
    assert "MEMORY_LIMIT" not in limit
    assert "ubuntu" in refs(repo.match({"cpus": 2}, ALICE).candidates)


def test_vo_requirement(repo, catalogue):
    member_of_both = Caller.of("erin", vos=["atlas", "cms"])
    result = repo.match({"vo": "cms"}, member_of_both)
    assert reasons_of(result, "atlas-only")["VO"].message == "image is for VOs atlas, not cms"
    assert "deb12" in refs(result.candidates)
    assert refs(repo.match({"vo": "atlas"}, member_of_both).candidates)[0] == "atlas-only"


def test_community_requirement(repo, catalogue):
    repo.new_version("deb12", {"general": {"communities": ["hep"]}}, ALICE)
    result = repo.match({"community": "bio"}, ALICE)
    assert reasons_of(result, "deb12")["COMMUNITY"].offered == ["hep"]
    assert refs(repo.match({"community": "hep"}, ALICE).candidates)[0] == "deb12"


def test_explicit_image_by_name_id_and_version(repo, catalogue):
    by_name = repo.match({"image": "deb11"}, ALICE)
    assert refs(by_name.candidates) == ["deb11"]
    assert reasons_of(by_name, "deb12")["IMAGE_NAME"].message == (
        "image deb12:1 is not the requested deb11")
    assert refs(repo.match({"image": catalogue["arm"].id}, ALICE).candidates) == ["arm"]
    assert refs(repo.match({"image": "arm:1"}, ALICE).candidates) == ["arm"]
    assert repo.match({"image": "arm:2"}, ALICE).candidates == []


def test_deleted_images_are_only_mentioned_when_named(repo, catalogue):
    repo.delete("deb11", ALICE)
    assert "deb11" not in refs(repo.match(TYPICAL, ALICE).rejected)
    result = repo.match({"image": "deb11"}, ALICE)
    assert result.candidates == []
    assert reasons_of(result, "deb11")["IMAGE_DELETED"].message == "deb11:1 is deleted"
    with pytest.raises(NoMatchingImage) as info:
        result.require()
    assert info.value.reason == "NO_MATCHING_IMAGE"
    assert "deb11:1: deb11:1 is deleted" in str(info.value)


def test_container_image_url(repo, catalogue):
    """An IMAGE_URL that is no registered container image: only a VM image built from it or
    declaring CONTAINER runs it, not one that merely states nothing (that ran any container
    on its own OS); a container image never boots as a VM."""
    result = repo.match({"container_image_url": "docker://debian:12"}, ALICE)
    assert refs(result.candidates) == ["runner"]
    assert reasons_of(result, "deb12")["CONTAINER_IMAGE"].message == (
        "image is not docker://debian:12 and does not provide the CONTAINER application")
    assert "CONTAINER_IMAGE" in reasons_of(result, "silent")
    assert reasons_of(result, "debian-container")["CONTAINER_NOT_BOOTABLE"].message == (
        "a container image (oci) runs in a VM image with a container runtime, it does not boot")


def test_a_registered_container_needs_a_vm_image_with_a_runtime(repo, catalogue, tmp_path):
    repo.register(image("crun-host", **{"semantic.container_runtime": {
        "name": "crun", "executable": "/usr/bin/crun", "version": "1.8.1"}}),
        [tmp_path / "files" / "vmlinuz", tmp_path / "files" / "initrd.img"], ALICE)
    result = repo.match({"container_runtime": True, "architecture": "x86_64"}, ALICE)
    assert refs(result.candidates) == ["crun-host"]
    assert reasons_of(result, "deb12")["CONTAINER_RUNTIME"].message == (
        "image offers no container runtime")
    assert set(reasons_of(result, "debian-container")) == {
        "CONTAINER_RUNTIME", "CONTAINER_NOT_BOOTABLE"}
    arm = repo.match({"container_runtime": True, "architecture": "aarch64"}, ALICE)
    assert arm.best is None
    assert reasons_of(arm, "crun-host")["ARCHITECTURE"].message == (
        "architecture is x86_64, required aarch64")


def test_deprecated_images_rank_after_active_ones(repo, catalogue):
    repo.deprecate("atlas-only", ALICE)
    names = refs(repo.match(TYPICAL, ALICE).candidates)
    assert names[0] == "deb12"
    assert names[-1] == "atlas-only"   # even after the images that state nothing
    assert repo.match(TYPICAL, ALICE).candidates[-1].status == "deprecated"


def test_newer_versions_rank_first_and_index_follows_changes(repo, catalogue):
    newer = repo.new_version("deb12", {"general": {"title": "newer"}}, ALICE)
    candidates = repo.match({**TYPICAL, "vo": "cms"}, ALICE).candidates
    assert candidates[0].id == newer.id
    assert repo.match({"image": "deb12"}, ALICE).candidates[0].id == newer.id
    repo.delete(newer.ref, ALICE)
    assert newer.id not in {c.id for c in repo.match(TYPICAL, ALICE).candidates}


def test_limit_and_summary(repo, catalogue):
    result = repo.match({}, ALICE, limit=2)
    assert len(result.candidates) == 2
    assert result.summary().endswith(f"best {result.best.ref}")
    nothing = repo.match({"image": "nope"}, ALICE)
    text = nothing.summary(limit=2)
    assert text.startswith("no image matches — ") and "more images" in text


@pytest.mark.parametrize(("doc", "path", "words"), [
    ({"os": {"vesion": "12"}}, "requirements.os.vesion", "did you mean 'version'"),
    ({"os": {"version": "=>12"}}, "requirements.os.version", "version constraint"),
    ({"os": {"version": 12}}, "requirements.os.version", "expected a string"),
    ({"os": {"version": "banana"}}, "requirements.os.version", "release constraint"),
    ({"os": {"version": ">=12, <bookworm"}}, "requirements.os.version", "release constraint"),
    ({"applications": [{"version": "1"}]}, "requirements.applications[0].name", "missing"),
    ({"cpus": 0}, "requirements.cpus", "at least 1"),
    ({"cpus": "2"}, "requirements.cpus", "expected an integer"),
    ({"architecture": "amd64"}, "requirements.architecture", "expected one of"),
    ({"image": "a/b"}, "requirements.image", "image id, name"),
    ({"colour": "blue"}, "requirements.colour", "unknown key"),
])
def test_bad_requirements_name_their_path(repo, doc, path, words):
    with pytest.raises(BadRequest) as info:
        repo.match(doc, ALICE)
    assert info.value.path == path and words in str(info.value)


@pytest.mark.parametrize("version", [">=3.10", "3.11", "~=3.11", ">=3.10, <4", "<3.10", None])
def test_matching_and_the_runner_share_one_idb_lookup(repo, catalogue, version):
    """An image that matches an application requirement is one whose IDB entry the runner
    finds (``>=3.10`` for python3 3.11.2 used to match and then fail the job), and an image
    rejected for the application has no entry the runner would find."""
    wanted = {"name": "Python3", **({"version": version} if version else {})}
    result = repo.match({"applications": [wanted]}, ALICE)
    constraint = result.requirements.applications[0].constraint
    for candidate in result.candidates:
        metadata = catalogue[candidate.name].metadata
        if metadata.idb.applications:  # an image with no IDB is silent: no constraint
            found = find_application(metadata, "Python3", constraint)
            assert found is not None and found.name == "python3", candidate.name
    for rejection in result.rejected:
        metadata = catalogue[rejection.name].metadata
        assert find_application(metadata, "Python3", constraint) is None, rejection.name
    assert ("deb12" in refs(result.candidates)) is (version != "<3.10")


def test_the_first_fitting_idb_entry_is_the_one(repo):
    doc = image("two", **{"idb.applications": [
        {"name": "python3", "version": "3.9.2", "executable": "/usr/bin/python3.9"},
        {"name": "PYTHON3", "version": "3.11.2", "executable": "/usr/bin/python3.11"},
        {"name": "python3", "executable": "/usr/local/bin/python3"}]})
    metadata = validate(doc)
    assert find_application(metadata, "python3", None).executable == "/usr/bin/python3.9"
    assert find_application(metadata, "python3", parse_constraint(">=3.10")).executable == (
        "/usr/bin/python3.11")
    # an entry without a version satisfies any constraint, as it does in matching
    assert find_application(metadata, "python3", parse_constraint(">=4")).executable == (
        "/usr/local/bin/python3")
    assert find_application(metadata, "bash", None) is None


@pytest.mark.parametrize(("offered", "constraint", "holds"), [
    ("12", "12", True), ("12.4", "12", True), ("12", "12.4", False), ("12.0", "12", True),
    ("11", "!=12", True), ("12.1", "!=12", False),
    ("11", "<12", True), ("12", "<12", False), ("12", "<=12", True), ("12.1", "<=12", False),
    ("13", ">12", True), ("12", ">12", False), ("12", ">=12", True), ("11.9", ">=12", False),
    ("3.11.2", ">=3.10, <4", True), ("4.0", ">=3.10, <4", False),
    ("3.12", "~=3.11", True), ("4.0", "~=3.11", False), ("3.10", "~=3.11", False),
    ("6.1.5", "~=6.1.0", True), ("6.2.0", "~=6.1.0", False),
    ("3.12rc1", "<3.12", True), ("6.1.0-13", ">6.1.0-9", True), ("10", ">9", True),
    ("22.04", ">=20.04", True), ("1.10", ">1.9", True),
])
def test_version_operators(offered, constraint, holds):
    assert parse_constraint(constraint).holds(offered) is holds


def test_operator_table_is_the_single_source():
    assert set(OPERATORS) == {"=", "!=", "<", "<=", ">", ">=", "~="}
    assert Version("12") == Version("12.0") and hash(Version("12")) == hash(Version("12.0"))
    with pytest.raises(BadRequest, match="operators: = != < <= > >= ~="):
        parse_constraint("?12", "x")


def test_another_repository_on_the_same_catalogue_follows_changes(repo, catalogue,
                                                                   database_url, tmp_path):
    from image_repo.repository import ImageRepository

    other = ImageRepository(database_url, tmp_path / "store")
    try:
        assert "deb12" in refs(other.match(TYPICAL, ALICE).candidates)
        repo.delete("deb12", ALICE)
        newer = repo.register(image("deb13", **{"semantic.os.version": "13"}), [], ALICE)
        after = other.match(TYPICAL, ALICE)
        assert "deb12" not in refs(after.candidates) + refs(after.rejected)
        assert newer.id in {c.id for c in after.candidates}
    finally:
        other.close()
