"""The REST API over real sockets, without booting VMs: base resource, authentication,
factory, visibility, bad input, other users' things, path confinement, pending uploads."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest_twisted

from tests.tsf.rest.conftest import HIDDEN, PUBLIC
from tsf.rest.http import OCTET

NO_BOOT = {"Executable": "/bin/true", "haveClientStageIn": "true",
           "Resources": {"Image": PUBLIC}}


async def submit(http, desc=None, user="alice") -> str:
    answer = await http("POST", "jobs", user=user, json=desc or NO_BOOT)
    assert answer.status_code == 201, answer.text
    return answer.headers["location"]


def error_of(answer, status):
    assert answer.status_code == status, answer.text
    doc = answer.json()
    assert doc["status"] == status and doc["errorMessage"]
    return doc["errorMessage"]


@pytest_twisted.ensureDeferred
async def test_base_resource_links_are_absolute_and_roles_follow_credentials(rest_site):
    _site, http = rest_site
    doc = (await http("GET")).json()
    assert doc["client"]["role"]["selected"] == "user"
    assert doc["client"]["xlogin"]["UID"] == "alice"
    assert doc["server"]["version"] == "10.2.0"
    hypervisor = doc["server"]["gridvm"]["hypervisor"]
    assert hypervisor["connected"] is True and hypervisor["message"] == ""
    for name in ("jobs", "storages", "factories", "sites"):
        assert doc["_links"][name]["href"] == f"{http.base}/{name}"

    anonymous = await http("GET", user=None)
    assert anonymous.status_code == 200
    assert anonymous.json()["client"]["role"]["selected"] == "anonymous"
    assert (await http("GET", "jobs", user=None)).status_code == 401

    message = error_of(await http("GET", auth=("alice", "wrong")), 403)
    assert "wrong user name or password" in message
    error_of(await http("GET", auth=("nobody", "x")), 403)
    error_of(await http("GET", headers={"Authorization": "Bearer not.a.token"}, user=None), 403)


@pytest_twisted.ensureDeferred
async def test_tokens_authenticate_and_expire_with_their_user(rest_site):
    _site, http = rest_site
    answer = await http("GET", "token", headers={"Accept": "text/plain"})
    assert answer.status_code == 200
    token = answer.text
    bearer = {"Authorization": f"Bearer {token}"}
    doc = (await http("GET", user=None, headers=bearer)).json()
    assert doc["client"]["xlogin"]["UID"] == "alice"
    assert doc["client"]["authenticationMethod"] == "BEARER"
    # not renewable: no new token from it
    error_of(await http("GET", "token", user=None, headers=bearer), 403)
    # a forged signature
    head, payload, _sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    error_of(await http("GET", user=None,
                        headers={"Authorization": f"Bearer {head}.{forged}.{_sig}"}), 403)


@pytest_twisted.ensureDeferred
async def test_factory_publishes_visible_images_and_their_applications(rest_site):
    _site, http = rest_site
    factories = (await http("GET", "factories")).json()["factories"]
    assert factories == [f"{http.base}/factories/default_target_system_factory"]
    factory = (await http("GET", factories[0])).json()
    images = factory["resources"]["batch"]["Image"]
    assert images == [PUBLIC]  # the private qcow2 image of VO "secret" is not listed
    assert "CONTAINER---v1.0" in factory["applications"]
    assert any(a.startswith("python3---v") for a in factory["applications"])
    app = (await http("GET", f"{factories[0]}/applications/CONTAINER---v1.0")).json()
    assert app["ApplicationName"] == "CONTAINER" and "IMAGE_URL" in app["Options"]
    # the administrator sees both
    admin = (await http("GET", factories[0], user="root")).json()
    assert sorted(admin["resources"]["batch"]["Image"]) == sorted([PUBLIC, HIDDEN])

    catalogue = (await http("GET", "images")).json()["images"]
    assert [i["name"] for i in catalogue] == [PUBLIC]
    error_of(await http("GET", f"images/{HIDDEN}"), 404)
    match = (await http("POST", "images/match", json={
        "Executable": "x", "Resources": {"Image": HIDDEN}})).json()
    assert match["candidates"] == []
    assert [r["ref"] for r in match["rejected"]] == [f"{PUBLIC}:1"]
    assert HIDDEN + ":" not in json.dumps(match)


@pytest_twisted.ensureDeferred
async def test_bad_input_is_400_naming_the_problem_and_creates_nothing(rest_site):
    site, http = rest_site
    before = len(site.factory.jobs)
    cases = [
        (b'{"Executable": "x",', "malformed JSON"),
        (b'["Executable"]', "must be a JSON object"),
        (json.dumps({"Executable": "x", "Resourcez": {}}).encode(), "Resourcez"),
        (json.dumps({"Executable": "x", "Arguments": "a b"}).encode(), "Arguments"),
        (json.dumps({"Executable": "x", "Resources": {"CPUs": "many"}}).encode(),
         "Resources.CPUs"),
        (b'{"Executable": "' + b"x" * (80 << 10) + b'"}', "limit"),
        (b"\xff\xfe{}", "UTF-8"),
    ]
    for body, expected in cases:
        answer = await http("POST", "jobs", content=body,
                            headers={"Content-Type": "application/json"})
        assert expected in error_of(answer, 400), (body[:40], answer.text)
    # a huge upload (over max_upload_mib = 8), chunked, is refused
    job = await submit(http)

    def chunks():
        for _ in range(9):
            yield b"\0" * (1 << 20)

    storage = job.replace("/jobs/", "/storages/") + "-uspace"
    answer = await http("PUT", f"{storage}/files/big", content=chunks(),
                        headers={"Content-Type": "application/octet-stream"})
    assert "limit" in error_of(answer, 400)
    listing = (await http("GET", f"{storage}/files")).json()
    assert listing["content"] == {}
    assert len(site.factory.jobs) == before + 1
    # actions and factories
    error_of(await http("POST", f"{job}/actions/explode", json={}), 404)
    error_of(await http("POST", "factories/default_target_system_factory",
                        json={"terminationTime": 5}), 400)
    error_of(await http("GET", "jobs?num=abc"), 400)
    error_of(await http("PATCH", "jobs"), 405)


@pytest_twisted.ensureDeferred
async def test_a_bad_image_requirement_is_400_at_submit_naming_the_key(rest_site):
    """Image requirements are read when the job is posted: a value matching would refuse is
    a 400 naming the UNICORE key, never a 201 for a job that fails later."""
    site, http = rest_site
    before = len(site.factory.jobs)
    for key, value in (("CPUArchitecture", "sparc9"), ("OperatingSystemVersion", "banana"),
                       ("Runtime", "2months")):
        answer = await http("POST", "jobs", json={**NO_BOOT, "Resources": {
            "Image": PUBLIC, key: value}})
        message = error_of(answer, 400)
        assert f"Resources.{key}" in message and value in message, message
        assert answer.json()["reason"] == "BAD_REQUEST"
    answer = await http("POST", "images/match", json={
        "Executable": "x", "Resources": {"CPUArchitecture": "sparc9"}})
    assert "Resources.CPUArchitecture" in error_of(answer, 400)
    assert len(site.factory.jobs) == before


@pytest_twisted.ensureDeferred
async def test_pending_job_inputs_listing_range_and_confinement(rest_site):
    site, http = rest_site
    job = await submit(http)
    doc = (await http("GET", job)).json()
    assert doc["status"] == "READY" and "action:start" in doc["_links"]
    wd = doc["_links"]["workingDirectory"]["href"]
    assert (await http("GET", wd)).json()["resourceStatus"] == "READY"
    octet = {"Content-Type": "application/octet-stream"}
    assert (await http("PUT", f"{wd}/files/in/data.txt", content=b"0123456789",
                       headers=octet)).status_code == 204
    listing = (await http("GET", f"{wd}/files/")).json()
    assert listing["isDirectory"] and set(listing["content"]) == {"/in/"}
    stat = (await http("GET", f"{wd}/files/in/data.txt")).json()
    assert stat["isDirectory"] is False and stat["size"] == 10
    ranged = await http("GET", f"{wd}/files/in/data.txt",
                        headers={"Accept": "application/octet-stream", "Range": "bytes=2-4"})
    assert ranged.status_code == 206 and ranged.content == b"234"
    assert ranged.headers["content-range"] == "bytes 2-4/10"
    tail = await http("GET", f"{wd}/files/in/data.txt",
                      headers={"Accept": "application/octet-stream", "Range": "bytes=-3"})
    assert tail.content == b"789"
    error_of(await http("GET", f"{wd}/files/in/data.txt",
                        headers={"Accept": "application/octet-stream", "Range": "bytes=x"}), 416)
    error_of(await http("GET", f"{wd}/files/in",
                        headers={"Accept": "application/octet-stream"}), 406)
    assert (await http("POST", f"{wd}/actions/rename",
                       json={"from": "/in/data.txt", "to": "data.txt"})).status_code == 204
    job_id = job.rsplit("/", 1)[1]
    pending = site.factory.jobs[job_id]
    _dirs, files = pending.input_files()  # on disk in site storage, not in memory
    assert [(name, path.read_bytes()) for name, path in files] == [("data.txt", b"0123456789")]
    assert files[0][1].is_relative_to(pending.inputs_dir)

    # traversal: raw requests, so that no client normalises the path
    for path in ("files/../../etc/passwd", "files/%2e%2e/x", "files//etc/passwd",
                 "files/a/%2E%2E/%2E%2E/b"):
        status, doc = await http.raw("GET", f"{wd}/{path}")
        assert status == 400 and "allowed" in doc["errorMessage"], (path, doc)
    error_of(await http("POST", f"{wd}/actions/copy", json={"from": "data.txt",
                                                             "to": "../x"}), 400)
    error_of(await http("POST", f"{wd}/actions/copy", json={"from": "//etc/passwd",
                                                             "to": "x"}), 400)
    status, _doc = await http.raw("PUT", f"{wd}/files/../escape", b"x")
    assert status == 400


@pytest_twisted.ensureDeferred
async def test_other_users_jobs_and_files_are_404(rest_site):
    _site, http = rest_site
    job = await submit(http, user="alice")
    wd = job.replace("/jobs/", "/storages/") + "-uspace"
    for url in (job, f"{wd}", f"{wd}/files", f"{wd}/files/x"):
        error_of(await http("GET", url, user="bob"), 404)
    error_of(await http("POST", f"{job}/actions/abort", user="bob", json={}), 404)
    error_of(await http("DELETE", job, user="bob"), 404)
    error_of(await http("PUT", f"{wd}/files/x", user="bob", content=b"x",
                        headers={"Content-Type": "application/octet-stream"}), 404)
    assert job not in (await http("GET", "jobs", user="bob")).json()["jobs"]
    assert job in (await http("GET", "jobs", user="root")).json()["jobs"]
    error_of(await http("GET", "instances/nonexistent", user="bob"), 404)
    # the owner deletes it: gone for good
    assert (await http("DELETE", job)).status_code == 204
    error_of(await http("GET", job), 404)


@pytest_twisted.ensureDeferred
async def test_job_listing_pages_and_tags(rest_site):
    _site, http = rest_site
    urls = [await submit(http, {**NO_BOOT, "Tags": ["page", f"n{i}"]}, user="bob")
            for i in range(3)]
    first = (await http("GET", "jobs?offset=0&num=2&tags=page", user="bob")).json()
    assert first["jobs"] == urls[:2] and "next" in first["_links"]
    second = (await http("GET", first["_links"]["next"]["href"], user="bob")).json()
    assert second["jobs"] == urls[2:]
    assert (await http("GET", "jobs?offset=3&num=2&tags=page", user="bob")).json()["jobs"] == []
    assert (await http("GET", "jobs?tags=n1", user="bob")).json()["jobs"] == [urls[1]]


@pytest_twisted.ensureDeferred
async def test_a_job_for_an_invisible_image_is_never_matched(rest_site):
    site, http = rest_site
    job = await submit(http, {"Executable": "true", "Resources": {"Image": HIDDEN}})
    job_id = job.rsplit("/", 1)[1]
    await site.factory.wait(job_id, _alice())
    doc = (await http("GET", job)).json()
    assert doc["status"] == "FAILED" and doc["gridvm"]["reason"] == "NO_MATCHING_IMAGE"
    assert [r["ref"] for r in doc["gridvm"]["rejections"]] == [f"{PUBLIC}:1"]
    assert site.factory.list_instances(_alice()) == []


def _alice():
    from base.identity import Caller

    return Caller.of("alice", ["users"], ["demo"])


@pytest_twisted.ensureDeferred
async def test_site_storage_copy_refuses_symlinks_out_of_the_job_directory(rest_site):
    site, http = rest_site
    job = await submit(http, {"Executable": "true", "Resources": {"Image": HIDDEN}})
    job_id = job.rsplit("/", 1)[1]
    await site.factory.wait(job_id, _alice())  # FAILED: files now come from site storage
    storage = site.factory.jobs[job_id].storage
    storage.mkdir(parents=True)
    (storage / "stdout").write_text("kept\n")
    (storage / "escape").symlink_to("/etc")
    wd = job.replace("/jobs/", "/storages/") + "-uspace"
    octet = {"Accept": "application/octet-stream"}
    assert (await http("GET", f"{wd}/files/stdout", headers=octet)).content == b"kept\n"
    assert "outside" in error_of(await http("GET", f"{wd}/files/escape/passwd",
                                            headers=octet), 400)
    assert "outside" in error_of(await http("PUT", f"{wd}/files/escape/planted", content=b"x",
                                            headers={"Content-Type": OCTET}), 400)
    assert not Path("/etc/planted").exists()


@pytest_twisted.ensureDeferred
async def test_large_files_are_streamed_both_ways(rest_site):
    """Uploads go from twisted.web's body file to the store in chunks; downloads over one
    chunk are streamed, so a file larger than the upload limit (8 MiB here) downloads whole,
    and Range still works."""
    site, http = rest_site
    job = await submit(http)
    wd = (await http("GET", job)).json()["_links"]["workingDirectory"]["href"]
    octet = {"Accept": "application/octet-stream"}
    upload = os.urandom(6 << 20)
    assert (await http("PUT", f"{wd}/files/up.bin", content=upload,
                       headers={"Content-Type": "application/octet-stream"})).status_code == 204
    pending = site.factory.jobs[job.rsplit("/", 1)[1]]
    assert (pending.inputs_dir / "up.bin").read_bytes() == upload
    got = await http("GET", f"{wd}/files/up.bin", headers=octet)
    assert got.status_code == 200 and got.headers["content-length"] == str(len(upload))
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(upload).digest()

    big = os.urandom(11 << 20)  # over max_upload_mib: written behind the site's back
    (pending.inputs_dir / "big.bin").write_bytes(big)
    got = await http("GET", f"{wd}/files/big.bin", headers=octet)
    assert got.status_code == 200 and got.content == big
    middle = await http("GET", f"{wd}/files/big.bin",
                        headers={**octet, "Range": f"bytes=1000-{(9 << 20) - 1}"})
    assert middle.status_code == 206 and middle.content == big[1000: 9 << 20]
    assert middle.headers["content-range"] == f"bytes 1000-{(9 << 20) - 1}/{len(big)}"
    head = await http("HEAD", f"{wd}/files/big.bin", headers=octet)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(big))
    assert head.content == b""
