"""Server-side transfers in real VMs: a file fetched from an allowed URL while the VM
boots, a job chained to another through this site's file URL, results uploaded (Exports),
and the refusals — a URL the site does not fetch from or upload to, a redirect out of the
allowed prefixes, another user's job, a missing file with and without FailOnError.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.web import resource, server, static, util

from target_system.transfers import TransferPolicy
from tests.tsf.rest.conftest import PUBLIC
from tests.tsf.rest.test_api import error_of, submit

pytestmark = pytest.mark.vm

IMAGE = {"Image": PUBLIC}
UPLOADED: dict[str, bytes] = {}


class Uploads(resource.Resource):
    """Takes PUT /data/up/<name> into ``received``."""

    isLeaf = True

    def __init__(self, received: dict):
        super().__init__()
        self.received = received

    def render_PUT(self, request):
        self.received[request.postpath[0].decode()] = request.content.read()
        request.setResponseCode(201)
        return b""


@pytest.fixture
def data_server(tmp_path):
    """A plain HTTP server on 127.0.0.1: /data/hello.txt, /data/away redirecting to a path
    outside the prefix the site allows (/data/), and /data/up/ taking uploads."""
    (tmp_path / "hello.txt").write_text("hello from a data server\n")
    root = resource.Resource()
    data = static.File(str(tmp_path))
    data.putChild(b"away", util.Redirect(b"/private/secret"))
    data.putChild(b"up", Uploads(UPLOADED))
    root.putChild(b"data", data)
    root.putChild(b"private", static.Data(b"secret\n", "text/plain"))
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    port.stopListening()


async def finished(http, url: str, user: str = "alice") -> dict:
    for _ in range(600):
        doc = (await http("GET", url, user=user)).json()
        if doc["status"] in ("SUCCESSFUL", "FAILED"):
            return doc
        await task.deferLater(reactor, 0.2, lambda: None)
    raise AssertionError(f"{url} did not finish: {doc['status']}")


async def stdout_of(http, job_url: str, user: str = "alice") -> str:
    wd = (await http("GET", job_url, user=user)).json()["_links"]["workingDirectory"]["href"]
    return (await http("GET", f"{wd}/files/stdout", user=user,
                       headers={"Accept": "application/octet-stream"})).text


@pytest_twisted.ensureDeferred
async def test_imports_exports_and_chained_jobs(rest_site, data_server):
    site, http = rest_site
    site.factory.transfers = TransferPolicy(url_prefixes=(f"{data_server}/data/",))

    first = await submit(http, {
        "Executable": "/bin/sh", "Resources": IMAGE,
        "Arguments": ["-c", "cat in/hello.txt; ls -l run.sh | cut -c1-4; echo made > out.txt"],
        "Imports": [{"From": f"{data_server}/data/hello.txt", "To": "in/hello.txt",
                     "Credentials": {"Username": "alice", "Password": "not-shown"}},
                    {"From": f"{data_server}/data/hello.txt", "To": "run.sh",
                     "Permissions": "rwx"},
                    {"From": f"{data_server}/data/missing", "To": "opt.txt",
                     "FailOnError": "false"}],
        "Exports": [{"From": "out.txt", "To": f"{data_server}/data/up/out.txt"},
                    {"From": "stdout", "To": f"{site.http_base}/x", "FailOnError": False}]})
    doc = await finished(http, first)
    assert doc["status"] == "SUCCESSFUL", "\n".join(doc["log"])
    assert await stdout_of(http, first) == "hello from a data server\n-rwx\n"
    assert any("missing failed, ignored" in line and "HTTP 404" in line for line in doc["log"])
    assert UPLOADED == {"out.txt": b"made\n"}
    ignored = f"export of stdout to {site.http_base}/x failed, ignored"
    assert any(ignored in line and "does not upload to" in line for line in doc["log"])
    exported = await submit(http, {"Executable": "/bin/true", "Resources": IMAGE, "Exports": [
        {"From": "never-made.txt", "To": f"{data_server}/data/up/x"}]})
    doc = await finished(http, exported)
    assert doc["status"] == "FAILED" and doc["gridvm"]["reason"] == "STAGING_FAILED"
    assert "export of never-made.txt" in doc["statusMessage"] and "no file" in doc[
        "statusMessage"]
    wd_first = (await http("GET", first)).json()["_links"]["workingDirectory"]["href"]

    # chained: the next job takes the first one's output through this site's file URL
    wd = wd_first
    second = await submit(http, {
        "Executable": "/bin/cat", "Arguments": ["previous.txt"], "Resources": IMAGE,
        "Imports": [{"From": f"{wd}/files/out.txt", "To": "previous.txt"}]})
    doc = await finished(http, second)
    assert doc["status"] == "SUCCESSFUL", doc["log"]
    assert await stdout_of(http, second) == "made\n"
    submitted = (await http("GET", f"{second}/submitted")).json()
    assert submitted["Imports"][0]["From"].startswith("uspace://")
    masked = (await http("GET", f"{first}/submitted")).json()["Imports"][0]["Credentials"]
    assert masked == {"Username": "***", "Password": "***"}

    # refusals: each FAILED with STAGING_FAILED and the cause, or 400 at submission
    refused = {
        "this site does not fetch from": f"{site.http_base}/",  # its own REST port
        "which this site does not fetch from": f"{data_server}/data/away",  # a redirect
        "HTTP 404": f"{data_server}/data/missing",
    }
    for cause, url in refused.items():
        job = await submit(http, {"Executable": "/bin/true", "Resources": IMAGE,
                                  "Imports": [{"From": url, "To": "x"}]})
        doc = await finished(http, job)
        assert doc["status"] == "FAILED" and doc["gridvm"]["reason"] == "STAGING_FAILED"
        assert cause in doc["statusMessage"], doc
    job_id = first.rsplit("/", 1)[1]
    foreign = await http("POST", "jobs", user="bob", json={
        "Executable": "/bin/true", "Resources": IMAGE,
        "Imports": [{"From": f"{wd}/files/out.txt", "To": "x"}]})
    assert f"no job {job_id}" in error_of(foreign, 400)
    absent = await submit(http, {"Executable": "/bin/true", "Resources": IMAGE,
                                 "Imports": [{"From": f"{wd}/files/nothing.txt", "To": "x"}]})
    doc = await finished(http, absent)
    assert doc["status"] == "FAILED" and "has no file nothing.txt" in doc["statusMessage"]
