"""Cluster definitions over REST, without booting VMs: bad definitions and scale requests
are typed 400s naming the key, others' clusters are 404s, nodes beyond the quotas a 403."""

from __future__ import annotations

import pytest_twisted

from tests.tsf.rest.test_hardening import typed_error


@pytest_twisted.ensureDeferred
async def test_bad_definitions_are_400_naming_the_key_and_start_nothing(rest_site):
    site, http = rest_site
    for doc, key in (({"Services": {"head": {"Count": 1, "Colour": "red"}}},
                      "Services.head.Colour"),
                     ({"Name": "x", "Extra": 1, "Services": {"a": {}}}, "Extra"),
                     ({"Services": {"a": {"Resources": {"Nodes": 2}}}},
                      "Services.a.Resources.Nodes"),
                     ({"Services": {"a": {"Count": 1000000}}}, "Services")):
        doc = typed_error(await http("POST", "clusters", json=doc), 400)
        assert doc["errorMessage"].startswith(key), doc
    listing = await http("GET", "clusters")
    assert listing.status_code == 200 and listing.json()["clusters"] == []
    assert not site.factory.instances


@pytest_twisted.ensureDeferred
async def test_nodes_beyond_the_quota_are_403_and_unknown_clusters_404(rest_site):
    _site, http = rest_site
    answer = await http("POST", "clusters", json={"Services": {"a": {"Count": 3}}})
    assert typed_error(answer, 403)["reason"] == "QUOTA_EXCEEDED"
    for method, path, body in (("GET", "clusters/nope", None),
                               ("DELETE", "clusters/nope", None),
                               ("POST", "clusters/nope/actions/scale",
                                {"Service": "a", "Count": 1})):
        typed_error(await http(method, path, json=body), 404)
    doc = typed_error(await http("POST", "clusters/nope/actions/scale",
                                 json={"Service": "a", "Count": 1, "Now": True}), 400)
    assert doc["errorMessage"].startswith("Now")
