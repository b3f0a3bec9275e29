"""Properties of the REST error path, over real sockets: whatever JSON body, header or URL
segment a client sends, the site never answers 500, and every error is the typed body
``{"errorMessage", "status", "reason"}`` (a known reason code, no exception text).

Hypothesis runs in a thread with one kept-alive HTTP connection while the reactor serves.
The site here boots no VM (quotas of 0) and bars no failed login (the header property sends
wrong credentials by the hundred).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import string
from urllib.parse import quote, urlsplit

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads

from base.reasons import Reason
from target_system.jobdesc import IMPORT_KEYS, RESOURCE_KEYS, TOP_LEVEL_KEYS
from tests.tsf.rest.conftest import PASSWORDS, PUBLIC, running_site
from tests.tsf.rest.test_api import submit
from tsf.rest.sites import FACTORY_ID

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
ALICE = "Basic " + base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
#: What a Python exception's text looks like inside a message.
LEAK = re.compile(r"Traceback|File \"|\b[A-Z][A-Za-z]*(Error|Exception)\b|0x[0-9a-f]{6,}")


@pytest_twisted.async_yield_fixture(scope="module")
async def error_site(built_images):
    """(service, BASE, paths): ``job`` and ``storage`` of a job waiting for its client
    stage-in, with the file ``a.txt`` (17 bytes) in its working directory."""
    overrides = {"limits": {"login_backoff_s": 0.0}, "quotas": {"per_user": 0, "total": 0}}
    async with running_site(built_images, **overrides) as (site, http):
        job = await submit(http)
        storage = job.replace("/jobs/", "/storages/") + "-uspace"
        answer = await http("PUT", f"{storage}/files/a.txt", content=b"seventeen bytes!\n",
                            headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 204
        yield site, http.base, {"job": urlsplit(job).path, "storage": urlsplit(storage).path}


class Connection:
    """One kept-alive HTTP/1.1 connection to the site (opened again when the site closes
    it); answers (status, headers, body)."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str | bytes] | None = None):
        headers = {"Authorization": ALICE, "Accept": "application/json", **(headers or {})}
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.connection.request(method, path, body=body, headers=headers)
                answer = self.connection.getresponse()
                return answer.status, dict(answer.getheaders()), answer.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                self.connection.close()
                self.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def assert_typed(status: int, headers: dict, body: bytes, what: object) -> None:
    """Never a 500; an error is a JSON body of exactly the three keys, without leaks."""
    assert status < 500, (what, status, body[:300])
    if status < 400:
        return
    assert headers.get("Content-Type", "").startswith("application/json"), (what, headers)
    doc = json.loads(body)
    assert set(doc) == {"errorMessage", "status", "reason"}, (what, doc)
    assert doc["status"] == status and isinstance(doc["errorMessage"], str), (what, doc)
    assert Reason(doc["reason"]) not in (Reason.INTERNAL_ERROR, Reason.HYPERVISOR_ERROR)
    assert not LEAK.search(doc["errorMessage"]), (what, doc)


# -- strategies ---------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["1e400", "NaN", "-1", "0", "4", "10min", "2h", "1G", "9" * 400,
                              "true", "inline://dummy", "uspace://x/y", "http://127.0.0.1/",
                              PUBLIC, f"{PUBLIC}:{1 << 64}", "../etc/passwd", "/abs", "\0"]))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4),
                           max_leaves=25)


def keyed(keys) -> st.SearchStrategy:
    """Objects with some of ``keys`` (and now and then an unknown one) and any values."""
    return st.dictionaries(st.sampled_from(sorted(keys)) | st.text(max_size=8), json_values,
                           max_size=6)


job_descriptions = st.builds(
    lambda base, resources, imports: {**base, "Resources": resources, "Imports": imports},
    keyed(TOP_LEVEL_KEYS - {"Resources", "Imports"}) | st.just({"Executable": "/bin/true"}),
    keyed(RESOURCE_KEYS) | json_values, st.lists(keyed(IMPORT_KEYS), max_size=3) | json_values)
deep = st.integers(1, 3000).map(lambda n: (b"[" * n + b"]" * n))
bodies = (json_values.map(lambda v: json.dumps(v).encode())
          | job_descriptions.map(lambda v: json.dumps(v).encode())
          | deep | st.binary(max_size=200))


def json_targets(paths: dict[str, str]) -> list[tuple[str, str]]:
    job, storage = paths["job"], paths["storage"]
    return [("POST", "jobs"), ("POST", "images/match"), ("POST", "sites"),
            ("POST", f"factories/{FACTORY_ID}"), ("PUT", job), ("POST", f"{job}/actions/start"),
            ("POST", f"{storage}/actions/copy"), ("POST", f"{storage}/actions/rename"),
            ("PUT", f"{storage}/files/a.txt"), ("POST", f"{storage}/files/newdir")]


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    blacklist_characters="\x7f"), max_size=60)
authorization = (header_text
                 | st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode())
                 | st.builds(lambda u, p: "Basic " + base64.b64encode(
                     f"{u}:{p}".encode()).decode(), st.sampled_from(["alice", "bob", "x" * 100])
                     | st.text(max_size=10), st.text(max_size=10))
                 | header_text.map(lambda t: f"Bearer {t}"))
ranges = (header_text | st.builds(lambda a, b: f"bytes={a}-{b}",
                                  st.sampled_from(["", "0", "5", "16", "17", "9" * 5000])
                                  | st.integers(0, 1 << 70).map(str),
                                  st.sampled_from(["", "0", "3", "9" * 5000])
                                  | st.integers(0, 1 << 70).map(str)))
headers = st.one_of(
    st.tuples(st.just("Authorization"), authorization),
    st.tuples(st.just("Range"), ranges),
    st.tuples(st.sampled_from(["Accept", "Content-Type", "Host", "X-Unicore-User-Preferences",
                               "If-None-Match", "Origin"]), header_text),
    st.tuples(st.text(string.ascii_letters + "-", min_size=1, max_size=20), header_text))

segments = (st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
            .map(lambda s: quote(s, safe=""))
            | st.sampled_from(["..", ".", "%", "%zz", "%ff%fe", "%00", "%2e%2e", "a%2Fb",
                               str(1 << 64), "9" * 5000, "-uspace", f"{PUBLIC}:{1 << 63}"]))


def url_templates(paths: dict[str, str]) -> list[str]:
    job, storage = paths["job"], paths["storage"]
    return ["jobs/{}", "jobs/{}/details", "jobs/{}/actions/{}", f"{job}/actions/{{}}",
            "storages/{}", "storages/{}-uspace/files/{}", f"{storage}/files/{{}}",
            f"{storage}/files/{{}}/{{}}", f"{storage}/actions/{{}}", "images/{}",
            f"images/{PUBLIC}:{{}}", "sites/{}", "sites/{}/jobs", "sites/{}/applications/{}",
            "factories/{}", f"factories/{FACTORY_ID}/applications/{{}}", "instances/{}",
            "{}", "{}/{}", "token?lifetime={}", "jobs?offset={}&num={}",
            "oai?verb={}&identifier={}", "oai?verb=ListRecords&metadataPrefix={}&set={}",
            "imagelists/selection?image={}&image={}", "imagelists/files/{}/{}"]


def url(base_path: str, path: str) -> str:
    return path if path.startswith("/") else f"{base_path}/{path}"


# -- properties ---------------------------------------------------------------------------

def any_json_body(base: str, paths: dict[str, str]) -> None:
    connection = Connection(base)

    @PROPERTY
    @given(target=st.sampled_from(json_targets(paths)), body=bodies)
    def check(target, body):
        method, path = target
        answer = connection.request(method, url(connection.prefix, path), body,
                                    {"Content-Type": "application/json"})
        assert_typed(*answer, (target, body[:200]))

    try:
        check()
    finally:
        connection.close()


def any_header(base: str, paths: dict[str, str]) -> None:
    connection = Connection(base)
    targets = ["", "jobs", "token", paths["job"], f"{paths['storage']}/files/a.txt",
               f"{paths['storage']}/files"]

    @PROPERTY
    @given(path=st.sampled_from(targets), header=headers,
           accept=st.sampled_from(["application/json", "application/octet-stream", "*/*"]))
    def check(path, header, accept):
        name, value = header
        sent = {"Accept": accept, name: value.encode("latin-1")}
        answer = connection.request("GET", url(connection.prefix, path), headers=sent)
        assert_typed(*answer, (path, name, value[:200]))

    try:
        check()
    finally:
        connection.close()


def any_url_segment(base: str, paths: dict[str, str]) -> None:
    connection = Connection(base)

    @PROPERTY
    @given(template=st.sampled_from(url_templates(paths)),
           parts=st.lists(segments, min_size=2, max_size=2),
           method=st.sampled_from(["GET", "GET", "DELETE", "PUT", "POST"]))
    def check(template, parts, method):
        path = template.format(*parts[: template.count("{}")])
        answer = connection.request(method, url(connection.prefix, path), b"{}",
                                    {"Content-Type": "application/json"})
        assert_typed(*answer, (method, path[:300]))

    try:
        check()
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_any_json_body_is_answered_without_500(error_site):
    _site, base, paths = error_site
    await threads.deferToThread(any_json_body, base, paths)


@pytest_twisted.ensureDeferred
async def test_any_header_is_answered_without_500(error_site):
    _site, base, paths = error_site
    await threads.deferToThread(any_header, base, paths)


@pytest_twisted.ensureDeferred
async def test_any_url_segment_is_answered_without_500(error_site):
    _site, base, paths = error_site
    await threads.deferToThread(any_url_segment, base, paths)


