"""``gridvm cluster`` against the REST site, without booting: bad definitions and
arguments are one-line errors with exit 2, a cluster beyond the quota is refused, an
unknown one is exit 3, and status lists none."""

from __future__ import annotations

import json

import pytest_twisted

from tests.client.conftest import Cli, one_line_error, rest_site  # noqa: F401


@pytest_twisted.ensureDeferred
async def test_cluster_commands_refuse_bad_input_with_one_line(rest_site, tmp_path):  # noqa: F811
    site, _http = rest_site
    cli = Cli(site.https_base)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Services": {"head": {"Count": 1, "Colour": "red"}}}))
    result = await cli("cluster", "up", str(bad))
    assert result.returncode == 2
    assert "Services.head.Colour" in one_line_error(result)
    too_big = tmp_path / "big.json"
    too_big.write_text(json.dumps({"Services": {"a": {"Count": 3}}}))
    result = await cli("cluster", "up", str(too_big))
    assert result.returncode != 0 and "QUOTA_EXCEEDED" not in result.stdout
    assert "limit per user" in one_line_error(result)
    result = await cli("cluster", "scale", "abc", "worker", "many")
    assert result.returncode == 2 and "COUNT" in one_line_error(result)
    result = await cli("cluster", "down")
    assert result.returncode == 2 and "usage" in one_line_error(result)
    result = await cli("cluster", "status", "nope")
    assert result.returncode == 3, result.stderr
    result = await cli("cluster", "status")
    assert result.returncode == 0 and "no clusters" in result.stdout + result.stderr
    assert not site.factory.instances
