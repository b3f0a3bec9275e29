"""Bad input that used to be answered 500 (with a Python exception's text and the reason
``HYPERVISOR_ERROR``), malleable tokens and unlimited failed logins — over real sockets,
without booting VMs.  Each answer must be a typed 4xx: ``{"errorMessage", "status",
"reason"}``; a real defect is a 500 ``INTERNAL_ERROR`` that shows no exception text."""

from __future__ import annotations

import json
import logging
import string

import pytest_twisted
from twisted.internet import reactor, task

from base.reasons import Reason
from tests.tsf.rest.conftest import PUBLIC
from tests.tsf.rest.test_api import NO_BOOT, submit
from tsf.rest.http import MAX_JSON_DEPTH, OCTET, Response
from tsf.rest.sites import FACTORY_ID


def typed_error(answer, status: int) -> dict:
    """The error body of ``answer``, checked: its status, a known reason, no traceback."""
    assert answer.status_code == status, answer.text
    doc = answer.json()
    assert set(doc) == {"errorMessage", "status", "reason"}, doc
    assert doc["status"] == status and doc["errorMessage"]
    assert Reason(doc["reason"]) is not Reason.HYPERVISOR_ERROR
    for leak in ("Error:", "Traceback", "Exceeds the limit", "cannot convert", "sqlite"):
        assert leak not in doc["errorMessage"], doc
    return doc


async def post_raw(http, path: str, body: bytes):
    return await http("POST", path, content=body, headers={"Content-Type": "application/json"})


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_400_and_creates_nothing(rest_site):
    site, http = rest_site
    before = len(site.factory.jobs)
    deep_array = b"[" * 30000 + b"]" * 30000  # a RecursionError in the decoder before
    doc = typed_error(await post_raw(http, "jobs", deep_array), 400)
    assert f"deeper than {MAX_JSON_DEPTH}" in doc["errorMessage"]
    nested = {"Executable": "/bin/true", "Tags": []}
    inner = nested["Tags"]
    for _ in range(MAX_JSON_DEPTH + 1):
        inner.append([])
        inner = inner[0]
    doc = typed_error(await post_raw(http, "images/match", json.dumps(nested).encode()), 400)
    assert "deeper than" in doc["errorMessage"]
    assert len(site.factory.jobs) == before


@pytest_twisted.ensureDeferred
async def test_numbers_out_of_range_are_400_naming_the_key(rest_site):
    site, http = rest_site
    before = len(site.factory.jobs)
    for key in ("CPUs", "Nodes", "CPUsPerNode"):
        desc = {**NO_BOOT, "Resources": {"Image": PUBLIC, key: "1e400"}}
        doc = typed_error(await http("POST", "jobs", json=desc), 400)
        assert f"Resources.{key}" in doc["errorMessage"], doc
    for key, value in (("CPUs", 10 ** 12), ("Memory", "9" * 400 + "G"),
                       ("Runtime", "9" * 400), ("Runtime", 1e300)):
        desc = {**NO_BOOT, "Resources": {"Image": PUBLIC, key: value}}
        doc = typed_error(await http("POST", "jobs", json=desc), 400)
        assert f"Resources.{key}" in doc["errorMessage"], (key, doc)
    # numbers JSON cannot carry as finite 64-bit values: 400 while the body is parsed
    for number in (b"1e400", b"NaN", b"-Infinity", b"9" * 5000):
        body = b'{"Executable": "x", "Resources": {"Runtime": ' + number + b"}}"
        doc = typed_error(await post_raw(http, "jobs", body), 400)
        assert "malformed JSON" in doc["errorMessage"], doc
    assert len(site.factory.jobs) == before


@pytest_twisted.ensureDeferred
async def test_range_positions_of_thousands_of_digits(rest_site):
    _site, http = rest_site
    job = await submit(http)
    storage = job.replace("/jobs/", "/storages/") + "-uspace"
    answer = await http("PUT", f"{storage}/files/a.txt", content=b"hello",
                        headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 204
    huge = "9" * 5000

    async def download(header: str | bytes):
        return await http("GET", f"{storage}/files/a.txt",
                          headers={"Range": header, "Accept": "application/octet-stream"})

    whole = await download(f"bytes=0-{huge}")  # a last position past the end: to the end
    assert whole.status_code == 206 and whole.content == b"hello"
    assert whole.headers["content-range"] == "bytes 0-4/5"
    tail = await download(f"bytes=-{huge}")  # a suffix longer than the file: all of it
    assert tail.status_code == 206 and tail.content == b"hello"
    doc = typed_error(await download(f"bytes={huge}-"), 416)
    assert "outside the file" in doc["errorMessage"]
    typed_error(await download("bytes=\u0663-".encode()), 416)  # an Arabic-Indic digit


@pytest_twisted.ensureDeferred
async def test_image_versions_beyond_64_bits_are_400(rest_site):
    _site, http = rest_site
    assert (await http("GET", f"images/{PUBLIC}:1")).status_code == 200
    for version in (str(1 << 31), str(1 << 63), "9" * 5000, "\u00b2"):
        doc = typed_error(await http("GET", f"images/{PUBLIC}:{version}"), 400)
        assert "image version" in doc["errorMessage"], doc
    answer = await http("POST", "images/match",
                        json={"requirements": {"os": {"version": ">=" + "9" * 5000}}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"] == []


@pytest_twisted.ensureDeferred
async def test_site_termination_time_past_year_9999_is_400(rest_site):
    _site, http = rest_site
    before = (await http("GET", "sites")).json()["sites"]
    for when in ("9999-12-31T23:59:59-14:00", "10000-01-01T00:00:00"):
        for path in ("sites", f"factories/{FACTORY_ID}"):
            doc = typed_error(await http("POST", path, json={"terminationTime": when}), 400)
            assert "terminationTime" in doc["errorMessage"]
    assert (await http("GET", "sites")).json()["sites"] == before
    job = await submit(http)
    typed_error(await http("PUT", job, json={"terminationTime": "9999-12-31T23:59:59-14:00"}),
                400)


@pytest_twisted.ensureDeferred
async def test_a_defect_is_internal_error_without_its_text_and_logged(rest_site, caplog):
    site, http = rest_site

    async def broken(call):
        raise RuntimeError("secret detail: /var/lib/gridvm/token-secret")

    async def unencodable(call):
        return Response(json={"value": object()})

    site.app.add("GET", "test-broken", broken)
    site.app.add("GET", "test-unencodable", unencodable)
    with caplog.at_level(logging.ERROR, logger="tsf.rest.app"):
        doc = typed_error(await http("GET", "test-broken"), 500)
        assert doc["reason"] == Reason.INTERNAL_ERROR
        assert "secret" not in doc["errorMessage"] and "RuntimeError" not in doc["errorMessage"]
        incident = doc["errorMessage"].split("incident ")[1].split(")")[0]
        # the response itself cannot be encoded: still an answer, not a hanging request
        doc = typed_error(await http("GET", "test-unencodable", timeout=20), 500)
        assert doc["reason"] == Reason.INTERNAL_ERROR
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"incident {incident}" in logged and "secret detail" in logged
    assert "Traceback" in logged


@pytest_twisted.ensureDeferred
async def test_a_token_has_one_spelling(rest_site):
    _site, http = rest_site
    token = (await http("GET", "token", headers={"Accept": "text/plain"})).text

    async def as_bearer(value: str):
        return await http("GET", "jobs", user=None, headers={"Authorization": f"Bearer {value}"})

    assert (await as_bearer(token)).status_code == 200
    head, payload, signature = token.split(".")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    # 32 bytes in 43 characters leave 2 unused low bits: another spelling of the same bytes
    spare_bits = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    for variant in (token + "==", token + "=", f"{head}=.{payload}.{signature}",
                    f"{head}.{payload}=.{signature}", f"{head}.{payload}.{spare_bits}",
                    f"{head}.{payload}.{signature}."):
        doc = typed_error(await as_bearer(variant), 403)
        assert "invalid token" in doc["errorMessage"], (variant, doc)


@pytest_twisted.ensureDeferred
async def test_failed_logins_back_off_and_a_success_resets(rest_site):
    """Last in this module: it bars the tests' source address for a second."""
    _site, http = rest_site
    for _ in range(3):  # free
        typed_error(await http("GET", "jobs", auth=("bob", "wrong")), 403)
    typed_error(await http("GET", "jobs", auth=("bob", "wrong")), 403)  # bars for 1 s
    barred = await http("GET", "jobs", auth=("bob", "bob-secret"))  # even the right one
    doc = typed_error(barred, 429)
    assert "too many failed logins" in doc["errorMessage"] and doc["reason"] == "NOT_AUTHORIZED"
    assert barred.headers["retry-after"] == "1"
    # the source is barred too: another user from the same address
    typed_error(await http("GET", "jobs", auth=("carol", "x")), 429)
    await task.deferLater(reactor, 1.1, lambda: None)
    assert (await http("GET", "jobs", user="bob")).status_code == 200  # resets both
    typed_error(await http("GET", "jobs", auth=("bob", "wrong")), 403)  # free again



@pytest_twisted.ensureDeferred
async def test_header_octets_that_are_not_utf8_and_unusable_paths(rest_site):
    """Found by the property tests: twisted.web's str header lookup failed on octets that are
    not UTF-8, and the file system on names beyond its limits or lone surrogates."""
    _site, http = rest_site
    job = await submit(http)
    storage = job.replace("/jobs/", "/storages/") + "-uspace"
    answer = await http("PUT", f"{storage}/files/a.txt", content=b"hello",
                        headers={"Content-Type": OCTET})
    assert answer.status_code == 204
    typed_error(await http("GET", f"{storage}/files/a.txt",
                           headers={"Range": b"bytes=\xfe-", "Accept": OCTET}), 416)
    assert (await http("GET", "jobs", headers={"Host": b"\xff"})).status_code == 200
    for name in ("n" * 256, "/".join(["d" * 200] * 21)):
        doc = typed_error(await http("GET", f"{storage}/files/{name}"), 400)
        assert "at most 255" in doc["errorMessage"]
    body = b'{"from": "\\ud800", "to": "b"}'  # a lone surrogate, valid JSON
    doc = typed_error(await post_raw(http, f"{storage}/actions/copy", body), 400)
    assert "Unicode" in doc["errorMessage"]
