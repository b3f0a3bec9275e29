"""`gridvm image register|new-version|app|deprecate|delete` against a real in-process site
(no VM boots): hashes computed by the CLI, files sent with progress, dry runs with a diff,
idempotent re-runs, one-line errors."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import threads

from client.errors import EXIT_AUTH, EXIT_USAGE
from tests.client.conftest import Cli, cli_env, one_line_error, run_on_terminal
from tests.image_repo.examples import builder_document
from tests.tsf.rest import conftest as rest_conftest

creators_site = rest_conftest.creators_site  # the module's site


def _prepare(tmp_path, name: str, kernel: bytes = b"K" * 3000,
             initrd: bytes = b"I" * 600_000):
    """A metadata document without sha512 or size (the CLI fills them in) and its files."""
    doc = builder_document(kernel, initrd, name=name)
    for ref in doc["origin"]["content"]:
        del ref["sha512"], ref["size"]
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(doc))
    (tmp_path / "vmlinuz").write_bytes(kernel)
    (tmp_path / "initrd.img").write_bytes(initrd)
    return str(meta), str(tmp_path / "vmlinuz"), str(tmp_path / "initrd.img")


async def _registered(creators_site, tmp_path, name: str) -> Cli:
    """A CLI against the site, once carol registered ``name`` with it."""
    cli = Cli(creators_site[0].https_base)
    meta, kernel, initrd = _prepare(tmp_path, name)
    assert (await cli("image", "register", meta, kernel, initrd,
                      user="carol")).returncode == 0
    return cli


@pytest_twisted.ensureDeferred
async def test_register_hashes_sends_the_files_and_is_idempotent(creators_site, tmp_path):
    site, _http = creators_site
    cli = Cli(site.https_base)
    meta, kernel, initrd = _prepare(tmp_path, "cli-image")
    preview = await cli("image", "register", meta, kernel, initrd, "--dry-run", user="carol")
    assert preview.returncode == 0, preview.stderr
    shown = json.loads(preview.stdout)
    assert shown["origin"]["content"][1]["size"] == 600_000
    assert "initrd.img: 600000 bytes, to upload" in preview.stderr
    assert "nothing was changed" in preview.stderr
    result = await cli("image", "register", meta, kernel, initrd, user="carol")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("registered cli-image:1 (")
    doc = json.loads((tmp_path / "metadata.json").read_text())
    doc["general"]["title"] = "retitled"
    (tmp_path / "metadata.json").write_text(json.dumps(doc))
    follows = await cli("image", "register", meta, kernel, initrd, "--dry-run", user="carol")
    assert follows.returncode == 0, follows.stderr
    assert follows.stdout.startswith("--- cli-image:1") and '+    "title": "retitled"' in (
        follows.stdout)
    doc["general"]["title"] = shown["general"]["title"]
    (tmp_path / "metadata.json").write_text(json.dumps(doc))
    assert "upload initrd.img: 100%" in result.stderr and "verified" in result.stderr
    again = await cli("image", "register", meta, kernel, initrd, user="carol")
    assert again.returncode == 0 and again.stdout.startswith("already registered cli-image:1")


@pytest_twisted.ensureDeferred
async def test_new_version_dry_run_diff_then_a_replaced_file(creators_site, tmp_path):
    cli = await _registered(creators_site, tmp_path, "cli-lineage")
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"general": {"title": "the second"}}))
    diff = await cli("image", "new-version", "cli-lineage", str(patch), "--dry-run",
                     user="carol")
    assert diff.returncode == 0, diff.stderr
    assert '+    "title": "the second"' in diff.stdout
    assert '-    "title": "Debian 12 micro guest' in diff.stdout
    assert diff.stdout.startswith("--- cli-lineage:1")
    (tmp_path / "new").mkdir()
    replaced = tmp_path / "new" / "initrd.img"
    replaced.write_bytes(b"J" * 5000)
    result = await cli("image", "new-version", "cli-lineage", str(patch), "--file",
                       str(replaced), user="carol")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("registered cli-lineage:2")
    assert "upload initrd.img: 100%" in result.stderr and "vmlinuz" not in result.stderr

    added = await cli("image", "app", "add", "cli-lineage", "R", "4.3", "--executable",
                      "/usr/bin/R", "--json", user="carol")
    assert added.returncode == 0, added.stderr
    apps = [a["name"] for a in json.loads(added.stdout)["metadata"]["idb"]["applications"]]
    assert apps == ["python3", "bash", "sh", "R"]
    removed = await cli("image", "app", "remove", "cli-lineage", "sh", user="carol")
    assert removed.returncode == 0 and removed.stdout.startswith("sh removed: cli-lineage:4")
    deprecated = await cli("image", "deprecate", "cli-lineage:1", user="carol")
    assert deprecated.stdout.strip().endswith(": deprecated"), deprecated.stderr
    deleted = await cli("image", "delete", "cli-lineage:1", user="carol")
    assert deleted.returncode == 0 and deleted.stdout.strip().endswith(": deleted")


@pytest_twisted.ensureDeferred
async def test_errors_are_one_line_with_the_documented_exit_codes(creators_site, tmp_path):
    site, _http = creators_site
    cli = Cli(site.https_base)
    meta, kernel, initrd = _prepare(tmp_path, "cli-errors")
    refused = await cli("image", "register", meta, kernel, initrd, user="alice")
    assert refused.returncode == EXIT_AUTH
    assert "creator role" in one_line_error(refused)
    missing = await cli("image", "register", meta, kernel, user="carol")
    assert missing.returncode == EXIT_USAGE  # initrd.img has no sha512: the site says so
    assert "origin.content[1]" in one_line_error(missing)
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"x")
    unknown = await cli("image", "register", meta, str(stray), user="carol")
    assert unknown.returncode == EXIT_USAGE
    assert "stray.bin is not in origin.content" in one_line_error(unknown)
    doc = json.loads((tmp_path / "metadata.json").read_text())
    doc["semantic"]["colour"] = "blue"
    (tmp_path / "metadata.json").write_text(json.dumps(doc))
    bad = await cli("image", "register", meta, kernel, initrd, user="carol")
    assert bad.returncode == EXIT_USAGE
    assert one_line_error(bad).startswith("gridvm: BAD_REQUEST: semantic.colour: ")


@pytest_twisted.ensureDeferred
async def test_upload_progress_is_drawn_on_a_terminal(creators_site, tmp_path):
    site, _http = creators_site
    meta, kernel, initrd = _prepare(tmp_path, "cli-progress", initrd=b"P" * 900_000)
    env = cli_env(site.https_base, "carol")
    code, out, screen = await threads.deferToThread(
        run_on_terminal, ["image", "register", meta, kernel, initrd], env)
    assert code == 0, screen
    assert out.startswith("registered cli-progress:1")
    assert "\rupload initrd.img:" in screen and "100%" in screen and "MiB/s" in screen


@pytest_twisted.ensureDeferred
async def test_export_then_import_a_bundle(creators_site, tmp_path):
    cli = await _registered(creators_site, tmp_path, "cli-bundle")
    target = tmp_path / "out" / "cli-bundle.tar"
    target.parent.mkdir()
    exported = await cli("image", "export", "cli-bundle", "-o", str(target), user="carol")
    assert exported.returncode == 0, exported.stderr
    assert target.stat().st_size > 600_000 and not (tmp_path / "out" / "x.part").exists()
    imported = await cli("image", "import", str(target), user="carol")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("already here: ")
    missing = await cli("image", "export", "no-such-image", "-o", str(target), user="carol")
    assert missing.returncode == 3 and "no-such-image" in one_line_error(missing)
    assert sorted(p.name for p in target.parent.iterdir()) == ["cli-bundle.tar"]


@pytest_twisted.ensureDeferred
async def test_list_shows_the_sites_images_with_status_owner_and_trust(creators_site, tmp_path):
    cli = await _registered(creators_site, tmp_path, "listed-image")
    assert (await cli("image", "deprecate", "listed-image", user="carol")).returncode == 0
    shown = await cli("image", "list", user="carol")
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split()[:3] == ["IMAGE", "STATUS", "OWNER"]
    [row] = [r for r in rows if r.startswith("listed-image:1 ")]
    assert row.split()[1:3] == ["deprecated", "carol"]
    as_json = await cli("image", "list", "--json", user="carol")
    [image] = [i for i in json.loads(as_json.stdout) if i["name"] == "listed-image"]
    assert image["owner"] == "carol" and image["status"] == "deprecated"
