"""Endorsements and the site's trust policy: real keys and certificates (RSA, ECDSA, Ed25519),
the catalogue on SQLite and PostgreSQL, matching with and without a requiring policy, the
migration that adds the table."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text, update

import target_system.models  # noqa: F401 (every package's tables, for the comparison)
import tsf.models  # noqa: F401
from base.db import Base, alembic_config, current_revision, head_revision, make_engine, migrate
from image_repo.errors import (
    BadRequest,
    ImageNotFound,
    ImageUnavailable,
    NotAuthorized,
    RepositoryError,
)
from image_repo.models import ImageEndorsementRow
from image_repo.repository import ImageRepository
from image_repo.trust import (
    Endorsement,
    ImageIdentity,
    Statement,
    TrustPolicy,
    check_endorsement,
    create_endorsement,
    utc_iso,
)

from .conftest import ADMIN, ALICE, BOB, CAROL
from .examples import builder_document, write_files
from .pki import DAY, NOW, Party, make

SECOND = dt.timedelta(seconds=1)


@pytest.fixture
def files(tmp_path):
    return write_files(tmp_path / "build", {"vmlinuz": b"kernel-bytes",
                                            "initrd.img": b"initrd-bytes"})


@pytest.fixture
def image(repo, files):
    """A registered image, owner alice, readable by everybody."""
    return repo.register(builder_document(), files, ALICE)


def endorsement(party: Party, record, days: float = 30, **options) -> Endorsement:
    identity = record if isinstance(record, ImageIdentity) else record.identity
    return create_endorsement(identity, party.cert_pem, party.key_pem(),
                              expires=options.pop("expires", NOW + days * DAY), **options)


def policy(*anchors: Party, require: bool = True, at: dt.datetime = NOW) -> TrustPolicy:
    return TrustPolicy([a.cert for a in anchors], require=require, clock=lambda: at)


def names(items) -> list[str]:
    return sorted(item.name for item in items)


def reason_of(result, name):
    [rejection] = [r for r in result.rejected if r.name == name]
    [reason] = [r for r in rejection.reasons if r.code == "IMAGE_UNTRUSTED"]
    return reason


# --------------------------------------------------------------------------- endorse ---------

@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_endorse_and_verify(repo, image, pki, kind):
    party = pki.endorsers[kind]
    before = repo.change_number()
    # bob may only read the image: trust comes from the key, not from who attaches it
    stored = repo.endorse(image.ref, endorsement(party, image).to_dict(), BOB)
    assert repo.change_number() == before + 1
    assert (stored.endorser, stored.fingerprint, stored.attached_by) == (
        f"CN=Image Team {kind},O=Grid", party.fingerprint, "bob")
    assert stored.expires == NOW + 30 * DAY

    record = repo.get(image.id, ALICE)
    assert [e.fingerprint for e in record.endorsements] == [party.fingerprint]
    shown = record.to_dict()
    assert shown["endorsements"][0]["endorser"] == party.dn
    assert shown["endorsements"][0]["expires"] == utc_iso(NOW + 30 * DAY)
    # versions stay immutable: the metadata document and the version did not change
    assert record.metadata.to_dict() == image.metadata.to_dict()
    assert record.version == image.version
    assert shown["general"]["updated"] == image.to_dict()["general"]["updated"]

    verdict = repo.assess(image.ref, ALICE, policy(pki.ca))
    assert verdict.trusted and verdict.endorsers == (party.dn,)
    assert verdict.message == f"endorsed by {party.dn} until {utc_iso(NOW + 30 * DAY)}"
    assert verdict.to_dict()["reasons"][0]["code"] == "ENDORSED"
    # what is stored is all a verifier needs: statement, signature, certificate
    again = Endorsement.from_dict({k: shown["endorsements"][0][k]
                                   for k in ("statement", "signature", "certificate")})
    assert check_endorsement(again, record.identity, NOW).fingerprint == party.fingerprint


def test_the_statement_is_compact_sorted_ascii_json():
    statement = Statement("0123456789abcdef0123456789abcdef", "deb", 2,
                          {"vmlinuz": "a" * 128, "initrd.img": "b" * 128}, "CN=Zoë,O=Grid",
                          dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC),
                          dt.datetime(2027, 1, 31, tzinfo=dt.UTC))
    expected = (
        '{"endorser":"CN=Zo\\u00eb,O=Grid","expires":"2027-01-31T00:00:00Z",'
        f'"files":{{"initrd.img":"{"b" * 128}","vmlinuz":"{"a" * 128}"}},'
        '"image":"0123456789abcdef0123456789abcdef","name":"deb",'
        '"signed":"2026-01-31T12:00:00Z","statement":"gridvm-image-endorsement/1","version":2}')
    assert statement.to_bytes() == expected.encode("ascii")
    assert Statement.parse(statement.to_bytes()) == statement
    pretty = json.dumps(json.loads(statement.to_bytes()), indent=1).encode()
    with pytest.raises(BadRequest, match="canonical form"):
        Statement.parse(pretty)


def _resigned(pki, image, **claims) -> dict:
    """An endorsement whose statement was changed after signing (the signature is kept)."""
    good = endorsement(pki.endorsers["ec"], image)
    doc = json.loads(good.statement) | claims
    changed = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return Endorsement(changed, good.signature, good.certificate).to_dict()


def _flipped_signature(pki, image) -> dict:
    good = endorsement(pki.endorsers["rsa"], image)
    signature = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    return Endorsement(good.statement, signature, good.certificate).to_dict()


def _other_files(pki, image) -> dict:
    identity = image.identity
    files = dict(identity.files) | {"initrd.img": "0" * 128}
    return endorsement(pki.endorsers["ed25519"], ImageIdentity(
        identity.id, identity.name, identity.version, files)).to_dict()


def _other_image(pki, image) -> dict:
    identity = image.identity
    return endorsement(pki.endorsers["ec"], ImageIdentity(
        "f" * 32, identity.name, identity.version, identity.files)).to_dict()


def _named_endorser(pki, image) -> dict:
    """Signed by the EC endorser, but the statement names the RSA endorser."""
    from image_repo.trust import _sign

    statement = Statement(image.id, image.name, image.version, image.identity.files,
                          pki.endorsers["rsa"].dn, NOW, NOW + DAY).to_bytes()
    party = pki.endorsers["ec"]
    return Endorsement(statement, _sign(party.key, statement), party.cert_pem).to_dict()


REJECTED = [
    ("tampered signature", _flipped_signature, "IMAGE_UNTRUSTED", "does not verify"),
    ("statement changed after signing",
     lambda pki, image: _resigned(pki, image, expires=utc_iso(NOW + 900 * DAY)),
     "IMAGE_UNTRUSTED", "does not verify"),
    ("other files", _other_files, "IMAGE_UNTRUSTED",
     "covers other files than gridvm-debian12-initramfs:1 (differing: initrd.img)"),
    ("other image", _other_image, "IMAGE_UNTRUSTED", "is about image gridvm-debian12"),
    ("expired", lambda pki, image: endorsement(
        pki.endorsers["ec"], image, signed=NOW - 60 * DAY, expires=NOW - DAY).to_dict(),
     "IMAGE_UNTRUSTED", f"expired on {utc_iso(NOW - DAY)}"),
    ("expired certificate", lambda pki, image: endorsement(pki.expired, image).to_dict(),
     "IMAGE_UNTRUSTED", "the certificate of CN=Old Team,O=Grid expired on"),
    ("not a certificate", lambda pki, image: endorsement(pki.endorsers["ec"], image).to_dict()
     | {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
     "BAD_REQUEST", "endorsement.certificate: is not a PEM certificate"),
    ("statement not JSON", lambda pki, image: endorsement(pki.endorsers["ec"], image).to_dict()
     | {"statement": "{not json"}, "BAD_REQUEST", "endorsement.statement: is not JSON"),
    ("statement not canonical", lambda pki, image: _resigned(pki, image) | {
        "statement": json.dumps(json.loads(_resigned(pki, image)["statement"]), indent=2)},
     "BAD_REQUEST", "canonical form"),
    ("impossible date", lambda pki, image: _resigned(pki, image, expires="2027-02-30T00:00:00Z"),
     "BAD_REQUEST", "endorsement.statement.expires: expected a UTC time like"),
    ("unknown statement kind", lambda pki, image: _resigned(pki, image, statement="other/9"),
     "BAD_REQUEST", "expected 'gridvm-image-endorsement/1'"),
    ("endorser is not the certificate's subject", _named_endorser, "BAD_REQUEST",
     "names the endorser 'CN=Image Team rsa,O=Grid', but the certificate is"),
    ("signature not base64", lambda pki, image: endorsement(pki.endorsers["ec"], image)
     .to_dict() | {"signature": "not base64!"}, "BAD_REQUEST", "is not base64"),
    ("a key missing", lambda pki, image: {"statement": "{}", "signature": ""},
     "BAD_REQUEST", "expected an object with statement, signature and certificate"),
]


@pytest.mark.parametrize(("case", "make_doc", "reason", "words"), REJECTED,
                         ids=[c[0] for c in REJECTED])
def test_bad_endorsements_are_rejected_and_nothing_is_stored(repo, image, pki, case,
                                                             make_doc, reason, words):
    doc = make_doc(pki, image)
    before = repo.change_number()
    with pytest.raises(RepositoryError) as info:
        repo.endorse(image.ref, doc, ALICE)
    assert info.value.reason == reason
    assert words in str(info.value)
    assert repo.get(image.id, ALICE).endorsements == []
    assert repo.change_number() == before


def test_a_new_endorsement_by_the_same_certificate_replaces_the_old(repo, image, pki):
    ec, rsa_ = pki.endorsers["ec"], pki.endorsers["rsa"]
    repo.endorse(image.ref, endorsement(ec, image, days=30).to_dict(), ALICE)
    repo.endorse(image.ref, endorsement(ec, image, days=60).to_dict(), BOB)
    [only] = repo.get(image.id, ALICE).endorsements
    assert (only.expires, only.attached_by) == (NOW + 60 * DAY, "bob")
    repo.endorse(image.ref, endorsement(rsa_, image).to_dict(), ALICE)
    assert sorted(e.fingerprint for e in repo.get(image.id, ALICE).endorsements) == sorted(
        [ec.fingerprint, rsa_.fingerprint])


def test_deleted_and_invisible_images_cannot_be_endorsed(repo, image, files, pki):
    private = repo.register(builder_document(name="private") | {
        "general": builder_document()["general"] | {
            "name": "private", "permissions": {"owner": "rw", "group": "", "others": ""}}},
        files, ALICE)
    with pytest.raises(ImageNotFound):
        repo.endorse(private.ref, endorsement(pki.endorsers["ec"], private).to_dict(), CAROL)
    repo.delete(image.ref, ALICE)
    with pytest.raises(ImageUnavailable, match="is deleted"):
        repo.endorse(image.ref, endorsement(pki.endorsers["ec"], image).to_dict(), ALICE)


# --------------------------------------------------------------------------- policy ----------

def test_an_anchor_is_a_ca_or_the_endorser_certificate_itself(repo, image, pki):
    ec = pki.endorsers["ec"]
    repo.endorse(image.ref, endorsement(ec, image).to_dict(), ALICE)
    assert repo.assess(image.ref, ALICE, policy(pki.ca)).trusted  # issued by an anchor CA
    assert repo.assess(image.ref, ALICE, policy(ec)).trusted  # the endorser itself
    for anchors in ([], [pki.stranger], [pki.endorsers["rsa"]]):
        verdict = repo.assess(image.ref, ALICE, policy(*anchors))
        assert not verdict.trusted
        assert verdict.message == f"endorsed by {ec.dn}, whom this site does not trust"
        assert [f.code for f in verdict.findings] == ["UNTRUSTED_ENDORSER"]


def test_a_name_alone_or_a_leaf_anchor_does_not_issue_trust(repo, image, pki):
    # the impostor's issuer has the CA's name, but not its key
    assert pki.impostor.cert.issuer == pki.ca.cert.subject
    repo.endorse(image.ref, endorsement(pki.impostor, image).to_dict(), ALICE)
    # a certificate issued by the EC endorser, which is trusted but is no CA
    repo.endorse(image.ref, endorsement(pki.leaf_issued, image).to_dict(), ALICE)
    verdict = repo.assess(image.ref, ALICE, policy(pki.ca, pki.endorsers["ec"]))
    assert not verdict.trusted
    assert sorted(f.message for f in verdict.findings) == sorted([
        "endorsed by CN=Impostor,O=Grid, whom this site does not trust",
        "endorsed by CN=Sub Team,O=Grid, whom this site does not trust"])


def test_trust_follows_the_policy_clock(repo, image, pki):
    ec = pki.endorsers["ec"]
    expires = NOW + 30 * DAY
    repo.endorse(image.ref, endorsement(ec, image, expires=expires).to_dict(), ALICE)

    def at(moment):
        return repo.assess(image.ref, ALICE, policy(pki.ca, at=moment))

    assert at(expires - SECOND).trusted
    late = at(expires)
    assert not late.trusted
    assert late.message == f"endorsement by {ec.dn} expired on {utc_iso(expires)}"
    assert late.to_dict()["reasons"][0] | {"message": None} == {
        "code": "EXPIRED", "message": None, "endorser": ec.dn, "fingerprint": ec.fingerprint,
        "at": utc_iso(expires)}
    gone = ec.cert.not_valid_after_utc
    assert at(gone).message == f"the certificate of {ec.dn} expired on {utc_iso(gone)}"
    early = at(ec.cert.not_valid_before_utc - SECOND)
    assert early.message == (f"the certificate of {ec.dn} is valid only from "
                             f"{utc_iso(ec.cert.not_valid_before_utc)}")


def test_an_expired_issuing_ca_ends_the_trust(repo, image):
    short_ca = make("Short CA", "ec", ca=True, not_after=NOW + 10 * DAY)
    team = make("Team", "ed25519", issuer=short_ca)
    repo.endorse(image.ref, endorsement(team, image).to_dict(), ALICE)
    assert repo.assess(image.ref, ALICE, policy(short_ca, at=NOW + 9 * DAY)).trusted
    verdict = repo.assess(image.ref, ALICE, policy(short_ca, at=NOW + 11 * DAY))
    assert verdict.message == (
        f"the certificate of {team.dn} is issued by CN=Short CA,O=Grid, whose own certificate "
        f"expired on {utc_iso(NOW + 10 * DAY)}")


def test_one_trusted_endorsement_is_enough(repo, image, pki):
    repo.endorse(image.ref, endorsement(pki.stranger, image).to_dict(), ALICE)
    repo.endorse(image.ref, endorsement(pki.endorsers["rsa"], image, days=5).to_dict(), ALICE)
    verdict = repo.assess(image.ref, ALICE, policy(pki.ca))
    assert verdict.trusted and verdict.endorsers == (pki.endorsers["rsa"].dn,)
    later = repo.assess(image.ref, ALICE, policy(pki.ca, at=NOW + 6 * DAY))
    assert not later.trusted
    assert sorted(f.code for f in later.findings) == ["EXPIRED", "UNTRUSTED_ENDORSER"]


def test_withdraw_by_who_attached_it_the_owner_or_an_administrator(repo, image, pki):
    ec = pki.endorsers["ec"]
    signed = endorsement(ec, image).to_dict()
    repo.endorse(image.ref, signed, BOB)
    with pytest.raises(NotAuthorized, match=r"only bob \(who attached it\), the owner"):
        repo.withdraw(image.ref, ec.fingerprint, CAROL)
    before = repo.change_number()
    assert repo.withdraw(image.ref, ec.fingerprint[:12], BOB).fingerprint == ec.fingerprint
    assert repo.change_number() == before + 1
    assert repo.get(image.id, ALICE).endorsements == []
    repo.endorse(image.ref, signed, BOB)
    repo.withdraw(image.ref, ec.fingerprint, ALICE)  # the image's owner
    repo.endorse(image.ref, signed, BOB)
    colons = ":".join(ec.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    repo.withdraw(image.ref, colons, ADMIN)
    verdict = repo.assess(image.ref, ALICE, policy(pki.ca))
    assert not verdict.trusted and verdict.message == "not endorsed"
    with pytest.raises(BadRequest, match="has no endorsement by a certificate"):
        repo.withdraw(image.ref, ec.fingerprint, ALICE)
    with pytest.raises(BadRequest, match="at least 8 hex digits"):
        repo.withdraw(image.ref, "abc", ALICE)


def test_a_damaged_stored_endorsement_is_not_trusted(repo, image, pki, database_url,
                                                     tmp_path):
    ec = pki.endorsers["ec"]
    repo.endorse(image.ref, endorsement(ec, image).to_dict(), ALICE)
    good = repo.get(image.id, ALICE).endorsements[0].signature
    with repo.engine.begin() as connection:  # someone with write access to the database
        connection.execute(update(ImageEndorsementRow).values(
            signature=bytes([good[0] ^ 1]) + good[1:]))
    verdict = repo.assess(image.ref, ALICE, policy(pki.ca))
    assert [f.code for f in verdict.findings] == ["BAD_SIGNATURE"]
    fresh = ImageRepository(database_url, tmp_path / "store")  # its index reads the row
    try:
        result = fresh.match({}, ALICE, policy=policy(pki.ca))
        assert result.candidates == []
        assert "does not verify" in reason_of(result, image.name).message
        with repo.engine.begin() as connection:
            connection.execute(update(ImageEndorsementRow).values(
                signature=good, certificate=pki.stranger.cert_pem.decode()))
        verdict = repo.assess(image.ref, ALICE, policy(pki.ca, pki.stranger))
        assert [f.code for f in verdict.findings] == ["MALFORMED"]
        assert "its certificate is not the one it names" in verdict.message
    finally:
        fresh.close()


# --------------------------------------------------------------------------- matching --------

@pytest.fixture
def endorsed_catalogue(repo, files, pki):
    """trusted (CA-issued EC endorser), short (RSA, 10 days), stranger, unendorsed."""
    records = {name: repo.register(builder_document(name=name), files, ALICE)
               for name in ("trusted", "short", "stranger", "unendorsed")}
    repo.endorse("trusted", endorsement(pki.endorsers["ec"], records["trusted"]).to_dict(),
                 ALICE)
    repo.endorse("short", endorsement(pki.endorsers["rsa"], records["short"], days=10)
                 .to_dict(), ALICE)
    repo.endorse("stranger", endorsement(pki.stranger, records["stranger"]).to_dict(), ALICE)
    return records


def test_a_requiring_policy_matches_only_trusted_images_and_says_why(repo,
                                                                     endorsed_catalogue, pki):
    result = repo.match({}, ALICE, policy=policy(pki.ca))
    assert names(result.candidates) == ["short", "trusted"]
    assert result.candidates[0].stated == ()  # trust is the site's condition, not stated
    unendorsed = reason_of(result, "unendorsed")
    assert (unendorsed.message, unendorsed.path) == ("not endorsed", "endorsements")
    assert unendorsed.offered[0]["code"] == "NOT_ENDORSED"
    assert reason_of(result, "stranger").message == (
        "endorsed by CN=Stranger,O=Grid, whom this site does not trust")
    as_data = result.to_dict()["rejected"]
    assert {r["reasons"][0]["code"] for r in as_data} == {"IMAGE_UNTRUSTED"}

    later = repo.match({}, ALICE, policy=policy(pki.ca, at=NOW + 11 * DAY))
    assert names(later.candidates) == ["trusted"]
    assert reason_of(later, "short").message == (
        f"endorsement by CN=Image Team rsa,O=Grid expired on {utc_iso(NOW + 10 * DAY)}")

    # the job's own requirements are explained too
    fedora = repo.match({"os": {"distro": "fedora"}}, ALICE, policy=policy(pki.ca))
    [rejection] = [r for r in fedora.rejected if r.name == "unendorsed"]
    assert [r.code for r in rejection.reasons] == ["OS_DISTRO", "IMAGE_UNTRUSTED"]
    assert "unendorsed:1: os.distro is debian, required fedora; not endorsed" in (
        fedora.summary(limit=10))


def test_without_a_requiring_policy_matching_is_unchanged(repo, endorsed_catalogue, pki):
    plain = repo.match({}, ALICE)
    assert names(plain.candidates) == ["short", "stranger", "trusted", "unendorsed"]
    for relaxed in (policy(pki.ca, require=False), policy(require=False), None):
        result = repo.match({}, ALICE, policy=relaxed)
        assert [c.ref for c in result.candidates] == [c.ref for c in plain.candidates]
        assert result.rejected == []


def test_the_index_follows_endorsing_and_withdrawing(repo, image, pki):
    requiring = policy(pki.ca)
    assert repo.match({}, ALICE, policy=requiring).candidates == []
    ec = pki.endorsers["ec"]
    repo.endorse(image.ref, endorsement(ec, image).to_dict(), ALICE)
    assert [c.id for c in repo.match({}, ALICE, policy=requiring).candidates] == [image.id]
    repo.withdraw(image.ref, ec.fingerprint, ALICE)
    result = repo.match({}, ALICE, policy=requiring)
    assert result.candidates == [] and reason_of(result, image.name).message == "not endorsed"


# --------------------------------------------------------------------------- schema ----------

def test_migration_0004_upgrades_a_0003_catalogue(database_url, files, pki, tmp_path):
    engine = make_engine(database_url)
    try:
        migrate(engine, "0003_sites_and_lifetimes")
        assert "image_endorsements" not in inspect(engine).get_table_names()
        old = ImageRepository(engine, tmp_path / "store", upgrade=False)
        record = old.register(builder_document(), files, ALICE)
        migrate(engine)
        assert current_revision(engine) == head_revision()
        repo = ImageRepository(engine, tmp_path / "store")
        assert repo.get(record.id, ALICE).endorsements == []
        repo.endorse(record.ref, endorsement(pki.endorsers["ec"], record).to_dict(), ALICE)
        assert repo.assess(record.ref, ALICE, policy(pki.ca)).trusted
        with engine.begin() as connection:  # and back: only the endorsements go
            command.downgrade(alembic_config(connection), "0003_sites_and_lifetimes")
        assert "image_endorsements" not in inspect(engine).get_table_names()
        assert current_revision(engine) == "0003_sites_and_lifetimes"
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM images")).scalars().all() == [
                record.id]
    finally:
        engine.dispose()


def test_the_migrations_create_what_the_models_declare(repo):
    with repo.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_signatures_are_bytes_in_the_database_and_base64_outside(repo, image, pki):
    signed = endorsement(pki.endorsers["ed25519"], image)
    repo.endorse(image.ref, signed, ALICE)
    [stored] = repo.get(image.id, ALICE).endorsements
    assert stored.signature == signed.signature and len(stored.signature) == 64
    assert base64.b64decode(stored.to_dict()["signature"]) == signed.signature
