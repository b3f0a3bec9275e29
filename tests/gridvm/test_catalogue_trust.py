"""``gridvm catalogue endorse|withdraw|verify``, ``show`` with endorsements and ``match --anchors
--require-endorsement`` as an endorser runs them: real keys, both catalogue back ends."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

IMAGE = "gridvm-debian12-initramfs:1"


@pytest.fixture
def registered(catalogue, build_dir):
    result = catalogue("register", str(build_dir / "metadata.json"))
    assert result.returncode == 0, result.stderr
    return IMAGE


@pytest.fixture
def files(tmp_path, pki):
    """Certificates, keys and anchor bundles as an endorser and a site keep them."""
    directory = tmp_path / "pki"
    cert, key = pki.endorsers["ec"].write(directory, "endorser")
    locked_cert, locked_key = pki.endorsers["ed25519"].write(directory, "locked", b"sesame")
    _rsa_cert, rsa_key = pki.endorsers["rsa"].write(directory, "rsa")
    (directory / "junk.pem").write_text("no certificate here\n")
    return SimpleNamespace(
        cert=str(cert), key=str(key), locked_cert=str(locked_cert),
        locked_key=str(locked_key), rsa_key=str(rsa_key), junk=str(directory / "junk.pem"),
        ca=str(pki.bundle(directory, "ca.pem", pki.ca)),
        stranger=str(pki.bundle(directory, "stranger.pem", pki.stranger)))


def test_endorse_verify_show_match_withdraw(catalogue, registered, files, pki, tmp_path):
    ec = pki.endorsers["ec"]
    result = catalogue("endorse", registered, "--cert", files.cert, "--key", files.key,
                    "--expires", "2099-01-31")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"endorsed {IMAGE} as {ec.dn} until 2099-01-31T00:00:00Z "
                             f"(certificate {ec.fingerprint[:16]})\n")

    trusted = catalogue("verify", registered, "--anchors", files.ca)
    assert trusted.returncode == 0, trusted.stderr
    lines = trusted.stdout.splitlines()
    assert lines[0].startswith(f"{IMAGE} (id ") and lines[0].endswith("): trusted")
    assert lines[1].split(None, 1) == [
        "ENDORSED", f"endorsed by {ec.dn} until 2099-01-31T00:00:00Z"]
    as_json = json.loads(catalogue("verify", registered, "--anchors", files.ca, "--json").stdout)
    assert (as_json["ref"], as_json["trusted"], as_json["endorsers"]) == (IMAGE, True, [ec.dn])

    untrusted = catalogue("verify", registered, "--anchors", files.stranger)
    assert untrusted.returncode == 1
    assert "NOT trusted" in untrusted.stdout and "UNTRUSTED_ENDORSER" in untrusted.stdout
    assert untrusted.stderr == (f"gridvm: IMAGE_UNTRUSTED: {IMAGE} is not trusted by "
                                f"{files.stranger}: endorsed by {ec.dn}, whom this site does "
                                "not trust\n")

    header, row = catalogue("list").stdout.splitlines()
    assert header.split()[6] == "ENDORSED" and " 1 until 2099-01-31 " in row

    [shown] = json.loads(catalogue("show", registered).stdout)["endorsements"]
    assert (shown["endorser"], shown["fingerprint"]) == (ec.dn, ec.fingerprint)
    assert shown["certificate"] == ec.cert_pem.decode()
    assert base64.b64decode(shown["signature"])

    requirements = tmp_path / "req.json"
    requirements.write_text(json.dumps({"os": {"distro": "debian"}}))
    fits = catalogue("match", str(requirements), "--anchors", files.ca, "--require-endorsement")
    assert fits.returncode == 0, fits.stderr
    assert f"1. {IMAGE}" in fits.stdout
    refused = catalogue("match", str(requirements), "--anchors", files.stranger,
                     "--require-endorsement")
    assert refused.returncode == 3
    assert f"  {IMAGE}: endorsed by {ec.dn}, whom this site does not trust" in refused.stdout
    assert refused.stderr.startswith("gridvm: NO_MATCHING_IMAGE: no image matches")
    plain = catalogue("match", str(requirements))  # no policy: as before
    assert plain.returncode == 0 and f"1. {IMAGE}" in plain.stdout

    withdrawn = catalogue("withdraw", registered, "--cert", files.cert)
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert withdrawn.stdout == (f"withdrew the endorsement of {IMAGE} by {ec.dn} "
                                f"(certificate {ec.fingerprint[:16]})\n")
    gone = catalogue("verify", registered, "--anchors", files.ca)
    assert gone.returncode == 1 and gone.stderr.endswith(": not endorsed\n")

    again = catalogue("endorse", registered, "--cert", files.cert, "--key", files.key,
                   "--days", "10", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["fingerprint"] == ec.fingerprint
    by_print = catalogue("withdraw", registered, "--fingerprint", ec.fingerprint[:10])
    assert by_print.returncode == 0, by_print.stderr


def test_an_encrypted_key_needs_its_passphrase(catalogue, registered, files, pki):
    args = ("endorse", registered, "--cert", files.locked_cert, "--key", files.locked_key)
    result = catalogue(*args)  # stdin is no terminal: nobody to ask
    assert result.returncode == 2
    assert result.stderr == (f"gridvm: BAD_REQUEST: {files.locked_key} is encrypted: give its "
                             "passphrase with --key-password-stdin\n")
    wrong = catalogue(*args, "--key-password-stdin", stdin="open up\n")
    assert wrong.returncode == 2 and "cannot read the private key" in wrong.stderr
    right = catalogue(*args, "--key-password-stdin", stdin="sesame\n")
    assert right.returncode == 0, right.stderr
    assert pki.endorsers["ed25519"].dn in right.stdout


@pytest.mark.parametrize(("extra", "code", "words"), [
    (("--key", "RSA"), 2, "key: the key does not belong to the certificate of CN=Image Team ec"),
    (("--expires", "tomorrow"), 2, "--expires: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"),
    (("--expires", "2001-01-01"), 2, "the expiry 2001-01-01T00:00:00Z is not after"),
    (("--days", "0"), 2, "--days must be 1 or more"),
    (("--cert", "MISSING"), 2, "/nonexistent/cert.pem: No such file or directory"),
    (("--cert", "JUNK"), 2, "certificate: is not a PEM certificate"),
])
def test_endorse_errors_are_one_line(catalogue, registered, files, extra, code, words):
    options = {"--cert": files.cert, "--key": files.key}
    names = {"RSA": files.rsa_key, "MISSING": "/nonexistent/cert.pem", "JUNK": files.junk}
    flag, value = extra
    if flag in options:
        options[flag] = names[value]
    args = [x for pair in options.items() for x in pair]
    if flag not in options:
        args += [flag, value]
    result = catalogue("endorse", registered, *args)
    assert result.returncode == code
    assert words in result.stderr
    assert json.loads(catalogue("show", registered).stdout)["endorsements"] == []


def test_other_errors_are_one_line(catalogue, registered, files):
    cases = [
        (("endorse", "no-such-image", "--cert", files.cert, "--key", files.key), 3,
         "no image 'no-such-image' is visible"),
        (("verify", registered, "--anchors", files.junk), 2, "holds no PEM certificate"),
        (("withdraw", registered, "--fingerprint", "00000000"), 2,
         f"{IMAGE} has no endorsement by a certificate 00000000"),
        (("withdraw", registered, "--fingerprint", "xyz"), 2, "at least 8 hex digits"),
        (("match", "req.json", "--require-endorsement"), 2,
         "--anchors and --require-endorsement go together"),
    ]
    for args, code, words in cases:
        result = catalogue(*args)
        assert (result.returncode, words in result.stderr) == (code, True), (args, result)


def test_list_export_writes_a_signed_hepix_list_a_site_verifies(catalogue, registered, files,
                                                                 pki, tmp_path):
    import datetime as dt

    from cryptography import x509

    from image_repo import imagelist, smime

    out = tmp_path / "list.smime"
    result = catalogue("list-export", registered, "--cert", files.cert, "--key", files.key,
                       "--base-url", "https://images.example.org/files/", "--days", "7",
                       "--title", "demo images", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 image(s) listed until ")
    anchors = x509.load_pem_x509_certificates(Path(files.ca).read_bytes())
    signed = smime.verify(out.read_bytes(), anchors, dt.datetime.now(dt.UTC))
    assert signed.signer == pki.endorsers["ec"].cert
    listed = imagelist.parse(signed.content)
    assert listed.title == "demo images" and listed.endorser.dn == signed.signer_dn
    assert 6 <= (listed.expires - dt.datetime.now(dt.UTC)).days <= 7
    [image] = listed.images
    assert image.identifier == imagelist.image_identifier("gridvm-debian12-initramfs")
    assert {f.uri.rsplit("/", 1)[1] for f in image.files} == {"vmlinuz", "initrd.img"}
    assert all(f.uri.startswith("https://images.example.org/files/") and len(f.sha512) == 128
               for f in image.files)
    refused = catalogue("list-export", registered, "--cert", files.cert, "--key", files.key,
                        "--base-url", "ftp://nowhere", "-o", str(out))
    assert refused.returncode == 2 and "--base-url must be an http(s) URL" in refused.stderr
