"""Recipes: strict parsing, bounds, confined file sources, the dependency closure from the
Debian archive, and what a recipe puts into a guest root."""

import io
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from image_builder import BuildError, build_recipe, customize, debian, recipe
from image_builder.cloud import CLOUD_PACKAGES, cloud_key
from image_builder.metadata import preview
from image_builder.progress import Step
from image_builder.recipe import default_recipe, load_recipe, parse_recipe

JQ_RECIPE = Path(__file__).parents[1] / "e2e" / "recipes" / "jq-tools.toml"
HEAD = 'name = "tools"\nversion = "1.0"\nkind = "initramfs"\n'


def refused(text: str, directory: Path) -> str:
    with pytest.raises(BuildError) as err:
        parse_recipe(text, directory, label="r.toml")
    assert err.value.bad_input
    return str(err.value)


def test_the_example_recipe_reads_into_typed_values():
    read = load_recipe(JQ_RECIPE)
    assert (read.name, read.version, read.kind, read.suite) == (
        "jq-tools", "1.0", "initramfs", "bookworm")
    assert read.packages == ["jq"]
    assert read.files[0].mode == 0o750 and read.files[0].group == "gridvm"
    assert read.users[0].home_directory == "/home/curator"
    assert read.applications[0].idb_entry("1.6") == {
        "name": "jq", "version": "1.6", "executable": "/usr/bin/jq",
        "arguments": ["--monochrome-output"], "description": "command-line JSON processor"}
    assert read.source(read.files[0]) == JQ_RECIPE.parent / "summarize.sh"
    doc = preview(read)
    assert doc["general"]["name"] == "jq-tools" and doc["semantic"]["vos"] == ["demo"]
    assert [a["name"] for a in doc["idb"]["applications"]][-2:] == ["jq", "summarize"]


@pytest.mark.parametrize(("text", "message"), [
    ('colour = "red"\n', "r.toml: colour: unknown key; allowed here: name, version, kind"),
    ('[[files]]\nsource = "a"\npath = "/a"\nmodes = 0o644\n',
     "files[0].modes: unknown key (did you mean 'mode'?)"),
    ('[[users]]\nname = "ann"\nuid = 1001\nhome_dir = "/h"\n', "users[0].home_dir: unknown key"),
    ('[[applications]]\nname = "x"\nargs = []\n', "applications[0].args: unknown key"),
    ('[metadata.general]\ntitel = "x"\n',
     "metadata.general.titel: unknown key (did you mean 'title'?)"),
    ('[metadata.tsi]\nprot = 1\n', "metadata.tsi.prot: unknown key"),
    ('bases = "debian12:1"\n', "bases: unknown key (did you mean 'base'?)"),
    ('directory = "/"\n', "directory: unknown key"),
])
def test_unknown_keys_are_errors_naming_their_dotted_path(tmp_path, text, message):
    (tmp_path / "a").write_text("a")
    assert message in refused(HEAD + text, tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ('packages = "jq"\n', "packages: expected a list, got a string ('jq')"),
    ('packages = ["JQ"]\n', "packages: 'JQ' is not a Debian package name"),
    ('packages = ["jq", "jq"]\n', "packages: a package is listed twice"),
    ('[[files]]\nsource = "a"\npath = "/a"\nmode = "0755"\n',
     "files[0].mode: expected an integer, got a string ('0755')"),
    ('[[files]]\nsource = "a"\npath = "/a"\nmode = 0o17777\n', "files[0].mode: must be at most"),
    ('[[files]]\nsource = "a"\npath = "/a"\nowner = "mallory"\n',
     "files[0].owner: unknown owner 'mallory'"),
    ('[[users]]\nname = "ann"\nuid = 0\n', "users[0].uid: must be at least 1001"),
    ('[[users]]\nname = "gridvm"\nuid = 1001\n', "users[0].name: user 'gridvm' exists already"),
    ('[[users]]\nname = "ann"\nuid = 1001\n[[users]]\nname = "bob"\nuid = 1001\n',
     "users[1].uid: uid 1001 is taken"),
    ('[[users]]\nname = "ann"\nuid = 1001\ngroups = ["wheel"]\n',
     "users[0].groups: no group 'wheel'"),
    ('[[applications]]\nname = "jq"\npackage = "jq"\n',
     "applications[0].package: 'jq' is not among the recipe's packages"),
    ('[[applications]]\nname = "jq"\noptions = [1]\n',
     "applications[0].options[0]: expected a string"),
    ('[metadata.origin]\ncontent = []\n', "metadata.origin.content: computed by the build"),
    ('[metadata.general]\nname = "other"\n', "metadata.general.name: computed by the build"),
    ('[metadata.origin.virtual_hardware]\nmemory_mib = 64\n',
     "metadata.origin.virtual_hardware.memory_mib: 64 is below minimal_hardware.memory_mib"),
    ("metadata = 3\n", "metadata: expected a table"),
    ('kind = "floppy"\n', "kind: expected one of 'initramfs', 'qcow2', 'erofs', 'cloud'"),
    ('suite = "sid"\n', "suite: expected one of 'bookworm'"),
    ("name = \n", "r.toml: not valid TOML: "),
])
def test_bad_values_are_errors_naming_their_key(tmp_path, text, message):
    (tmp_path / "a").write_text("a")
    head = HEAD if not text.startswith(("kind", "name")) else HEAD.replace('kind = "initramfs"\n',
                                                                           "")
    assert message in refused(head + text, tmp_path)


def test_a_cloud_recipe_has_no_gridvm_user_at_build_time(tmp_path):
    text = ('name = "c"\nversion = "1"\nkind = "cloud"\n'
            '[[users]]\nname = "ann"\nuid = 1001\ngroups = ["gridvm"]\n')
    assert "users[0].groups: no group 'gridvm'" in refused(text, tmp_path)


@pytest.mark.parametrize(("source", "path", "message"), [
    ("../outside", "/x", "files[0].source: must stay inside the recipe's directory"),
    ("/etc/passwd", "/x", "files[0].source: expected a path relative to the recipe's directory"),
    ("escape", "/x", "files[0].source: escape leads outside the recipe's directory"),
    ("missing", "/x", "files[0].source: missing: no such file"),
    ("sub", "/x", "files[0].source: sub: no such file"),
    ("a", "x", "files[0].path: expected a normalised absolute guest path"),
    ("a", "/opt/../etc/x", "files[0].path: expected a normalised absolute guest path"),
    ("a", "/proc/x", "files[0].path: /proc/x is hidden by what the guest mounts at boot"),
])
def test_file_sources_stay_in_the_recipe_directory_and_paths_are_guest_paths(
        tmp_path, source, path, message):
    (tmp_path / "a").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "escape").symlink_to("/etc/passwd")
    text = HEAD + f'[[files]]\nsource = "{source}"\npath = "{path}"\n'
    assert message in refused(text, tmp_path)


def test_sizes_and_counts_are_bounded(tmp_path, monkeypatch):
    many = ", ".join(f'"p{i}"' for i in range(recipe.MAX_PACKAGES + 1))
    assert f"packages: at most {recipe.MAX_PACKAGES} packages" in refused(
        HEAD + f"packages = [{many}]\n", tmp_path)
    users = "".join(f'[[users]]\nname = "u{i}"\nuid = {1001 + i}\n'
                    for i in range(recipe.MAX_USERS + 1))
    assert f"users: at most {recipe.MAX_USERS} users" in refused(HEAD + users, tmp_path)
    (tmp_path / "big").write_bytes(b"x" * 2048)
    monkeypatch.setattr(recipe, "MAX_FILE_BYTES", 1024)
    assert "files[0].source: big has 2048 bytes, at most 1024" in refused(
        HEAD + '[[files]]\nsource = "big"\npath = "/big"\n', tmp_path)
    huge = tmp_path / "huge.toml"
    huge.write_text(HEAD + "#" * recipe.MAX_RECIPE_BYTES)
    with pytest.raises(BuildError, match="a recipe is at most 1048576 bytes"):
        load_recipe(huge)
    with pytest.raises(BuildError, match="No such file"):
        load_recipe(tmp_path / "none.toml")


def test_gridvm_own_images_are_recipes_and_the_cloud_cache_key_is_unchanged():
    for kind in ("initramfs", "qcow2", "cloud"):
        own = default_recipe(kind)
        assert own.kind == kind and not own.packages
        assert preview(own)["general"]["title"].startswith("Debian 12")
    assert cloud_key(CLOUD_PACKAGES, default_recipe("cloud")) == cloud_key(CLOUD_PACKAGES)


def test_the_closure_of_extra_packages_comes_from_the_archive_minus_the_base():
    base = debian.resolve(["libc6", "libgcc-s1"])
    names = [p.name for p in debian.closure(["jq"], base)]
    assert {"jq", "libjq1", "libonig5"} <= set(names) and "libc6" not in names
    with_onig = base + debian.resolve(["libonig5"])
    assert "libonig5" not in [p.name for p in debian.closure(["jq"], with_onig)]
    assert debian.closure([], base) == []
    with pytest.raises(BuildError) as err:
        debian.closure(["jq", "no-such-package-anywhere"], base)
    assert err.value.bad_input and "no-such-package-anywhere" in str(err.value)


def test_users_files_and_owners_go_into_a_micro_guest_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc/gridvm").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "gridvm:x:1000:1000:gridvm jobs:/home/gridvm:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ngridvm:x:1000:\n")
    (root / "opt/jq-tools/bin").mkdir(parents=True)
    (root / "opt/jq-tools/bin/summarize").symlink_to("/etc/shadow")  # replaced, not followed
    customize.micro_guest(root, load_recipe(JQ_RECIPE))
    assert "curator:x:1001:1001::/home/curator:/bin/sh" in (root / "etc/passwd").read_text()
    assert (root / "etc/group").read_text().splitlines()[1:] == ["gridvm:x:1000:curator",
                                                                 "curator:x:1001:"]
    placed = root / "opt/jq-tools/bin/summarize"
    assert not placed.is_symlink() and placed.stat().st_mode & 0o7777 == 0o750
    assert placed.read_text() == (JQ_RECIPE.parent / "summarize.sh").read_text()
    assert (root / customize.OWNERS_FILE).read_text().splitlines() == [
        "1001:1001 0755 /home/curator", "1001:1000 0750 /opt/jq-tools/bin/summarize"]


def test_cli_reports_a_bad_recipe_in_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(HEAD + '[[files]]\nsource = "a"\npath = "/a"\nmods = 1\n')
    result = subprocess.run([sys.executable, "-m", "gridvm", "catalogue", "build", "--recipe",
                             str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "files[0].mods: unknown key (did you mean 'mode'?)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    both = subprocess.run([sys.executable, "-m", "gridvm", "catalogue", "build", "--recipe",
                           str(bad), "--kind", "qcow2"], capture_output=True, text=True,
                          timeout=120)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_progress_prints_each_phase_and_the_last_count_off_a_terminal():
    from gridvm.catalogue import ProgressReport

    out = io.StringIO()
    report = ProgressReport(out)
    for step in [Step("resolving", what="packages"), Step("downloading", 14, 17, "packages"),
                 Step("downloading", 15, 17, "packages"), Step("downloading", 17, 17, "packages"),
                 Step("packing", what="initramfs")]:
        report(step)
    assert out.getvalue().splitlines() == [
        "[build] resolving packages", "[build] downloading 14/17 packages",
        "[build] downloading 17/17 packages", "[build] packing initramfs"]


def test_what_goes_into_the_files_is_the_cache_key_not_the_metadata(tmp_path):
    (tmp_path / "a").write_text("one")
    text = HEAD + '[[files]]\nsource = "a"\npath = "/a"\n'
    first = parse_recipe(text, tmp_path).content_inputs()
    retitled = parse_recipe(text.replace('"1.0"', '"1.1"') + '[metadata.general]\ntitle = "t"\n'
                            '[[applications]]\nname = "a"\n', tmp_path).content_inputs()
    assert json.dumps(first) == json.dumps(retitled)
    (tmp_path / "a").write_text("two")
    assert parse_recipe(text, tmp_path).content_inputs()["sources"] != first["sources"]
    moved = parse_recipe(text.replace('path = "/a"', 'path = "/b"'), tmp_path).content_inputs()
    assert moved["files"] != first["files"]


def test_a_cached_image_gets_the_metadata_of_the_recipe_as_it_is_now(built_images, tmp_path):
    image = built_images["initramfs"]
    shutil.copytree(image.directory, tmp_path / image.directory.name)
    own = resources.files("image_builder.recipes").joinpath("debian12-initramfs.toml")
    text = own.read_text().replace('version = "1"', 'version = "2"') + (
        '[[applications]]\nname = "awk"\nexecutable = "/usr/bin/awk"\n')
    again = build_recipe(parse_recipe(text, tmp_path), output_root=tmp_path)
    assert again.cached and again.key == image.key
    assert again.directory == tmp_path / image.directory.name
    assert again.metadata["idb"]["applications"][-1]["name"] == "awk"
    assert again.metadata["origin"]["content"] == image.metadata["origin"]["content"]
    assert "awk" not in json.dumps(image.metadata["idb"])  # the shared image is untouched
