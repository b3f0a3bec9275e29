"""The metadata schema: every field group, and every way a document can be wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from image_repo.errors import BadRequest
from image_repo.schema import (
    Application,
    Boot,
    ContentRef,
    General,
    Hardware,
    Idb,
    ImageMetadata,
    OperatingSystem,
    Origin,
    Semantic,
    TsiSetup,
    content_digest,
    merge_patch,
    validate,
)

from .examples import builder_document, sha512, variant

DOCS = Path(__file__).resolve().parents[2] / "docs" / "image-metadata.md"


def error_of(doc) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        validate(doc)
    assert info.value.reason == "BAD_REQUEST"
    assert "\n" not in str(info.value)
    return info.value


def test_builder_document_validates_with_every_group():
    meta = validate(builder_document())
    assert meta.general.name == "gridvm-debian12-initramfs"
    assert meta.general.permissions.others == "r"
    assert meta.origin.content[0].role == "kernel"
    assert meta.origin.boot.initrd == "initrd.img"
    assert meta.origin.virtual_hardware.memory_mib == 256
    assert meta.semantic.os.version == "12"
    assert [p.name for p in meta.semantic.software][:2] == ["python3", "bash"]
    assert meta.idb.applications[0].executable == "/usr/bin/python3"
    assert meta.idb.applications[2].executable == "/bin/sh"
    assert meta.tsi.port == 4433 and meta.tsi.tls_required is True


def test_round_trip_keeps_the_document():
    doc = builder_document()
    assert validate(doc).to_dict() == {"schema_version": 1, **doc}


def test_the_builders_own_metadata_validates(tmp_path):
    """The contract with `gridvm image build`: its metadata.json registers as it is."""
    metadata = pytest.importorskip("image_builder.metadata")
    debian = pytest.importorskip("image_builder.debian")
    files = {}
    for role, name in (("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("disk", "disk.qcow2")):
        files[role] = tmp_path / name
        files[role].write_bytes(name.encode())
    packages = [debian.Package(n, v) for n, v in (
        ("python3.11-minimal", "3.11.2-6+deb12u2"), ("bash", "5.2.15-2+b7"),
        ("busybox-static", "1:1.35.0-4+b3"))]
    for kind, roles in (("initramfs", ("kernel", "initrd")), ("qcow2", ("kernel", "initrd",
                                                                        "disk"))):
        doc = metadata.builder_metadata(
            name=f"gridvm-debian12-{kind}", kind=kind,
            content=metadata.content_refs({r: files[r] for r in roles}),
            cmdline="console=ttyS0", packages=packages, kernel_version="6.1.0-18-cloud-amd64",
            memory_mib=256, min_memory_mib=128, disk_gib=0.5 if kind == "qcow2" else 0)
        meta = validate(doc)
        assert meta.idb.applications[0].version == "3.11.2"


def test_general_group_fields():
    doc = variant(builder_document(), **{
        "general.version": 3, "general.status": "deprecated", "general.owner": "alice",
        "general.group": "physics", "general.created": "2024-05-01T12:00:00Z",
        "general.updated": "2024-05-02T12:00:00+02:00", "general.communities": ["hep"],
        "general.counters": {"deployments": 4, "exports": 1},
        "general.ratings": [{"user": "bob", "score": 5, "comment": "fast"}],
        "general.base_image": "0123abcd",
    })
    general = validate(doc).general
    assert (general.version, general.status, general.owner) == (3, "deprecated", "alice")
    assert general.counters.deployments == 4 and general.ratings[0].score == 5


def test_origin_group_for_a_disk_image_and_a_container():
    disk = b"qcow2 bytes"
    doc = variant(builder_document(), **{
        "origin.content_type": "qcow2",
        "origin.content": [{"file": "disk.qcow2", "role": "disk", "sha512": sha512(disk),
                            "size": len(disk)}],
        "origin.boot": None,
        "origin.image_type": "implicit",
        "origin.virtual_hardware": {"vcpus": 2, "memory_mib": 1024, "disk_gib": 4},
        "origin.os_hash_algo": "sha512",
    })
    assert validate(doc).origin.virtual_hardware.disk_gib == 4
    container = variant(doc, **{"origin.content": [], "origin.content_type": "oci",
                                "origin.runtime_technology": "container",
                                "origin.source_url": "docker://debian:12"})
    assert validate(container).origin.source_url == "docker://debian:12"


def test_semantic_idb_and_tsi_groups_built_from_python():
    ref = ContentRef(file="disk.qcow2", role="disk", sha512="a" * 128, size=10)
    meta = ImageMetadata(
        general=General(name="analysis"),
        origin=Origin(content_type="qcow2", content=[ref], architecture="aarch64",
                      virtual_hardware=Hardware(vcpus=2)),
        semantic=Semantic(execution_type="service", user_interface="web",
                          os=OperatingSystem(distro="rocky", version="9.3"),
                          service_dependencies=["postgresql"], vos=["biomed"]),
        idb=Idb(applications=[Application(name="root", version="6.30",
                                          environment={"ROOTSYS": "/opt/root"})]),
        tsi=TsiSetup(port=4433, user="nobody", workdir_root="/scratch"),
    )
    again = validate(meta.to_dict())
    assert again == meta
    assert again.idb.applications[0].environment == {"ROOTSYS": "/opt/root"}


def test_content_ref_for_file(tmp_path):
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"x" * 3_000_000)
    ref = ContentRef.for_file(path, "kernel")
    assert (ref.file, ref.role, ref.size) == ("vmlinuz", "kernel", 3_000_000)
    assert ref.sha512 == sha512(b"x" * 3_000_000)


@pytest.mark.parametrize(("changes", "path", "words"), [
    ({"general.nmae": "x"}, "general.nmae", "did you mean 'name'"),
    ({"origin.hypervisor-type": "qemu"}, "origin.hypervisor-type",
     "did you mean 'hypervisor_type'"),
    ({"semantic.os.distr": "debian"}, "semantic.os.distr", "did you mean 'distro'"),
    ({"idb.applications": [{"name": "x", "exe": "/bin/x"}]}, "idb.applications[0].exe",
     "unknown key"),
    ({"tsi.tls": True}, "tsi.tls", "unknown key"),
    ({"extra": 1}, "extra", "unknown key"),
    ({"general.name": None}, "general.name", "required key is missing"),
    ({"origin.content_type": None}, "origin.content_type", "required key is missing"),
    ({"general": None}, "general", "required key is missing"),
    ({"general.name": 7}, "general.name", "expected a string"),
    ({"general.name": "a:b"}, "general.name", "expected a name"),
    ({"general.version": "2"}, "general.version", "expected an integer"),
    ({"general.version": True}, "general.version", "expected an integer"),
    ({"general.version": 0}, "general.version", "at least 1"),
    ({"general.status": "gone"}, "general.status", "expected one of"),
    ({"general.created": "yesterday"}, "general.created", "ISO 8601"),
    ({"general.created": "2024-05-01T12:00:00"}, "general.created", "zone"),
    ({"general.permissions": {"owner": "wr"}}, "general.permissions.owner", "'rw'"),
    ({"general.permissions": {"others": "x"}}, "general.permissions.others", "'rw'"),
    ({"general.communities": "hep"}, "general.communities", "expected a list"),
    ({"general.communities": ["hep", "hep"]}, "general.communities", "listed twice"),
    ({"general.ratings": [{"user": "b", "score": 6}]}, "general.ratings[0].score", "at most 5"),
    ({"general.counters": {"deployments": -1}}, "general.counters.deployments", "at least 0"),
    ({"general.owner": " "}, "general.owner", "must not be empty"),
    ({"origin.content_type": "vhd"}, "origin.content_type", "expected one of"),
    ({"origin.architecture": "x86-64"}, "origin.architecture", "expected one of"),
    ({"origin.hypervisor_type": "vbox"}, "origin.hypervisor_type", "expected one of"),
    ({"origin.runtime_technology": "jail"}, "origin.runtime_technology", "expected one of"),
    ({"origin.image_type": "explicit"}, "origin.image_type", "expected one of"),
    ({"origin.os_hash_algo": "md5"}, "origin.os_hash_algo", "expected one of"),
    ({"origin.os_hash_value": "ABC"}, "origin.os_hash_value", "sha512"),
    ({"origin.size": -1}, "origin.size", "at least 0"),
    ({"origin.content": {"file": "x"}}, "origin.content", "expected a list"),
    ({"origin.content": [{"file": "../vmlinuz", "role": "kernel", "sha512": "a" * 128,
                          "size": 1}]}, "origin.content[0].file", "plain file name"),
    ({"origin.content": [{"file": "k", "role": "bootloader", "sha512": "a" * 128,
                          "size": 1}]}, "origin.content[0].role", "expected one of"),
    ({"origin.content": [{"file": "k", "role": "kernel", "sha512": "a" * 128}]},
     "origin.content[0].size", "required key is missing"),
    ({"origin.content": [{"file": "k", "role": "kernel", "sha512": "a" * 128, "size": 1.5}]},
     "origin.content[0].size", "expected an integer"),
    ({"origin.virtual_hardware": {"vcpus": 0}}, "origin.virtual_hardware.vcpus", "at least 1"),
    ({"origin.virtual_hardware": {"memory_mib": "256M"}}, "origin.virtual_hardware.memory_mib",
     "expected an integer"),
    ({"origin.virtual_hardware": {"memory_mib": 64}}, "origin.virtual_hardware.memory_mib",
     "below minimal_hardware.memory_mib 128"),
    ({"origin.virtual_hardware": {"disk_gib": "1G"}}, "origin.virtual_hardware.disk_gib",
     "expected a number"),
    ({"origin.boot": {"kernel": "bzImage"}}, "origin.boot.kernel", "not one of the content"),
    ({"origin.boot": {"kernel": "initrd.img"}}, "origin.boot.kernel", "has role 'initrd'"),
    ({"origin.boot": {"command_line": "x"}}, "origin.boot.command_line",
     "did you mean 'cmdline'"),
    ({"origin.content": []}, "origin.content", "content files or a source_url"),
    ({"origin.content_type": "qcow2"}, "origin.content", "role 'disk'"),
    ({"semantic.execution_type": "batch"}, "semantic.execution_type", "expected one of"),
    ({"semantic.user_interaction": False}, "semantic.user_interaction", "expected one of"),
    ({"semantic.user_interface": "tui"}, "semantic.user_interface", "expected one of"),
    ({"semantic.os": {"distro": "Debian"}}, "semantic.os.distro", "lowercase"),
    ({"semantic.os": {"version": 12}}, "semantic.os.version", "expected a string"),
    ({"semantic.os": {"family": "unix"}}, "semantic.os.family", "expected one of"),
    ({"semantic.software": [{"version": "1"}]}, "semantic.software[0].name", "missing"),
    ({"semantic.vos": ["a", "a"]}, "semantic.vos", "listed twice"),
    ({"semantic.service_dependencies": [1]}, "semantic.service_dependencies[0]",
     "expected a string"),
    ({"idb.applications": [{"name": "p", "executable": "bin/p"}]},
     "idb.applications[0].executable", "absolute path"),
    ({"idb.applications": [{"name": "p", "arguments": "-v"}]}, "idb.applications[0].arguments",
     "expected a list"),
    ({"idb.applications": [{"name": "p", "environment": {"A": 1}}]},
     "idb.applications[0].environment.A", "expected a string"),
    ({"idb.applications": [{"name": "p", "version": "1"}, {"name": "P", "version": "1"}]},
     "idb.applications[1]", "listed twice"),
    ({"idb.resource_limits": {"cpus": 0}}, "idb.resource_limits.cpus", "at least 1"),
    ({"idb.resource_limits": {"walltime": 1}}, "idb.resource_limits.walltime", "unknown key"),
    ({"tsi.port": 70000}, "tsi.port", "at most 65535"),
    ({"tsi.port": "4433"}, "tsi.port", "expected an integer"),
    ({"tsi.tls_required": 1}, "tsi.tls_required", "true or false"),
    ({"tsi.user": "Root User"}, "tsi.user", "Unix user name"),
    ({"tsi.workdir_root": "/home/../etc"}, "tsi.workdir_root", "absolute path"),
    ({"tsi.protocol_version": "ten"}, "tsi.protocol_version", "version like 10.1"),
    ({"schema_version": 2}, "schema_version", "expected one of"),
])
def test_each_error_names_its_path(changes, path, words):
    err = error_of(variant(builder_document(), **changes))
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    assert words in err.message


def test_duplicate_content_file_is_an_error():
    doc = builder_document()
    doc["origin"]["content"].append(dict(doc["origin"]["content"][0]))
    err = error_of(doc)
    assert err.path == "origin.content[2]" and "listed twice" in err.message


@pytest.mark.parametrize("doc", [[], "text", 3, None])
def test_a_document_must_be_an_object(doc):
    assert "expected an object" in error_of(doc).message


def test_content_digest_depends_on_every_file():
    refs = validate(builder_document()).origin.content
    other = validate(builder_document(initrd=b"other")).origin.content
    assert re.fullmatch(r"[0-9a-f]{128}", content_digest(refs))
    assert content_digest(refs) != content_digest(other)


def test_merge_patch():
    doc = {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    assert merge_patch(doc, {"a": {"b": None, "e": 3}, "d": [3]}) == {"a": {"c": 2, "e": 3},
                                                                      "d": [3]}
    assert doc == {"a": {"b": 1, "c": 2}, "d": [1, 2]}


def test_docs_examples_validate():
    """Every complete JSON example in docs/image-metadata.md is a valid document."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    documents = [json.loads(b) for b in blocks]
    full = [d for d in documents if "general" in d and "origin" in d]
    assert full, "docs/image-metadata.md lost its complete example"
    for doc in full:
        validate(doc)


def test_boot_without_kernel_is_allowed_for_disk_images():
    meta = validate(variant(builder_document(), **{"origin.boot": {"cmdline": "quiet"}}))
    assert meta.origin.boot == Boot(cmdline="quiet")


# --- standard cloud images: boot mode and contextualization ----------------------------------

def cloud_document() -> dict:
    """A qcow2 disk with its own bootloader, contextualized by cloud-init."""
    disk = b"disk-bytes"
    doc = variant(builder_document(), **{
        "general.name": "debian12-cloud",
        "origin.content_type": "qcow2",
        "origin.content": [{"role": "disk", "file": "disk.qcow2", "sha512": sha512(disk),
                            "size": len(disk)}],
        "origin.boot": {"mode": "bootloader"},
        "tsi.contextualization": "cloud-init",
        "tsi.boot_timeout_s": 300,
    })
    doc["semantic"]["software"].append({"name": "cloud-init", "version": "22.4.2"})
    return doc


def test_a_cloud_image_boots_with_its_bootloader_and_takes_cloud_init():
    meta = validate(cloud_document())
    assert meta.origin.boot_mode == "bootloader"
    assert meta.tsi.contextualization == "cloud-init"
    assert meta.tsi.boot_timeout_s == 300


def test_boot_mode_is_implied_by_a_kernel_file():
    assert validate(builder_document()).origin.boot_mode == "kernel"
    doc = cloud_document()
    del doc["origin"]["boot"]
    assert validate(doc).origin.boot_mode == "bootloader"


@pytest.mark.parametrize(("changes", "path", "words"), [
    ({"origin.boot.mode": "pxe"}, "origin.boot.mode", "'kernel'"),
    ({"origin.boot.mode": "kernel"}, "origin.boot.mode", "role 'kernel'"),
    ({"origin.boot.kernel": "disk.qcow2"}, "origin.boot.mode", "leave out boot.kernel"),
    ({"origin.content_type": "raw"}, None, None),
    ({"tsi.contextualization": "ignition"}, "tsi.contextualization", "'cloud-init'"),
    ({"tsi.boot_timeout_s": 0}, "tsi.boot_timeout_s", "at least 1"),
])
def test_boot_mode_and_contextualization_errors_name_the_key(changes, path, words):
    doc = variant(cloud_document(), **changes)
    if path is None:  # a raw disk boots with its bootloader as well
        assert validate(doc).origin.boot_mode == "bootloader"
        return
    err = error_of(doc)
    assert err.path == path, str(err)
    assert words in str(err)


def test_a_bootloader_needs_a_disk_image():
    doc = variant(builder_document(), **{"origin.boot": {"mode": "bootloader"}})
    err = error_of(doc)
    assert err.path == "origin.boot.mode"
    assert "qcow2 or raw disk" in str(err)


@pytest.mark.parametrize("missing", ["python3", "cloud-init"])
def test_cloud_init_contextualization_needs_python3_and_cloud_init_stated(missing):
    doc = cloud_document()
    doc["semantic"]["software"] = [p for p in doc["semantic"]["software"]
                                   if p["name"] != missing]
    doc["idb"]["applications"] = [a for a in doc["idb"]["applications"]
                                  if a["name"] != missing]
    err = error_of(doc)
    assert err.path == "tsi.contextualization"
    assert repr(missing) in str(err)
