"""HEPiX image-list subscriptions: a list signed by a throw-away CA (openssl), served from
127.0.0.1, verified, synced into a real catalogue; and gridvm's own signed export."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from image_repo import imagelist, smime
from image_repo.errors import BadRequest, ImageUntrusted
from image_repo.subscriptions import (
    Subscription,
    accept,
    expire,
    load_state,
    save_state,
    sync,
)
from target_system.transfers import TransferPolicy, fetch_url
from tests.image_repo.conftest import ADMIN, ALICE, BOB
from tests.image_repo.hepix import ThrowawayCA, image_entry, list_document, serve


def now() -> datetime:
    """Now (the CA is made after collection: a time taken at import would precede it)."""
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> ThrowawayCA:
    return ThrowawayCA.make(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def site(tmp_path):
    """A directory served over HTTP on 127.0.0.1 and a fetch bounded by a transfer policy."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as base:
        policy = TransferPolicy((base,), 1 << 20, 30)
        yield root, base, (lambda url, path: fetch_url(url, path, policy))


def anchors(ca: ThrowawayCA) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(ca.ca_pem.read_bytes())


def publish(ca, root: Path, base: str, images: dict[str, bytes], **options) -> bytes:
    """Write the image files and a signed list of them; the signed message."""
    entries = []
    for identifier, data in images.items():
        (root / f"{identifier}.qcow2").write_bytes(data)
        version = options.pop(f"version_{identifier.replace('-', '_')}", "1")
        entries.append(image_entry(identifier, f"{base}{identifier}.qcow2", data, version))
    signer = options.pop("signer", "endorser")
    return ca.sign(list_document(ca, entries, **options), root / "list.smime",
                   signer).read_bytes()


ATLAS = Subscription("atlas-list", "http://127.0.0.1/list.smime", vo="atlas",
                     endorser_dn="/C=DE/O=Test Grid/CN=Image Endorser")


def test_a_signed_list_is_verified_downloaded_and_registered_for_its_vo(repo, ca, site):
    root, base, fetch = site
    message = publish(ca, root, base, {"img-a": b"A" * 1000, "img-b": b"B" * 2000})
    image_list = accept(message, ATLAS, anchors(ca), now())
    assert image_list.endorser.dn == ca.endorser_dn and len(image_list.images) == 2
    lines: list[str] = []
    report = sync(repo, ATLAS, image_list, fetch, lines.append)
    assert sorted(report.registered) == ["atlas-list.img-a:1", "atlas-list.img-b:1"]
    assert not report.failed
    [record] = repo.list(ALICE, name="atlas-list.img-a")  # ALICE is in VO atlas
    assert record.owner == "subscription:atlas-list"
    assert record.metadata.semantic.vos == ["atlas"]
    assert record.metadata.origin.content_type == "qcow2"
    assert repo.store.path(record.metadata.origin.content[0].sha512).read_bytes() == b"A" * 1000
    assert repo.list(BOB, name="atlas-list.img-a") == []  # BOB is in cms only
    assert any("registered atlas-list.img-a:1" in line for line in lines)
    again = sync(repo, ATLAS, image_list, fetch)
    assert sorted(again.kept) == ["atlas-list.img-a:1", "atlas-list.img-b:1"]
    assert not again.registered


def test_changed_images_become_versions_and_images_that_left_are_deprecated(repo, ca, site):
    root, base, fetch = site
    first = publish(ca, root, base, {"img-a": b"A1", "img-b": b"B1"})
    sync(repo, ATLAS, accept(first, ATLAS, anchors(ca), now()), fetch)
    second = publish(ca, root, base, {"img-a": b"A2"}, version_img_a="2")
    report = sync(repo, ATLAS, accept(second, ATLAS, anchors(ca), now()), fetch)
    assert report.registered == ["atlas-list.img-a:2"]
    assert sorted(report.deprecated) == ["atlas-list.img-a:1", "atlas-list.img-b:1"]
    status = {r.ref: r.status for r in repo.list(ADMIN)}
    assert status == {"atlas-list.img-a:1": "deprecated", "atlas-list.img-a:2": "active",
                      "atlas-list.img-b:1": "deprecated"}
    assert repo.get("atlas-list.img-a:2", ADMIN).base_id == repo.get("atlas-list.img-a:1",
                                                                     ADMIN).id
    third = publish(ca, root, base, {"img-a": b"A2", "img-b": b"B1"})
    report = sync(repo, ATLAS, accept(third, ATLAS, anchors(ca), now()), fetch)
    assert report.reactivated == ["atlas-list.img-b:1"]


def test_a_wrong_checksum_or_size_fails_that_image_only(repo, ca, site):
    root, base, fetch = site
    message = publish(ca, root, base, {"good": b"G" * 10, "bad": b"original"})
    (root / "bad.qcow2").write_bytes(b"tampered")  # same size, other bytes
    report = sync(repo, ATLAS, accept(message, ATLAS, anchors(ca), now()), fetch)
    assert report.registered == ["atlas-list.good:1"]
    [(identifier, why)] = report.failed
    assert identifier == "bad" and "sha512" in why
    (root / "bad.qcow2").write_bytes(b"longer than listed")
    report = sync(repo, ATLAS, accept(message, ATLAS, anchors(ca), now()), fetch)
    assert "bytes, the list says 8" in report.failed[0][1]
    assert [r.name for r in repo.list(ADMIN)] == ["atlas-list.good"]


def test_signature_signer_endorser_and_expiry_are_checked(ca, site):
    root, base, _ = site
    good = publish(ca, root, base, {"x": b"x"})
    tampered = good.replace(b'"dc:title": "test list"', b'"dc:title": "evil list"')
    with pytest.raises(ImageUntrusted, match="does not verify: digest failure"):
        accept(tampered, ATLAS, anchors(ca), now())
    stranger = publish(ca, root, base, {"x": b"x"}, signer="stranger")
    with pytest.raises(ImageUntrusted, match="does not verify: self-signed certificate"):
        accept(stranger, ATLAS, anchors(ca), now())
    with pytest.raises(ImageUntrusted, match="certificate has expired"):
        accept(good, ATLAS, anchors(ca), now() + timedelta(days=5))
    other = Subscription("s", "u", endorser_dn="/C=DE/O=Test Grid/CN=Someone Else")
    with pytest.raises(ImageUntrusted, match="not by /C=DE/O=Test Grid/CN=Someone Else"):
        accept(good, other, anchors(ca), now())
    claims = publish(ca, root, base, {"x": b"x"}, endorser_dn="/O=Other/CN=Ghost")
    with pytest.raises(ImageUntrusted, match="names its endorser /O=Other/CN=Ghost"):
        accept(claims, ATLAS, anchors(ca), now())
    expired = publish(ca, root, base, {"x": b"x"}, expires=now() - timedelta(hours=1))
    with pytest.raises(ImageUntrusted, match="the list expired"):
        accept(expired, ATLAS, anchors(ca), now())
    with pytest.raises(ImageUntrusted, match="does not verify"):
        accept(b"not a message at all", ATLAS, anchors(ca), now())


def test_a_malformed_list_names_the_key(ca, tmp_path):
    def signed(doc) -> bytes:
        return ca.sign(json.dumps(doc).encode(), tmp_path / "l.smime").read_bytes()

    body = json.loads(list_document(ca, [image_entry("x", "http://h/x", b"x")]))
    body["hv:imagelist"]["hv:images"][0]["hv:image"]["sl:checksum:sha512"] = "abc"
    with pytest.raises(BadRequest, match=r"hv:images\[0\].hv:image.sl:checksum:sha512"):
        accept(signed(body), ATLAS, anchors(ca), now())
    body["hv:imagelist"]["hv:images"] = []
    del body["hv:imagelist"]["dc:date:expires"]
    with pytest.raises(BadRequest, match=r"hv:imagelist\.dc:date:expires"):
        accept(signed(body), ATLAS, anchors(ca), now())
    with pytest.raises(BadRequest, match="imagelist: is not JSON"):
        accept(ca.sign(b"{oops", tmp_path / "j.smime").read_bytes(), ATLAS, anchors(ca), now())
    many = json.loads(list_document(ca, [image_entry("x", "http://h/x", b"x")] *
                                    (imagelist.MAX_IMAGES + 1)))
    with pytest.raises(BadRequest, match="at most 5000"):
        accept(signed(many), ATLAS, anchors(ca), now())


def test_past_the_lists_expiry_its_images_are_deleted_and_not_matched(repo, ca, site):
    root, base, fetch = site
    message = publish(ca, root, base, {"img-a": b"A"})
    image_list = accept(message, ATLAS, anchors(ca), now())
    sync(repo, ATLAS, image_list, fetch)
    save_state(repo, ATLAS, now(), image_list=image_list)
    state = load_state(repo, "atlas-list")
    assert state.expires == image_list.expires and state.error is None
    assert [c.ref for c in repo.match({"image": "atlas-list.img-a"}, ALICE).candidates] == [
        "atlas-list.img-a:1"]
    assert expire(repo, ATLAS) == ["atlas-list.img-a:1"]
    assert repo.match({}, ALICE).candidates == []
    assert repo.list(ADMIN, include_deleted=True)[0].status == "deleted"
    save_state(repo, ATLAS, now(), error="the list expired")
    assert load_state(repo, "atlas-list").error == "the list expired"


def test_gridvm_exports_a_signed_list_another_site_subscribes_to(repo, ca, site, tmp_path,
                                                                 database_url):
    """A multi-file gridvm image, listed and signed with the `cryptography` builder, synced
    by a second repository keeps its metadata (kernel + initrd, applications)."""
    from image_repo.repository import ImageRepository

    from .examples import builder_document, write_files

    root, base, fetch = site
    doc = builder_document()
    files = write_files(tmp_path / "built", {"vmlinuz": b"kernel-bytes",
                                             "initrd.img": b"initrd-bytes"})
    record = repo.register(doc, files, ALICE)
    for path in files:
        (root / path.name).write_bytes(path.read_bytes())
    endorser = x509.load_pem_x509_certificate((ca.directory / "endorser.pem").read_bytes())
    key = load_pem_private_key((ca.directory / "endorser.key").read_bytes(), None)
    exported = imagelist.build(
        [record], imagelist.Endorser(smime.slash_dn(endorser.subject),
                                     smime.slash_dn(endorser.issuer)),
        identifier="site-a-public", created=now(), expires=now() + timedelta(days=1),
        url_of=lambda r, name: f"{base}{name}")
    message = smime.sign(exported.to_json(), endorser, key)
    other = ImageRepository(database_url.replace("catalogue.sqlite", "other.sqlite")
                            if "sqlite" in database_url else database_url,
                            tmp_path / "other-store")
    try:
        subscription = Subscription("site-a", "u")
        report = sync(other, subscription, accept(message, subscription, anchors(ca), now()),
                      fetch)
        assert report.registered == [f"site-a.{record.name}:1"], report.failed
        copy = other.get(f"site-a.{record.name}", ADMIN)
        assert copy.metadata.origin.content == record.metadata.origin.content
        assert copy.metadata.idb == record.metadata.idb
        assert copy.metadata.general.title == record.metadata.general.title
    finally:
        other.close()
