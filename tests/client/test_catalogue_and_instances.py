"""``gridvm image search`` (the server's matching with why-not) and ``gridvm instances``."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from client.errors import EXIT_NOT_FOUND
from tests.client.conftest import Cli, one_line_error
from tests.rest.conftest import HIDDEN, PUBLIC

pytestmark = pytest.mark.vm


@pytest_twisted.ensureDeferred
async def test_image_search_ranks_and_says_why_not(rest_site):
    site, _http = rest_site
    cli = Cli(site.https_base)
    fits = await cli("image", "search", "--require", "app=python3", "--require", "os=debian")
    assert fits.returncode == 0, fits.stderr
    header, first = fits.stdout.splitlines()[:2]
    assert header.split()[:3] == ["#", "IMAGE", "STATUS"]
    assert first.split()[1] == f"{PUBLIC}:1" and "python3" in first
    assert HIDDEN not in fits.stdout  # alice is not in VO secret

    none = await cli("image", "search", "--require", "os=fedora", "--require", "cpus=2")
    assert none.returncode == EXIT_NOT_FOUND
    assert one_line_error(none).startswith("gridvm: NO_MATCHING_IMAGE: no image matches")
    assert none.stdout.startswith("Rejected:")
    why = [line for line in none.stdout.splitlines() if PUBLIC in line]
    assert why and "fedora" in why[0], none.stdout
    assert HIDDEN not in none.stdout

    answer = json.loads((await cli("image", "search", "--require", "os=fedora",
                                   "--json")).stdout)
    assert answer["candidates"] == []
    assert [r["ref"] for r in answer["rejected"]] == [f"{PUBLIC}:1"]
    assert answer["rejected"][0]["reasons"][0]["code"]

    admin = json.loads((await cli("image", "search", "--json", user="root")).stdout)
    assert {c["ref"].split(":")[0] for c in admin["candidates"]} == {PUBLIC, HIDDEN}


@pytest_twisted.ensureDeferred
async def test_instances_for_owner_operator_and_others(rest_site, tmp_path):
    site, _http = rest_site
    cli = Cli(site.https_base)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"Executable": "true"}))
    ran = await cli("submit", str(job), "--image", PUBLIC, "--wait", "--quiet")
    assert ran.returncode == 0, ran.stderr  # at least one live instance for alice

    mine = json.loads((await cli("instances", "--json")).stdout)
    assert mine and all(i["owner"] == "alice" and i["image"] == PUBLIC for i in mine)
    assert "BOOTING" in mine[0]["phases"]
    table = await cli("instances")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["INSTANCE", "STATE", "IMAGE", "OWNER", "AGE", "HEALTH", "JOBS",
                              "PHASES"]
    row = next(r for r in rows if r.startswith(mine[0]["id"]))
    assert PUBLIC in row and " alice " in row and "booting " in row
    assert row.split()[5] == "ok"

    operator = json.loads((await cli("instances", "--json", user="root")).stdout)
    assert {i["id"] for i in mine} <= {i["id"] for i in operator}
    bob = await cli("instances", user="bob")
    assert bob.returncode == 0 and bob.stdout == "" and "no instances" in bob.stderr
