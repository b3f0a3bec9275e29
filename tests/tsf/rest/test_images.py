"""Creators' REST API against the in-process site (real sockets, a real catalogue and
store): registering in pieces, checksum mismatches, a disconnect mid-upload, idempotent
re-sends, bad keys named, quota and file limit, roles and permissions, new versions by merge
patch, one IDB application more or less, status, endorsements."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import socket
import tarfile
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest_twisted
from twisted.internet import reactor, task, threads

from base.identity import Caller
from image_repo.bundle import export_bundle
from image_repo.repository import ImageRepository
from image_repo.trust import ImageIdentity, create_endorsement
from tests.conftest import TEST_ROOT
from tests.image_repo.examples import builder_document
from tests.image_repo.pki import make
from tests.tsf.rest.conftest import PASSWORDS, Http, site_config, write_users
from tsf.service import start_site

MIB = 1 << 20


def _files(tag: str) -> dict[str, bytes]:
    return {"vmlinuz": f"kernel {tag} ".encode() * 1000,
            "initrd.img": f"initrd {tag} ".encode() * 3000}


def _document(name: str, files: dict[str, bytes]) -> dict:
    return builder_document(files["vmlinuz"], files["initrd.img"], name=name)


def _visible(site, name: str) -> list:
    return [r.ref for r in site.repository.list(_root(), name=name, include_deleted=True)]


def _root():
    return Caller.of("root", admin=True)


async def _register(http, name: str, files: dict[str, bytes], user: str = "carol") -> dict:
    started = await http("POST", "images", user=user, json=_document(name, files))
    assert started.status_code == 201, started.text
    upload = started.headers["location"]
    for file_name, data in files.items():
        sent = await http("PUT", f"{upload}/files/{file_name}", user=user, content=data)
        assert sent.status_code in (200, 201), sent.text
    assert sent.status_code == 201
    return sent.json()


@pytest_twisted.ensureDeferred
async def test_an_image_appears_only_when_every_file_verified(creators_site):
    site, http = creators_site
    files = _files("pieces")
    started = await http("POST", "images", user="carol", json=_document("pieces", files))
    assert started.status_code == 201, started.text
    upload = started.headers["location"]
    assert "/images/uploads/" in upload
    assert started.json()["status"] == "WAITING_FOR_FILES"
    assert sorted(started.json()["missing"]) == ["initrd.img", "vmlinuz"]
    first = await http("PUT", f"{upload}/files/vmlinuz", user="carol",
                       content=files["vmlinuz"])
    assert first.status_code == 200 and first.json()["missing"] == ["initrd.img"]
    assert (await http("GET", "images/pieces", user="carol")).status_code == 404
    assert _visible(site, "pieces") == []
    last = await http("PUT", f"{upload}/files/initrd.img", user="carol",
                      content=files["initrd.img"])
    assert last.status_code == 201, last.text
    assert last.json()["ref"] == "pieces:1"
    shown = await http("GET", last.headers["location"], user="carol")
    assert shown.status_code == 200 and shown.json()["name"] == "pieces"
    assert (await http("GET", upload, user="carol")).status_code == 404


@pytest_twisted.ensureDeferred
async def test_a_wrong_file_is_400_naming_it_and_the_registration_waits(creators_site):
    site, http = creators_site
    files = _files("mismatch")
    upload = (await http("POST", "images", user="carol",
                         json=_document("mismatch", files))).headers["location"]
    wrong = await http("PUT", f"{upload}/files/initrd.img", user="carol",
                       content=b"x" * len(files["initrd.img"]))
    assert wrong.status_code == 400
    body = wrong.json()
    assert body["reason"] == "IMAGE_CHECKSUM_MISMATCH"
    assert "origin.content[1]" in body["errorMessage"] and "initrd.img" in body["errorMessage"]
    short = await http("PUT", f"{upload}/files/initrd.img", user="carol", content=b"short")
    assert short.status_code == 400 and short.json()["reason"] == "IMAGE_CHECKSUM_MISMATCH"
    state = await http("GET", upload, user="carol")
    assert state.status_code == 200 and sorted(state.json()["missing"]) == [
        "initrd.img", "vmlinuz"]
    for name in ("initrd.img", "vmlinuz"):
        done = await http("PUT", f"{upload}/files/{name}", user="carol", content=files[name])
    assert done.status_code == 201 and _visible(site, "mismatch") == ["mismatch:1"]


def _disconnect_mid_upload(url: str, user: str, declared: int, sent: bytes) -> None:
    parts = urlsplit(url)
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(f"PUT {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                           f"Authorization: Basic {token}\r\nContent-Length: {declared}\r\n"
                           "Content-Type: application/octet-stream\r\n\r\n".encode() + sent)


@pytest_twisted.ensureDeferred
async def test_a_disconnect_mid_upload_leaves_nothing_visible(creators_site):
    site, http = creators_site
    files = _files("cut")
    started = await http("POST", "images", user="carol", json=_document("cut", files))
    upload, upload_id = started.headers["location"], started.json()["id"]
    await http("PUT", f"{upload}/files/vmlinuz", user="carol", content=files["vmlinuz"])
    data = files["initrd.img"]
    await threads.deferToThread(_disconnect_mid_upload, f"{upload}/files/initrd.img", "carol",
                                len(data), data[: len(data) // 2])
    await task.deferLater(reactor, 0.3, lambda: None)
    state = await http("GET", upload, user="carol")
    assert state.status_code == 200 and state.json()["missing"] == ["initrd.img"]
    assert _visible(site, "cut") == []
    [pending] = [p for p in site.app.uploads.pending() if p.id == upload_id]
    assert sorted(p.name for p in pending.directory.iterdir()) == ["vmlinuz"]
    cancelled = await http("DELETE", upload, user="carol")
    assert cancelled.status_code == 204 and not pending.directory.exists()
    assert (await http("GET", upload, user="carol")).status_code == 404


@pytest_twisted.ensureDeferred
async def test_sending_the_same_document_again_is_idempotent(creators_site):
    site, http = creators_site
    files = _files("again")
    pending = await http("POST", "images", user="carol", json=_document("again", files))
    resent = await http("POST", "images", user="carol", json=_document("again", files))
    assert resent.status_code == 200 and resent.headers["location"] == pending.headers[
        "location"]
    for name, data in files.items():
        await http("PUT", f"{pending.headers['location']}/files/{name}", user="carol",
                   content=data)
    image = await http("POST", "images", user="carol", json=_document("again", files))
    assert image.status_code == 200 and image.json()["ref"] == "again:1"
    assert _visible(site, "again") == ["again:1"]


@pytest_twisted.ensureDeferred
async def test_every_bad_document_is_400_naming_the_key(creators_site):
    _site, http = creators_site
    files = _files("bad")
    cases = {"general.colour": ("general", "colour", "blue"),
             "origin.content[0].size": ("origin.content.0", "size", "big"),
             "semantic.os.distro": ("semantic.os", "distro", "Debian!"),
             "idb.applications[1].executable": ("idb.applications.1", "executable", "bash")}
    for path, (where, key, value) in cases.items():
        doc = _document("bad", files)
        node = doc
        for part in where.split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        node[key] = value
        answer = await http("POST", "images", user="carol", json=doc)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["reason"] == "BAD_REQUEST"
        assert answer.json()["errorMessage"].startswith(f"{path}: "), answer.json()
    not_json = await http("POST", "images", user="carol", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "malformed JSON" in not_json.json()["errorMessage"]


@pytest_twisted.ensureDeferred
async def test_quota_and_file_limit_name_the_limit(creators_site):
    _site, http = creators_site
    doc = _document("huge", _files("huge"))
    doc["origin"]["content"][1].update(sha512="ab" * 64, size=4 * MIB)
    over = await http("POST", "images", user="dave", json=doc)
    assert over.status_code == 413
    assert over.json()["reason"] == "QUOTA_EXCEEDED"
    assert "limits.image_quota_mib" in over.json()["errorMessage"]
    big = b"b" * (2 * MIB + 10)
    doc["origin"]["content"][1].update(sha512=hashlib.sha512(big).hexdigest(), size=len(big))
    upload = (await http("POST", "images", user="dave", json=doc)).headers["location"]
    refused = await http("PUT", f"{upload}/files/initrd.img", user="dave", content=big)
    assert refused.status_code == 413 and "limits.image_file_mib" in refused.json()[
        "errorMessage"]
    assert (await http("DELETE", upload, user="dave")).status_code == 204
    # an image file may be larger than other uploads (limits.max_upload_mib = 1)
    files = {"vmlinuz": b"k" * 100, "initrd.img": b"i" * (MIB + MIB // 2)}
    image = await _register(http, "roomy", files, user="dave")
    assert image["ref"] == "roomy:1"


@pytest_twisted.ensureDeferred
async def test_only_creators_and_admins_may_write_and_only_within_permissions(creators_site):
    _site, http = creators_site
    files = _files("guarded")
    user = await http("POST", "images", user="alice", json=_document("guarded", files))
    assert user.status_code == 403 and "creator role" in user.json()["errorMessage"]
    assert (await http("POST", "images", user=None, json={})).status_code == 401
    image = await _register(http, "guarded", files)
    merge = {"content-type": "application/merge-patch+json"}
    # dave is in carol's group: he may read (group r) but not write the image
    assert (await http("GET", f"images/{image['id']}", user="dave")).status_code == 200
    for method, path, body in (("PATCH", "images/guarded", {"general": {"title": "x"}}),
                               ("POST", "images/guarded/actions/deprecate", {}),
                               ("DELETE", "images/guarded", None)):
        answer = await http(method, path, user="dave", headers=merge,
                            content=json.dumps(body).encode() if body is not None else None)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["reason"] == "NOT_AUTHORIZED"
    taken = await http("POST", "images", user="dave", json=_document("guarded", files))
    assert taken.status_code == 403 and taken.json()["errorMessage"].startswith("general.name")
    answer = await http("PATCH", "images/guarded", user="root", headers=merge,
                        content=b'{"general": {"title": "by root"}}')
    assert answer.status_code == 201 and answer.json()["owner"] == "carol"


@pytest_twisted.ensureDeferred
async def test_new_versions_applications_status_and_endorsements(creators_site):
    _site, http = creators_site
    first = await _register(http, "lineage", _files("lineage"))
    merge = {"content-type": "application/merge-patch+json"}
    patch = json.dumps({"general": {"title": "second"}}).encode()
    preview = await http("PATCH", "images/lineage?dryRun=true", user="carol", headers=merge,
                         content=patch)
    assert preview.status_code == 200 and preview.json()["dryRun"] is True
    assert preview.json()["metadata"]["general"]["title"] == "second"
    assert preview.json()["predecessor"]["ref"] == "lineage:1"
    wrong_type = await http("PATCH", "images/lineage", user="carol", content=patch,
                            headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    second = await http("PATCH", "images/lineage", user="carol", headers=merge, content=patch)
    assert second.status_code == 201 and second.json()["ref"] == "lineage:2"
    assert second.json()["metadata"]["general"]["base_image"] == first["id"]
    again = await http("PATCH", "images/lineage", user="carol", headers=merge, content=patch)
    assert again.status_code == 200 and again.json()["ref"] == "lineage:2"

    added = await http("POST", "images/lineage/applications", user="carol",
                       json={"name": "R", "version": "4.3", "executable": "/usr/bin/R"})
    assert added.status_code == 201, added.text
    apps = [a["name"] for a in added.json()["metadata"]["idb"]["applications"]]
    assert added.json()["ref"] == "lineage:3" and apps == ["python3", "bash", "sh", "R"]
    bad_app = await http("POST", "images/lineage/applications", user="carol",
                         json={"name": "perl", "executable": "perl"})
    assert bad_app.status_code == 400
    assert bad_app.json()["errorMessage"].startswith("idb.applications[4].executable")
    removed = await http("DELETE", "images/lineage/applications/bash/5.2.15", user="carol")
    assert removed.status_code == 200, removed.text
    apps = [a["name"] for a in removed.json()["metadata"]["idb"]["applications"]]
    assert removed.json()["ref"] == "lineage:4" and apps == ["python3", "sh", "R"]
    missing = await http("DELETE", "images/lineage/applications/bash", user="carol")
    assert missing.status_code == 400 and "no application bash" in missing.json()[
        "errorMessage"]

    deprecated = await http("POST", "images/lineage:1/actions/deprecate", user="carol", json={})
    assert deprecated.status_code == 200 and deprecated.json()["status"] == "deprecated"
    unknown = await http("POST", "images/lineage:1/actions/polish", user="carol", json={})
    assert unknown.status_code == 404

    latest = removed.json()
    endorser = make("Creators Test Team", "ec")
    identity = ImageIdentity(latest["id"], latest["name"], latest["version"],
                             {r["file"]: r["sha512"]
                              for r in latest["metadata"]["origin"]["content"]})
    endorsement = create_endorsement(identity, endorser.cert_pem, endorser.key_pem(),
                                     expires=datetime.now(UTC) + timedelta(days=3))
    attached = await http("POST", f"images/{latest['id']}/endorsements", user="carol",
                          json=endorsement.to_dict())
    assert attached.status_code == 201, attached.text
    assert attached.json()["endorser"] == endorser.dn
    shown = await http("GET", f"images/{latest['id']}", user="carol")
    assert [e["endorser"] for e in shown.json()["endorsements"]] == [endorser.dn]
    wrong = await http("POST", "images/lineage:1/endorsements", user="carol",
                       json=endorsement.to_dict())
    assert wrong.status_code == 400 and wrong.json()["reason"] == "IMAGE_UNTRUSTED"
    fingerprint = attached.headers["location"].rsplit("/", 1)[1]
    withdrawn = await http("DELETE", f"images/{latest['id']}/endorsements/{fingerprint}",
                           user="carol")
    assert withdrawn.status_code == 204
    deleted = await http("DELETE", "images/lineage:1", user="carol")
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    gone = await http("DELETE", "images/lineage:1", user="carol")
    assert gone.status_code == 400 and "already deleted" in gone.json()["errorMessage"]


@pytest_twisted.ensureDeferred
async def test_bundles_export_and_import_over_rest(creators_site, tmp_path):
    _site, http = creators_site
    image = await _register(http, "bundled", _files("bundled"))
    exported = await http("GET", f"images/{image['id']}/bundle", user="dave")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(exported.content)) as archive:
        names = archive.getnames()
    assert "gridvm-bundle.json" in names and len(names) == 3
    again = await http("POST", "images/bundles", user="carol", content=exported.content)
    assert again.status_code == 200 and again.json()["skipped"] == [image["id"]]

    elsewhere = ImageRepository(f"sqlite:///{tmp_path / 'other.sqlite'}", tmp_path / "store")
    files = _files("travelled")
    paths = {name: tmp_path / name for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    record = elsewhere.register(_document("travelled", files), paths, Caller.of("carol"))
    export_bundle(elsewhere, record.id, Caller.of("carol"), tmp_path / "b.tar")
    elsewhere.close()
    data = (tmp_path / "b.tar").read_bytes()
    refused = await http("POST", "images/bundles", user="alice", content=data)
    assert refused.status_code == 403
    damaged = await http("POST", "images/bundles", user="carol", content=data[:1000])
    assert damaged.status_code == 400, damaged.text
    imported = await http("POST", "images/bundles", user="carol", content=data)
    assert imported.status_code == 201, imported.text
    assert [i["id"] for i in imported.json()["imported"]] == [record.id]
    assert (await http("GET", f"images/{record.id}", user="carol")).status_code == 200


@pytest_twisted.ensureDeferred
async def test_a_layer_uploads_in_pieces_and_its_base_cannot_be_deleted_before_it(
        creators_site, tmp_path):
    from tests.image_repo.test_layers import disk_document, qemu_img

    _site, http = creators_site
    base, layer = tmp_path / "base.qcow2", tmp_path / "layer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(layer))
    for name, disk, backing in (("rest-base", base, None), ("rest-layer", layer, "rest-base")):
        started = await http("POST", "images", user="carol",
                             json=disk_document(name, disk, backing=backing))
        assert started.status_code == 201, started.text
        sent = await http("PUT", f"{started.headers['location']}/files/{disk.name}",
                          user="carol", content=disk.read_bytes())
        assert sent.status_code == 201, sent.text
    assert sent.json()["metadata"]["origin"]["backing_image"] is not None
    refused = await http("DELETE", "images/rest-base", user="carol")
    assert refused.status_code == 409, refused.text
    assert refused.json()["reason"] == "IMAGE_IN_USE"
    assert "rest-layer:1" in refused.json()["errorMessage"]
    assert (await http("DELETE", "images/rest-layer", user="carol")).status_code == 200
    assert (await http("DELETE", "images/rest-base", user="carol")).status_code == 200


@pytest_twisted.ensureDeferred
async def test_a_registration_waiting_for_files_survives_a_server_restart():
    root = TEST_ROOT / f"rest-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    config = site_config(root)
    files = _files("across-restart")
    first = await start_site(config, reactor)
    try:
        http = Http(first.http_base)
        started = await http("POST", "images", user="carol",
                             json=_document("across-restart", files))
        assert started.status_code == 201, started.text
        upload = urlsplit(started.headers["location"]).path.split("/rest/core/", 1)[1]
        sent = await http("PUT", f"{upload}/files/vmlinuz", user="carol",
                          content=files["vmlinuz"])
        assert sent.status_code == 200 and sent.json()["missing"] == ["initrd.img"]
    finally:
        await first.stopService()
    second = await start_site(config, reactor)  # the same state: the same database and store
    try:
        http = Http(second.http_base)
        waiting = await http("GET", upload, user="carol")
        assert waiting.status_code == 200, waiting.text
        assert waiting.json()["missing"] == ["initrd.img"]
        assert (await http("GET", upload, user="dave")).status_code == 404
        last = await http("PUT", f"{upload}/files/initrd.img", user="carol",
                          content=files["initrd.img"])
        assert last.status_code == 201, last.text
        assert last.json()["ref"] == "across-restart:1"
        assert (await http("GET", "images/across-restart", user="carol")).status_code == 200
    finally:
        await second.stopService()
        shutil.rmtree(root, ignore_errors=True)
