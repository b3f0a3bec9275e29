"""Admission over real sockets: sizes outside the site's published limits are 400s naming
the key (at submit and in images/match), never a boot; a user at a per-user limit gets a
403 QUOTA_EXCEEDED naming it; text a VM cannot be given and batch keys a VM site would
ignore are 400s at submit.  No VM is booted here."""

from __future__ import annotations

import dataclasses
import json

import pytest_twisted

from base.reasons import Reason
from tests.tsf.rest.conftest import PUBLIC
from tests.tsf.rest.test_api import NO_BOOT
from tests.tsf.rest.test_hardening import post_raw, typed_error
from tsf.admission import UserLimits


def sized(**resources) -> dict:
    return {**NO_BOOT, "Resources": {"Image": PUBLIC, **resources}}


@pytest_twisted.ensureDeferred
async def test_sizes_outside_the_site_limits_are_400_and_boot_nothing(rest_site):
    site, http = rest_site
    jobs, instances = len(site.factory.jobs), len(site.factory.instances)
    for resources, key, complaint in (
            ({"CPUs": 1000}, "Resources.CPUs", "1 to 4"),
            ({"CPUs": 5, "Memory": "9G"}, "Resources.CPUs", "1 to 4"),
            ({"CPUs": 4, "Memory": "9G"}, "Resources.Memory", "1 to 8192 MiB"),
            ({"TotalCPUs": 8}, "Resources.TotalCPUs", "1 to 4"),
            ({"Runtime": "2d"}, "Resources.Runtime", "1 to 86400 s")):
        for path in ("jobs", "images/match"):
            doc = typed_error(await http("POST", path, json=sized(**resources)), 400)
            assert f"{key}: " in doc["errorMessage"] and complaint in doc["errorMessage"], doc
    doc = typed_error(await http("POST", "images/match", json={"requirements": {"cpus": 5}}),
                      400)
    assert "requirements.cpus: 5 is outside this site's limit" in doc["errorMessage"]
    assert (len(site.factory.jobs), len(site.factory.instances)) == (jobs, instances)
    answer = await http("POST", "images/match", json=sized(CPUs=4, Memory="8G"))
    assert answer.status_code == 200, answer.text


@pytest_twisted.ensureDeferred
async def test_text_and_ignored_batch_keys_are_400_at_submit(rest_site):
    site, http = rest_site
    before = len(site.factory.jobs)
    for desc, key in (({**NO_BOOT, "Name": "a\nb"}, "Name"),
                      ({**NO_BOOT, "Executable": "/bin/\udc80"}, "Executable"),
                      ({**NO_BOOT, "Arguments": ["\x07"]}, "Arguments[0]"),
                      (sized(ArraySize=10), "Resources.ArraySize"),
                      (sized(ArrayLimit=2), "Resources.ArrayLimit"),
                      (sized(QoS="high"), "Resources.QoS"),
                      (sized(Queue="gpu"), "Resources.Queue")):
        body = json.dumps(desc).encode()  # a lone surrogate as JSON writes it: \\udc80
        doc = typed_error(await post_raw(http, "jobs", body), 400)
        assert f"{key}: " in doc["errorMessage"], doc
    assert len(site.factory.jobs) == before


@pytest_twisted.ensureDeferred
async def test_per_user_limits_are_403_quota_exceeded_naming_the_limit(rest_site):
    site, http = rest_site
    factory = site.factory
    admission = factory.admission
    alices = sum(j.owner == "alice" for j in factory.jobs.values())
    try:
        factory.admission = dataclasses.replace(admission, users=UserLimits(jobs=alices + 1))
        first = await http("POST", "jobs", json=NO_BOOT)
        assert first.status_code == 201, first.text
        doc = typed_error(await http("POST", "jobs", json=NO_BOOT), 403)
        assert doc["reason"] == Reason.QUOTA_EXCEEDED
        assert doc["errorMessage"].startswith(f"per-user limit jobs: you keep {alices + 1} jobs")
        bobs = await http("POST", "jobs", json=NO_BOOT, user="bob")
        assert bobs.status_code == 201, bobs.text
        factory.admission = dataclasses.replace(admission, users=UserLimits(storage_bytes=1))
        storage = first.headers["location"].replace("/jobs/", "/storages/") + "-uspace"
        upload = await http("PUT", f"{storage}/files/a.txt", content=b"x" * 10,
                            headers={"Content-Type": "application/octet-stream"})
        assert upload.status_code == 204, upload.text
        doc = typed_error(await http("PUT", f"{storage}/files/b.txt", content=b"y",
                                     headers={"Content-Type": "application/octet-stream"}), 403)
        assert "per-user limit storage_bytes" in doc["errorMessage"]
    finally:
        factory.admission = admission
