"""The CLI against a real site with real VMs: a user's whole flow, errors, abort, image
search with why-not, instances.

alice's jobs all run on one instance of the public image (the factory reuses it), so the
module boots one VM (in the first test, which therefore sees the VM's phases).
"""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from client.errors import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from tests.client.conftest import Cli, cli_env, one_line_error, run_on_terminal
from tests.tsf.rest.conftest import HIDDEN, PUBLIC
from tsf.pools import PoolSpec

pytestmark = pytest.mark.vm

SCRIPT = ("cat input.txt; echo second: $(cat renamed.txt); echo to-stderr >&2; "
          "mkdir -p out; echo result > out/r.txt")


def job_file(tmp_path, doc: dict, name: str = "job.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


@pytest_twisted.ensureDeferred
async def test_submit_wait_then_status_ls_get_output_jobs_rm(rest_site, tmp_path):
    site, _http = rest_site
    cli = Cli(site.https_base)
    (tmp_path / "input.txt").write_text("hello from the client\n")
    (tmp_path / "other.txt").write_text("two\n")
    # No Executable: the job runs bash from the image's IDB because of --require app=bash.
    job = job_file(tmp_path, {"Arguments": ["-c", SCRIPT], "Name": "cli-flow"})

    result = await cli("submit", job, "--require", "os=debian", "--require", "app=bash",
                       "--require", "cpus=1", "--input", str(tmp_path / "input.txt"),
                       "--input", f"{tmp_path / 'other.txt'}:renamed.txt", "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the client\nsecond: two\n"
    progress = result.stderr
    job_id = progress.splitlines()[0].split()[-1]
    for phase in ("matching", "booting", "connecting", "running", "stage-out"):
        assert f"] {phase}" in progress, progress
    assert "instance " in progress and PUBLIC in progress
    assert f"job {job_id} SUCCESSFUL (exit code 0): " in progress
    assert "booting " in progress.splitlines()[-1]  # the summary carries the VM's timings
    assert "\x1b[" not in progress  # not a terminal: one line per change, no redrawing

    status = await cli("status", job_id)
    assert status.returncode == 0, status.stderr
    assert "status:    SUCCESSFUL" in status.stdout
    assert f"image:     {PUBLIC}" in status.stdout and "timings:   " in status.stdout
    props = json.loads((await cli("status", site.https_base + f"/jobs/{job_id}",
                                  "--json")).stdout)
    assert props["status"] == "SUCCESSFUL" and props["exitCode"] == "0"
    submitted = props["_links"]["submitted"]["href"]
    assert submitted.endswith(f"/jobs/{job_id}/submitted")

    listing = await cli("ls", job_id)
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[-1] for line in listing.stdout.splitlines()[1:]]
    assert {"input.txt", "renamed.txt", "stdout", "stderr", "out/"} <= set(names)
    inner = json.loads((await cli("ls", job_id, "out", "--json")).stdout)
    assert list(inner) == ["/out/r.txt"]

    fetched = await cli("get", job_id, "out/r.txt", cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "r.txt").read_text() == "result\n"
    again = await cli("get", job_id, "out/r.txt", cwd=tmp_path)
    assert again.returncode == EXIT_USAGE and "exists" in one_line_error(again)
    piped = await cli("get", job_id, "stderr", "-o", "-")
    assert piped.stdout == "to-stderr\n"

    output = await cli("output", job_id)
    assert output.returncode == 0 and output.stdout == result.stdout
    errors = await cli("output", job_id, "--stderr")
    assert errors.stdout == "to-stderr\n"

    jobs = await cli("jobs", "--json")
    listed = {j["id"]: j for j in json.loads(jobs.stdout)}
    assert listed[job_id]["status"] == "SUCCESSFUL"
    assert listed[job_id]["image"] == PUBLIC and listed[job_id]["name"] == "cli-flow"
    table = await cli("jobs")
    assert table.stdout.splitlines()[0].split()[:3] == ["JOB", "STATUS", "EXIT"]
    assert any(line.startswith(job_id) for line in table.stdout.splitlines())
    bob = await cli("status", job_id, user="bob")  # other users' jobs do not exist for bob
    assert bob.returncode == EXIT_NOT_FOUND, bob.stderr

    missing = await cli("get", job_id, "no-such-file", cwd=tmp_path)
    assert missing.returncode == EXIT_NOT_FOUND
    assert "no-such-file" in one_line_error(missing)

    removed = await cli("rm", job_id)
    assert removed.returncode == 0, removed.stderr
    gone = await cli("status", job_id)
    assert gone.returncode == EXIT_NOT_FOUND
    assert job_id in one_line_error(gone)


@pytest_twisted.ensureDeferred
async def test_abort_a_long_job_and_timeouts(rest_site, tmp_path):
    site, _http = rest_site
    cli = Cli(site.https_base)
    job = job_file(tmp_path, {"Executable": "sleep", "Arguments": ["300"]})
    submitted = await cli("submit", job, "--image", PUBLIC, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    waited = await cli("wait", job_id, "--timeout", "1", "--quiet")
    assert waited.returncode == EXIT_TIMEOUT
    assert "still" in one_line_error(waited)
    for _ in range(120):  # until it runs (the instance of the first test is reused)
        props = json.loads((await cli("status", job_id, "--json")).stdout)
        if props["status"] == "RUNNING":
            break
    assert props["status"] == "RUNNING", props

    aborted = await cli("abort", job_id)
    assert aborted.returncode == 0, aborted.stderr
    ended = await cli("wait", job_id)
    assert ended.returncode == EXIT_FAILED
    assert one_line_error(ended, only=False).startswith(f"gridvm: JOB_ABORTED: job {job_id} ")
    assert "FAILED" in ended.stderr


@pytest_twisted.ensureDeferred
async def test_no_matching_image_and_bad_input_lose_nothing(rest_site, tmp_path):
    site, _http = rest_site
    cli = Cli(site.https_base)
    before = json.loads((await cli("jobs", "--json")).stdout)

    bad = tmp_path / "bad.json"
    bad.write_text('{"Executable": "date",\n "Resources": }')
    malformed = await cli("submit", str(bad))
    assert malformed.returncode == EXIT_USAGE
    assert "line 2 column" in one_line_error(malformed)
    good = job_file(tmp_path, {"Executable": "date"})
    no_input = await cli("submit", good, "--input", str(tmp_path / "absent.txt"))
    assert no_input.returncode == EXIT_USAGE and "absent.txt" in one_line_error(no_input)
    bad_key = await cli("submit", good, "--require", "colour=blue")
    assert bad_key.returncode == EXIT_USAGE and "colour" in one_line_error(bad_key)
    refused = await cli("submit", job_file(tmp_path, {"Executable": "date", "Bogus": 1},
                                                 "bogus.json"))
    assert refused.returncode == EXIT_USAGE and "Bogus" in one_line_error(refused)
    assert json.loads((await cli("jobs", "--json")).stdout) == before  # nothing was created

    nomatch = await cli("submit", good, "--require", "os=fedora", "--wait")
    assert nomatch.returncode == EXIT_FAILED
    line = one_line_error(nomatch, only=False)
    assert line.startswith("gridvm: NO_MATCHING_IMAGE: ") and PUBLIC in line
    assert HIDDEN not in nomatch.stderr

    # a finished job is kept until its termination time, which `keep` moves
    job_id = nomatch.stderr.splitlines()[0].split()[-1]
    kept = await cli("keep", job_id, "--days", "2")
    assert kept.returncode == 0 and f"keeping {job_id} until " in kept.stderr
    until = kept.stderr.split(" until ")[1].strip()
    status = await cli("status", job_id)
    assert f"expires:   {until}" in status.stdout.splitlines()
    too_long = await cli("keep", job_id, "--days", "400")
    assert too_long.returncode == EXIT_USAGE and "at most" in one_line_error(too_long)
    negative = await cli("keep", job_id, "--days", "-1")
    assert negative.returncode == EXIT_USAGE and "positive" in one_line_error(negative)


@pytest_twisted.ensureDeferred
async def test_connection_and_credential_errors(rest_site):
    site, _http = rest_site
    cli = Cli(site.https_base)
    wrong = await cli("jobs", GRIDVM_PASSWORD="not-the-password")
    assert wrong.returncode == EXIT_AUTH
    assert "Authentication failed" in one_line_error(wrong)
    for _ in range(3):  # the site's failed-login backoff: 3 free, then 1 s
        await cli("jobs", GRIDVM_PASSWORD="not-the-password")
    barred = await cli("jobs", GRIDVM_PASSWORD="not-the-password")
    assert barred.returncode == EXIT_AUTH and "too many failed logins" in one_line_error(barred)
    await task.deferLater(reactor, 1.1, lambda: None)
    anonymous = await cli("jobs", user=None)
    assert anonymous.returncode == EXIT_AUTH, anonymous.stderr
    one_line_error(anonymous)

    closed = site.http_base.replace(f":{site.http_base.split(':')[2].split('/')[0]}", ":9")
    unreachable = await cli("jobs", base=closed)
    assert unreachable.returncode == EXIT_UNAVAILABLE
    assert "cannot reach" in one_line_error(unreachable)
    verified = await cli("jobs", GRIDVM_INSECURE="0")  # self-signed and verification on
    assert verified.returncode == EXIT_UNAVAILABLE and "--insecure" in one_line_error(verified)
    not_rest = await cli("jobs", base=site.http_base.rsplit("/rest/core", 1)[0] + "/nothing")
    assert not_rest.returncode in (EXIT_NOT_FOUND, EXIT_UNAVAILABLE)
    one_line_error(not_rest)
    unknown = await cli("status", "0123456789ab")
    assert unknown.returncode == EXIT_NOT_FOUND and "0123456789ab" in one_line_error(unknown)
    foreign = await cli("status", "https://example.org/X/rest/core/jobs/1")
    assert foreign.returncode == EXIT_USAGE  # credentials never go to another server
    one_line_error(foreign)

    token = await _http("GET", "token", headers={"Accept": "text/plain"})
    by_token = await cli("jobs", "--token", token.text, user=None)
    assert by_token.returncode == 0, by_token.stderr


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
    job.write_text(json.dumps({"Executable": "/bin/sh", "Arguments": ["-c", "sleep 2; echo x"]}))
    # On a terminal the progress is one line redrawn in place (at least one live instance
    # for alice afterwards).
    code, stdout, screen = await threads.deferToThread(
        run_on_terminal, ["submit", str(job), "--image", PUBLIC, "--wait"],
        cli_env(site.https_base))
    assert code == 0 and stdout == "x\n", screen
    assert "\r\x1b[K" in screen, screen
    assert re.search(r" > [|/\\-] running [0-9.]+s", screen), screen
    assert "SUCCESSFUL (exit code 0)" in screen.splitlines()[-1]

    mine = json.loads((await cli("instances", "--json")).stdout)
    assert mine and all(i["owner"] == "alice" and i["image"] == PUBLIC for i in mine)
    assert "BOOTING" in mine[0]["phases"]
    table = await cli("instances")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["INSTANCE", "STATE", "IMAGE", "HOST", "OWNER", "AGE", "HEALTH",
                              "JOBS", "PHASES"]
    row = next(r for r in rows if r.startswith(mine[0]["id"]))
    assert PUBLIC in row and " alice " in row and "booting " in row
    assert row.split()[3] == mine[0]["host"] and row.split()[6] == "ok"

    operator = json.loads((await cli("instances", "--json", user="root")).stdout)
    assert {i["id"] for i in mine} <= {i["id"] for i in operator}
    bob = await cli("instances", user="bob")
    assert bob.returncode == 0 and bob.stdout == "" and "no instances" in bob.stderr

    # ending instances: not someone else's; not one with a running job unless forced
    instance = mine[0]["id"]
    foreign = await cli("terminate", instance, user="bob")
    assert foreign.returncode == EXIT_NOT_FOUND and instance in one_line_error(foreign)
    job.write_text(json.dumps({"Executable": "/bin/sleep", "Arguments": ["60"]}))
    submitted = await cli("submit", str(job), "--image", PUBLIC)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    for _ in range(300):
        status = json.loads((await cli("status", job_id, "--json")).stdout)
        if status["status"] == "RUNNING":
            break
        await task.deferLater(reactor, 0.2, lambda: None)
    busy_instance = status["gridvm"]["instance"]
    busy = await cli("terminate", busy_instance)
    assert busy.returncode == EXIT_USAGE and "unfinished job" in one_line_error(busy)
    forced = await cli("terminate", busy_instance, "--force")
    assert forced.returncode == 0 and f"terminated {busy_instance}" in forced.stderr
    status = json.loads((await cli("status", job_id, "--json")).stdout)
    assert status["status"] == "FAILED" and status["gridvm"]["reason"] == "JOB_ABORTED"
    ended = json.loads((await cli("instances", "--all", "--json")).stdout)
    assert {i["id"]: i["state"] for i in ended}[busy_instance] == "TERMINATED"


@pytest_twisted.ensureDeferred
async def test_pools_are_listed_for_those_they_serve(rest_site):
    site, _http = rest_site
    cli = Cli(site.https_base)
    site.factory.pools = {"demo": PoolSpec("demo", PUBLIC, idle=0, vcpus=2, vos=("demo",)),
                          "ops": PoolSpec("ops", PUBLIC, idle=0, vos=("ops",))}
    try:
        table = await cli("pools")
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["POOL", "IMAGE", "SIZE", "IDLE", "WAITING", "READY", "VOS"]
        assert [r.split()[0] for r in rows] == ["demo"]  # alice is in VO demo only
        assert "2 vCPU, 256 MiB" in rows[0]
        operator = json.loads((await cli("pools", "--json", user="root")).stdout)
        assert [(p["name"], p["waiting"], p["instances"]) for p in operator] == [
            ("demo", 0, {}), ("ops", 0, {})]
    finally:
        site.factory.pools = {}
