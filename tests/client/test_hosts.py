"""``gridvm hosts`` and ``gridvm host drain|enable`` against a real site (one host, the
system libvirtd, no VM booted): administrators only, a one-line reason otherwise."""

from __future__ import annotations

import json

import pytest_twisted

from client.errors import EXIT_AUTH, EXIT_NOT_FOUND
from tests.client.conftest import Cli, one_line_error


@pytest_twisted.ensureDeferred
async def test_hosts_are_listed_drained_and_enabled_by_an_administrator(rest_site):
    site, http = rest_site
    cli = Cli(site.https_base)
    table = await cli("hosts", user="root")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["HOST", "STATE", "CAPACITY", "USED", "INSTANCES", "IMAGES", "URI"]
    assert len(rows) == 1 and rows[0].split()[:2] == ["default", "UP"]
    assert rows[0].rstrip().endswith("qemu:///system")

    drained = await cli("host", "drain", "default", user="root")
    assert drained.returncode == 0 and drained.stderr.strip() == "host default is DRAINING"
    try:
        (doc,) = json.loads((await cli("hosts", "--json", user="root")).stdout)
        assert doc["state"] == "DRAINING" and doc["cpus"] > 0 and doc["memoryMiB"] > 0
        assert doc["used"] == {"vcpus": 0, "memoryMiB": 0}
        job = (await http("POST", "jobs", json={"Executable": "/bin/true"})).headers["Location"]
        await _until_failed(http, job)
        status = (await http("GET", job)).json()
        assert status["status"] == "FAILED"
        assert "NO_HOST_FITS" in status["statusMessage"]
        assert "default is DRAINING" in status["statusMessage"]
    finally:
        enabled = await cli("host", "enable", "default", user="root")
    assert enabled.returncode == 0 and enabled.stderr.strip() == "host default is UP"


@pytest_twisted.ensureDeferred
async def test_only_administrators_see_hosts_and_unknown_hosts_are_named(rest_site):
    site, _http = rest_site
    cli = Cli(site.https_base)
    refused = await cli("hosts")
    assert refused.returncode == EXIT_AUTH
    assert one_line_error(refused) == ("gridvm: NOT_AUTHORIZED: the hypervisor hosts are for "
                                       "administrators only")
    unknown = await cli("host", "drain", "nosuch", user="root")
    assert unknown.returncode == EXIT_NOT_FOUND
    assert one_line_error(unknown) == "gridvm: NOT_FOUND: no host 'nosuch'; hosts: default"


async def _until_failed(http, job_url: str, seconds: float = 60.0) -> None:
    from twisted.internet import reactor, task

    for _ in range(int(seconds / 0.2)):
        if (await http("GET", job_url)).json()["status"] in ("FAILED", "SUCCESSFUL"):
            return
        await task.deferLater(reactor, 0.2, lambda: None)
    raise AssertionError(f"{job_url} did not end")
