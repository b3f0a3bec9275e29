"""The site's [trust] configuration and what its REST image catalogue says about trust.
The site runs on libvirt's test driver: no VM boots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from image_repo.trust import create_endorsement, utc_iso
from tests.image_repo.examples import builder_document, write_files
from tests.image_repo.pki import DAY, NOW
from tests.tsf.rest.conftest import CREATOR, Http, write_users
from tsf.config import ConfigError, config_from_dict
from tsf.service import start_site

ROOT = Path(__file__).resolve().parents[2]
NODE = "<node><cpu><mhz>2000</mhz></cpu><memory>8388608</memory></node>"


def test_the_trust_section():
    assert config_from_dict({}).trust_policy().require is False
    assert config_from_dict({}).to_dict()["trust"] == {"anchors": "",
                                                      "require_endorsement": False}
    with pytest.raises(ConfigError, match=r"trust\.require_endorsement needs trust\.anchors"):
        config_from_dict({"trust": {"require_endorsement": True}})
    with pytest.raises(ConfigError, match=r"unknown key trust\.anchor;"):
        config_from_dict({"trust": {"anchor": "x.pem"}})
    with pytest.raises(ConfigError, match=r"trust\.require_endorsement must be a bool"):
        config_from_dict({"trust": {"require_endorsement": "yes"}})


def test_anchors_that_cannot_be_used_are_one_line_errors(tmp_path, pki):
    missing = config_from_dict({"trust": {"anchors": str(tmp_path / "none.pem")}})
    with pytest.raises(ConfigError, match=r"trust.anchors: cannot read .*none.pem"):
        missing.trust_policy()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    config = tmp_path / "site.toml"
    config.write_text(f'[trust]\nanchors = "{tmp_path / "junk.pem"}"\n'
                      "require_endorsement = true\n")
    result = subprocess.run([sys.executable, "-m", "gridvm", "serve", "-c", str(config),
                             "--print-config"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"gridvm: BAD_REQUEST: trust.anchors: {tmp_path}/junk.pem "
                                     "holds no PEM certificate")
    good = pki.bundle(tmp_path, "anchors.pem", pki.ca, pki.endorsers["rsa"])
    policy = config_from_dict({"trust": {"anchors": str(good),
                                         "require_endorsement": True}}).trust_policy()
    assert policy.require and len(policy.anchors) == 2


@pytest_twisted.async_yield_fixture
async def trusting_site(tmp_path, pki):
    """A site requiring endorsements by the test CA; images 'endorsed' and 'plain'."""
    (tmp_path / "node.xml").write_text(NODE)
    state = tmp_path / "state"
    state.mkdir()
    write_users(state / "users.json")
    config = config_from_dict({
        "site": {"name": "TRUST", "state_dir": str(state), "keep_instances": False,
                 "libvirt_uri": f"test://{tmp_path / 'node.xml'}",
                 "domain_prefix": "gridvm-trust-rest-"},
        "http": {"port": 0}, "https": {"port": -1},
        "trust": {"anchors": str(pki.bundle(tmp_path, "anchors.pem", pki.ca)),
                  "require_endorsement": True}})
    site = await start_site(config, reactor)
    files = write_files(tmp_path / "build", {"vmlinuz": b"kernel-bytes",
                                             "initrd.img": b"initrd-bytes"})
    endorser = pki.endorsers["ed25519"]

    def register():
        endorsed = site.repository.register(builder_document(name="endorsed"), files, CREATOR)
        site.repository.endorse(endorsed.ref, create_endorsement(
            endorsed.identity, endorser.cert_pem, endorser.key_pem(),
            expires=NOW + 30 * DAY), CREATOR)
        site.repository.register(builder_document(name="plain"), files, CREATOR)

    await threads.deferToThread(register)
    try:
        yield site, Http(site.http_base)
    finally:
        await site.stopService()


@pytest_twisted.ensureDeferred
async def test_the_catalogue_shows_endorsements_and_the_sites_verdict(trusting_site, pki):
    _site, http = trusting_site
    endorser = pki.endorsers["ed25519"]
    images = {i["name"]: i for i in (await http("GET", "images")).json()["images"]}
    endorsed, plain = images["endorsed"], images["plain"]
    assert [(e["endorser"], e["fingerprint"], e["expires"], e["attached_by"])
            for e in endorsed["endorsements"]] == [
        (endorser.dn, endorser.fingerprint, utc_iso(NOW + 30 * DAY), "creator")]
    assert endorsed["trust"]["trusted"] is True and endorsed["trust"]["required"] is True
    assert endorsed["trust"]["endorsers"] == [endorser.dn]
    assert plain["endorsements"] == []
    assert (plain["trust"]["trusted"], plain["trust"]["message"]) == (False, "not endorsed")
    assert plain["trust"]["reasons"][0]["code"] == "NOT_ENDORSED"

    one = (await http("GET", f"images/{endorsed['id']}")).json()
    assert one["trust"]["message"] == (f"endorsed by {endorser.dn} until "
                                       f"{utc_iso(NOW + 30 * DAY)}")
    [full] = one["metadata"]["endorsements"]
    assert full["certificate"] == endorser.cert_pem.decode()
    assert full["statement"].startswith('{"endorser":"CN=Image Team ed25519,O=Grid"')

    match = (await http("POST", "images/match", json={
        "Executable": "true", "Resources": {"OperatingSystem": "debian"}})).json()
    assert [c["ref"] for c in match["candidates"]] == ["endorsed:1"]
    [rejected] = match["rejected"]
    assert rejected["ref"] == "plain:1"
    assert [(r["code"], r["message"]) for r in rejected["reasons"]] == [
        ("IMAGE_UNTRUSTED", "not endorsed")]

    # what UNICORE clients are offered: only images this site would run
    factory = (await http("GET", "factories/default_target_system_factory")).json()
    assert factory["resources"]["batch"]["Image"] == ["endorsed"]
