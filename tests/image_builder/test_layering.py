"""Layer recipes: the ``base`` key, bad base inputs refused before anything is written, and
a real layer on gridvm's qcow2 image read back with debugfs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image_builder import BuildError, build_recipe
from image_builder.layering import LAYER_FILE
from image_builder.recipe import load_recipe, parse_recipe
from tests.conftest import TEST_ROOT

LAYER_RECIPE = Path(__file__).parents[1] / "e2e" / "recipes" / "jq-layer.toml"
HEAD = 'name = "vo"\nversion = "1.0"\n'


def cli_build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridvm", "catalogue", "build", *args],
                          capture_output=True, text=True, timeout=900)


def test_the_base_key_reads_and_goes_into_the_cache_key(tmp_path):
    recipe = parse_recipe(HEAD + 'kind = "qcow2"\nbase = "gridvm-debian12-qcow2:3"\n', tmp_path)
    assert recipe.base == "gridvm-debian12-qcow2:3"
    assert recipe.content_inputs()["base"] == "gridvm-debian12-qcow2:3"
    assert parse_recipe(HEAD + 'kind = "qcow2"\n', tmp_path).base is None


@pytest.mark.parametrize(("text", "message"), [
    ('kind = "initramfs"\nbase = "b:1"\n', "r.toml: base: a layer on a base image is of kind "
     "qcow2, not initramfs"),
    ('kind = "cloud"\nbase = "b:1"\n', "base: a layer on a base image is of kind qcow2"),
    ('kind = "qcow2"\nbase = "b"\n', "base: expected a registered image as NAME:VERSION"),
    ('kind = "qcow2"\nbase = "b/c:1"\n', "base: expected a registered image as NAME:VERSION"),
])
def test_a_bad_base_key_is_refused_naming_it(tmp_path, text, message):
    with pytest.raises(BuildError) as err:
        parse_recipe(HEAD + text, tmp_path, label="r.toml")
    assert err.value.bad_input and message in str(err.value)


@pytest.fixture
def not_ext4(tmp_path) -> Path:
    disk = tmp_path / "base" / "disk.qcow2"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    return disk


@pytest.mark.parametrize(("case", "message"), [
    ("no disk", "base: jq-layer is a layer on gridvm-debian12-qcow2:1: give a copy of that "
     "image's disk with --base-disk PATH"),
    ("text file", "--base-disk: {disk} is not a qcow2 file"),
    ("missing", "--base-disk: {disk}: no such file"),
    ("not ext4", "--base-disk: {disk} holds no ext4 file system"),
    ("no base key", "--base-disk: recipe jq-tools has no base key"),
])
def test_bad_base_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, not_ext4, case,
                                                                message):
    recipe, disk = LAYER_RECIPE, tmp_path / "disk.qcow2"
    if case == "text file":
        disk.write_text("not a disk\n")
    elif case == "not ext4":
        disk = not_ext4
    elif case == "no base key":
        recipe, disk = LAYER_RECIPE.with_name("jq-tools.toml"), not_ext4
    output = tmp_path / "out"
    args = ["--recipe", str(recipe), "--output", str(output)]
    result = cli_build(*args, *(() if case == "no disk" else ("--base-disk", str(disk))))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"gridvm: BAD_REQUEST: {message.format(disk=disk)}", result.stderr
    assert not output.exists() or list(output.iterdir()) in ([], [output / "debs"])


def test_a_base_disk_is_checked_against_its_metadata(built_images, tmp_path):
    base = built_images["qcow2"]
    copy = tmp_path / "base"
    shutil.copytree(base.directory, copy)
    (copy / "metadata.json").rename(copy / "elsewhere.json")
    with pytest.raises(BuildError, match=r"no metadata\.json beside"):
        build_recipe(load_recipe(LAYER_RECIPE), output_root=tmp_path / "out",
                     base_disk=copy / "disk.qcow2")
    doc = json.loads((copy / "elsewhere.json").read_text())
    doc["general"]["name"] = "another-base"
    (copy / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(BuildError, match=r"base: the base disk is of image 'another-base', "
                       r"not 'gridvm-debian12-qcow2'"):
        build_recipe(load_recipe(LAYER_RECIPE), output_root=tmp_path / "out",
                     base_disk=copy / "disk.qcow2")
    assert not (tmp_path / "out").exists()


def debugfs(raw: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(raw)], capture_output=True,
                          text=True, check=True).stdout


def flattened(layer: Path, base_disk: Path, tmp_path: Path) -> Path:
    """The layer read through its base, as one raw file system."""
    chained = tmp_path / "chained.qcow2"
    shutil.copy(layer, chained)
    subprocess.run(["qemu-img", "rebase", "-u", "-b", str(base_disk), "-F", "qcow2",
                    str(chained)], check=True)
    raw = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(chained), str(raw)],
                   check=True)
    return raw


def test_a_layer_is_small_and_holds_the_recipe_with_owners_and_modes(built_images, tmp_path):
    base = built_images["qcow2"]
    base_disk = base.directory / "disk.qcow2"
    result = cli_build("--recipe", str(LAYER_RECIPE), "--base-disk", str(base_disk),
                       "--output", str(TEST_ROOT / "images"), "--json")
    assert result.returncode == 0, result.stderr
    assert "[build] resolving packages" in result.stderr
    summary = json.loads(result.stdout)
    layer = Path(summary["directory"]) / LAYER_FILE
    assert summary["files"] == [str(layer)]
    # only the changed clusters: jq and its libraries, a script, the accounts
    assert layer.stat().st_size < base_disk.stat().st_size / 8
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(layer)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == "disk.qcow2"

    raw = flattened(layer, base_disk, tmp_path)
    subprocess.run(["e2fsck", "-f", "-n", str(raw)], check=True, capture_output=True)
    listing = debugfs(raw, "ls -p /opt/jq-layer/bin")
    assert "/100750/1001/1000/summarize/" in listing  # mode 0750, curator:gridvm
    assert debugfs(raw, "cat /opt/jq-layer/bin/summarize") == (
        LAYER_RECIPE.parent / "summarize.sh").read_text()
    assert "/100755/0/0/jq/" in debugfs(raw, "ls -p /usr/bin")
    assert "curator:x:1001:1001::/home/curator:/bin/sh" in debugfs(raw, "cat /etc/passwd")
    assert "gridvm:x:1000:curator" in debugfs(raw, "cat /etc/group")
    assert "/040755/1001/1001/curator/" in debugfs(raw, "ls -p /home")

    meta = json.loads((layer.parent / "metadata.json").read_text())
    assert meta["origin"]["backing_image"] == "gridvm-debian12-qcow2:1"
    refs = {ref["role"]: ref for ref in meta["origin"]["content"]}
    base_refs = {ref["role"]: ref for ref in base.metadata["origin"]["content"]}
    assert refs["kernel"] == base_refs["kernel"] and refs["initrd"] == base_refs["initrd"]
    assert refs["disk"]["file"] == LAYER_FILE and refs["disk"]["size"] == layer.stat().st_size
    assert {"name": "jq", "version": "1.6"} in meta["semantic"]["software"]
    assert [a["name"] for a in meta["idb"]["applications"]][-2:] == ["jq", "summarize"]

    again = cli_build("--recipe", str(LAYER_RECIPE), "--base-disk", str(base_disk),
                      "--output", str(TEST_ROOT / "images"), "--json")
    assert json.loads(again.stdout)["cached"] and json.loads(again.stdout)["key"] == (
        summary["key"])


def test_files_replace_the_base_and_package_files_and_no_build_json_means_guest_packages(
        built_images, tmp_path):
    base = built_images["qcow2"]
    copy = tmp_path / "base"
    shutil.copytree(base.directory, copy)
    (copy / "build.json").unlink()  # a base not built by gridvm: closure against the guest's
    (tmp_path / "hostname").write_text("vo-node\n")
    (tmp_path / "jq").write_text("#!/bin/sh\necho not jq\n")
    (tmp_path / "r.toml").write_text(
        HEAD + 'kind = "qcow2"\nbase = "gridvm-debian12-qcow2:1"\npackages = ["jq"]\n'
        '[[files]]\nsource = "hostname"\npath = "/etc/hostname"\n'
        '[[files]]\nsource = "jq"\npath = "/usr/bin/jq"\nmode = 0o700\nowner = "gridvm"\n')
    built = build_recipe(load_recipe(tmp_path / "r.toml"), output_root=tmp_path / "out",
                         base_disk=copy / "disk.qcow2")
    raw = flattened(built.files[0], copy / "disk.qcow2", tmp_path)
    subprocess.run(["e2fsck", "-f", "-n", str(raw)], check=True, capture_output=True)
    assert debugfs(raw, "cat /etc/hostname") == "vo-node\n"
    assert debugfs(raw, "cat /usr/bin/jq") == "#!/bin/sh\necho not jq\n"
    assert "/100700/1000/1000/jq/" in debugfs(raw, "ls -p /usr/bin")
    assert "libjq.so.1" in debugfs(raw, "ls /usr/lib/x86_64-linux-gnu")
