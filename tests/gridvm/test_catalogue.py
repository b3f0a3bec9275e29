"""``gridvm catalogue register|list|show|match|new-version|deprecate|delete``, as users run
them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_builder_output_registers_as_it_is(catalogue, build_dir):
    result = catalogue("register", "metadata.json", "vmlinuz", "initrd.img", cwd=build_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("registered gridvm-debian12-initramfs:1 (id ")
    again = catalogue("register", str(build_dir / "metadata.json"))  # files found next to it
    assert again.returncode == 0 and "initramfs:2" in again.stdout
    listing = catalogue("list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0].split()[:3] == ["IMAGE", "STATUS", "OWNER"]
    assert "gridvm-debian12-initramfs:2  active" in listing.stdout
    records = json.loads(catalogue("list", "--json").stdout)
    assert [r["general"]["version"] for r in records] == [1, 2]


def test_show_match_new_version_deprecate_delete(catalogue, build_dir, tmp_path):
    catalogue("register", "metadata.json", cwd=build_dir)
    shown = json.loads(catalogue("show", "gridvm-debian12-initramfs").stdout)
    assert shown["tsi"]["port"] == 4433 and shown["general"]["status"] == "active"

    fits = write_json(tmp_path / "req.json", {"os": {"distro": "debian", "version": ">=12"},
                                              "applications": [{"name": "python3"}]})
    result = catalogue("match", str(fits))
    assert result.returncode == 0
    assert "1. gridvm-debian12-initramfs:1" in result.stdout
    as_json = json.loads(catalogue("match", str(fits), "--json").stdout)
    assert as_json["candidates"][0]["ref"] == "gridvm-debian12-initramfs:1"

    patch = write_json(tmp_path / "patch.json", {"general": {"title": "second"}})
    second = catalogue("new-version", "gridvm-debian12-initramfs", str(patch))
    assert second.returncode == 0 and "initramfs:2" in second.stdout
    lineage = json.loads(catalogue("show", "gridvm-debian12-initramfs:2", "--lineage").stdout)
    assert [x["ref"] for x in lineage["lineage"]] == ["gridvm-debian12-initramfs:2",
                                                      "gridvm-debian12-initramfs:1"]
    assert catalogue("deprecate", "gridvm-debian12-initramfs:1").stdout.strip() == (
        "gridvm-debian12-initramfs:1 is now deprecated")
    assert catalogue("delete", "gridvm-debian12-initramfs:1").returncode == 0
    again = catalogue("delete", "gridvm-debian12-initramfs:1")
    assert again.returncode == 2 and "already deleted" in again.stderr
    assert "deleted" in catalogue("list", "--all").stdout


def test_no_match_exits_3_and_says_why(catalogue, build_dir, tmp_path):
    catalogue("register", "metadata.json", cwd=build_dir)
    too_new = write_json(tmp_path / "req.json", {"os": {"version": ">=13"}})
    result = catalogue("match", str(too_new))
    assert result.returncode == 3
    assert "gridvm-debian12-initramfs:1: os.version 12 < required 13" in result.stdout
    assert result.stderr.startswith("gridvm: NO_MATCHING_IMAGE: no image matches")
    data = json.loads(catalogue("match", str(too_new), "--json").stdout)
    assert data["rejected"][0]["reasons"][0]["code"] == "OS_VERSION"


@pytest.mark.parametrize(("content", "words"), [
    ('{"general": {"nmae": "x"}, "origin": {}}', "BAD_REQUEST: general.nmae: unknown key"),
    ("{not json", "BAD_REQUEST: bad.json: not valid JSON: line 1"),
])
def test_bad_metadata_exits_2(catalogue, tmp_path, content, words):
    (tmp_path / "bad.json").write_text(content)
    result = catalogue("register", "bad.json")
    assert result.returncode == 2
    assert words in result.stderr


def test_tampered_file_exits_2_and_registers_nothing(catalogue, build_dir):
    (build_dir / "initrd.img").write_bytes(b"tampered")
    result = catalogue("register", "metadata.json", "vmlinuz", "initrd.img", cwd=build_dir)
    assert result.returncode == 2
    assert "IMAGE_CHECKSUM_MISMATCH: origin.content[1]: initrd.img has sha512" in result.stderr
    assert json.loads(catalogue("list", "--json", "--all").stdout) == []


def test_missing_things(catalogue, tmp_path):
    assert catalogue("show", "nope").returncode == 3
    assert catalogue("register", str(tmp_path / "absent.json")).returncode == 2
    bad_req = write_json(tmp_path / "req.json", {"os": {"version": "=>12"}})
    result = catalogue("match", str(bad_req))
    assert result.returncode == 2 and "requirements.os.version" in result.stderr


def test_unreachable_catalogue_is_one_line(catalogue):
    result = catalogue("list", "--db", "postgresql+psycopg://x:y@127.0.0.1:1/none")
    assert result.returncode == 1
    assert result.stderr.startswith("gridvm: cannot open the catalogue")


def test_export_writes_a_bundle_the_bundle_module_reads(catalogue, build_dir, tmp_path):
    import tarfile

    catalogue("register", "metadata.json", cwd=build_dir)
    result = catalogue("export", "gridvm-debian12-initramfs", "-o", str(tmp_path / "b.tar"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gridvm-debian12-initramfs: ")
    with tarfile.open(tmp_path / "b.tar") as archive:
        assert "gridvm-bundle.json" in archive.getnames()
    missing = catalogue("export", "no-such-image", "-o", str(tmp_path / "c.tar"))
    assert missing.returncode == 3 and not (tmp_path / "c.tar").exists()
