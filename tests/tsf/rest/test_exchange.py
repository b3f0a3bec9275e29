"""The site's image exchange, in-process (real libvirt connection, real sockets): a
``[[subscriptions]]`` list signed by a throw-away CA and served on 127.0.0.1 is followed
(images in GET images, deprecations, the log); OAI-PMH at BASE/oai harvested with sickle;
the site's signed public image list and its files, subscribed to by a second catalogue."""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from datetime import UTC, datetime

import pytest
import pytest_twisted
from cryptography import x509
from sickle import Sickle
from twisted.internet import reactor, threads

from image_repo import imagelist, smime
from image_repo.repository import ImageRepository
from image_repo.subscriptions import Subscription, accept, load_state, sync
from target_system.transfers import TransferPolicy, fetch_url
from tests.conftest import TEST_ROOT
from tests.image_repo.examples import builder_document, write_files
from tests.image_repo.hepix import ThrowawayCA, image_entry, list_document, serve
from tests.tsf.rest.conftest import CREATOR, Http, site_config, write_users
from tsf.config import config_from_dict
from tsf.service import start_site


def publish(ca, root, base, images: dict[str, bytes]) -> None:
    entries = []
    for identifier, data in images.items():
        (root / f"{identifier}.qcow2").write_bytes(data)
        entries.append(image_entry(identifier, f"{base}{identifier}.qcow2", data))
    ca.sign(list_document(ca, entries), root / "list.smime")


@pytest.fixture(scope="module")
def exchange_env(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("exchange")
    ca = ThrowawayCA.make(scratch / "ca")
    www = scratch / "www"
    www.mkdir()
    with serve(www) as base:
        publish(ca, www, base, {"img-a": b"A" * 4096, "img-b": b"B" * 1024})
        yield ca, www, base


@pytest_twisted.async_yield_fixture(scope="module")
async def exchange_site(exchange_env):
    ca, _, base = exchange_env
    root = TEST_ROOT / f"exchange-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    config = site_config(root, transfers={"url_prefixes": [base]},
                         exchange={"oai_page_size": 5, "admin_email": "ops@example.org"})
    doc = config.to_dict()
    doc["subscriptions"] = [{"name": "demo-list", "url": f"{base}list.smime",
                             "anchors": str(ca.ca_pem), "vo": "demo",
                             "endorser_dn": ca.endorser_dn, "refresh_s": 3600}]
    site = await start_site(config_from_dict(doc), reactor)
    try:
        await threads.deferToThread(_register_local, site.repository, root)
        for _ in range(100):  # the first refresh runs at start
            state = await threads.deferToThread(load_state, site.repository, "demo-list")
            if state is not None:
                break
            await _sleep(0.1)
        yield site, Http(site.http_base)
    finally:
        await site.stopService()
        shutil.rmtree(root, ignore_errors=True)


def _sleep(seconds: float):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


def _register_local(repository, root) -> None:
    public = builder_document(b"pub-kernel", b"pub-initrd", name="local-public")
    public["general"]["purposes"] = ["teaching"]
    repository.register(public, write_files(root / "pub", {"vmlinuz": b"pub-kernel",
                                                           "initrd.img": b"pub-initrd"}),
                        CREATOR)
    private = builder_document(b"priv-kernel", b"priv-initrd", name="local-private")
    private["general"]["permissions"] = {"owner": "rw", "group": "", "others": ""}
    repository.register(private, write_files(root / "priv", {"vmlinuz": b"priv-kernel",
                                                             "initrd.img": b"priv-initrd"}),
                        CREATOR)


@pytest_twisted.ensureDeferred
async def test_a_subscription_registers_and_deprecates_as_its_list_changes(
        exchange_site, exchange_env, caplog):
    site, http = exchange_site
    ca, www, base = exchange_env
    state = await threads.deferToThread(load_state, site.repository, "demo-list")
    assert state.error is None and state.endorser == ca.endorser_dn
    answer = await http("GET", "images")
    mine = {i["ref"]: i for i in answer.json()["images"] if i["owner"] ==
            "subscription:demo-list"}
    assert set(mine) == {"demo-list.img-a:1", "demo-list.img-b:1"}  # alice is in VO demo
    publish(ca, www, base, {"img-a": b"A" * 4096})
    [spec] = site.subscriptions.specs
    with caplog.at_level(logging.INFO, logger="gridvm.subscriptions"):
        report = await site.subscriptions.refresh_now(spec)
    assert report.deprecated == ["demo-list.img-b:1"] and report.kept == ["demo-list.img-a:1"]
    assert "deprecated demo-list.img-b:1: no longer in the list" in caplog.text
    answer = await http("GET", "images")
    status = {i["ref"]: i["status"] for i in answer.json()["images"]}
    assert status["demo-list.img-b:1"] == "deprecated"
    (www / "list.smime").write_bytes(b"garbage")
    with pytest.raises(Exception, match="does not verify"):
        await site.subscriptions.refresh_now(spec)
    state = await threads.deferToThread(load_state, site.repository, "demo-list")
    assert "does not verify" in state.error


@pytest_twisted.ensureDeferred
async def test_oai_pmh_at_base_oai_with_sickle(exchange_site):
    site, http = exchange_site
    url = f"{site.http_base}/oai"

    def harvest(auth=None) -> list:
        harvester = Sickle(url, max_retries=0, timeout=30, auth=auth)
        return list(harvester.ListRecords(metadataPrefix="oai_dc"))

    anonymous = await threads.deferToThread(harvest)
    titles = {r.metadata["identifier"][1] for r in anonymous}
    assert titles == {"local-public:1"}  # not the private one, not the VO's
    alice = await threads.deferToThread(harvest, ("alice", "alice-secret"))
    assert {r.metadata["identifier"][1] for r in alice} >= {"local-public:1",
                                                            "demo-list.img-a:1"}
    answer = await http("GET", "oai", user=None, params={"verb": "Nonsense"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
    assert b'code="badVerb"' in answer.content
    answer = await http("GET", "oai", user=None, params={"verb": "Identify"})
    assert f"<baseURL>{url}</baseURL>".encode() in answer.content
    assert b"<adminEmail>ops@example.org</adminEmail>" in answer.content
    bad = await http("GET", "oai", user="alice", auth=("alice", "wrong"),
                     params={"verb": "Identify"})
    assert bad.status_code == 403


@pytest_twisted.ensureDeferred
async def test_the_public_image_list_is_signed_and_another_catalogue_subscribes(
        exchange_site, tmp_path):
    site, http = exchange_site
    answer = await http("GET", "imagelists/public", user=None)
    assert answer.status_code == 200
    signer = x509.load_pem_x509_certificate(
        (site.config.state_dir / "imagelist" / "signer.pem").read_bytes())
    now = datetime.now(UTC)
    signed = smime.verify(answer.content, [signer], now)
    listed = imagelist.parse(signed.content)
    assert [i.metadata["general"]["name"] for i in listed.images] == ["local-public"]
    kernel = next(f for f in listed.images[0].files if f.file == "vmlinuz")
    got = await http("GET", kernel.uri, user=None)
    assert got.content == b"pub-kernel"
    private = site.repository.get("local-private", CREATOR)
    hidden = await http("GET", f"imagelists/files/{private.id}/vmlinuz", user=None)
    assert hidden.status_code == 404 and hidden.json()["reason"] == "NOT_FOUND"
    chosen = await http("GET", "imagelists/selection", user="alice",
                        params={"image": ["local-public", "demo-list.img-a"]})
    assert chosen.status_code == 200
    names = [i.metadata["general"]["name"] for i in imagelist.parse(
        smime.verify(chosen.content, [signer], now).content).images]
    assert names == ["local-public", "demo-list.img-a"]
    missing = await http("GET", "imagelists/selection", params={"image": "no-such"})
    assert missing.status_code == 404
    empty = await http("GET", "imagelists/selection")
    assert empty.status_code == 400 and "image:" in empty.json()["errorMessage"]

    def subscribe() -> list[str]:
        other = ImageRepository(f"sqlite:///{tmp_path / 'other.sqlite'}", tmp_path / "store")
        try:
            policy = TransferPolicy((site.http_base,), 1 << 20, 30)
            subscription = Subscription("site-a", f"{site.http_base}/imagelists/public")
            image_list = accept(answer.content, subscription, [signer], now)
            report = sync(other, subscription, image_list,
                          lambda uri, path: fetch_url(uri, path, policy))
            return report.registered
        finally:
            other.close()

    assert await threads.deferToThread(subscribe) == ["site-a.local-public:1"]


def test_subscriptions_in_site_toml_are_checked():
    from tsf.config import ConfigError, config_from_dict

    good = {"transfers": {"url_prefixes": ["http://127.0.0.1:1/"]},
            "trust": {"anchors": "/etc/anchors.pem"},
            "subscriptions": [{"name": "a", "url": "http://127.0.0.1:1/l.smime"}]}
    assert config_from_dict(good).subscriptions[0].refresh_s == 3600
    for change, message in (
            ({"colour": "blue"}, "unknown key subscriptions[0].colour"),
            ({"url": "http://elsewhere/l"}, "is not under transfers.url_prefixes"),
            ({"name": "a b"}, "subscriptions[0].name must be"),
            ({"refresh_s": 1}, "at least 10 seconds")):
        bad = {**good, "subscriptions": [{**good["subscriptions"][0], **change}]}
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_from_dict(bad)
    with pytest.raises(ConfigError, match="a list must be verified"):
        config_from_dict({**good, "trust": {}})
    with pytest.raises(ConfigError, match="oai_page_size"):
        config_from_dict({"exchange": {"oai_page_size": 0}})



@pytest_twisted.ensureDeferred
async def test_past_the_lists_expiry_the_refresher_deletes_its_images(exchange_site, caplog):
    """(Runs last: it ends the subscription's images.)"""
    from datetime import timedelta

    from tsf.exchange import expire_due

    site, http = exchange_site
    state = await threads.deferToThread(load_state, site.repository, "demo-list")
    later = state.expires + timedelta(seconds=1)
    with caplog.at_level(logging.INFO, logger="gridvm.subscriptions"):
        await threads.deferToThread(expire_due, site.repository, site.subscriptions.specs,
                                    later)
    assert "deleted demo-list.img-a:1: the list has expired" in caplog.text
    answer = await http("GET", "images")
    assert not [i for i in answer.json()["images"] if i["owner"] == "subscription:demo-list"]
    match = await http("POST", "images/match",
                       json={"requirements": {"image": "demo-list.img-a"}})
    assert match.json()["candidates"] == []
