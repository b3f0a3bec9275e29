"""A site that requires endorsements: the factory matches only trusted images and checks the
trust again right before it boots a new instance.  No VM boots: the VM manager runs on
libvirt's test driver, so staging is real but the domain is never created."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from base.identity import Caller
from image_repo.repository import ImageRepository
from image_repo.trust import TrustPolicy, create_endorsement, utc_iso
from target_system.instance import Deadlines, SiteCredentials
from target_system.lifecycle import InstanceState
from tests.image_repo.examples import builder_document, write_files
from tests.image_repo.pki import DAY, NOW
from tsf.factory import TargetSystemFactory

ALICE = Caller.of("alice", groups=["users"])
JOB = {"Executable": "true", "Resources": {"OperatingSystem": "debian"}}


class Clock:
    """The policy's clock; the tests move it."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class MatchThenLater(ImageRepository):
    """Time passes between the match and the boot: once ``clock`` is set, it moves on to
    ``later`` after each match."""

    clock: Clock | None = None
    later = None

    def match(self, *args, **kwargs):
        result = super().match(*args, **kwargs)
        if self.clock is not None:
            self.clock.now = self.later
        return result


@pytest_twisted.async_yield_fixture
async def site(tmp_path, database_url, pki, test_driver_vmm):
    """(repository, make_factory(policy), image) on the test driver; alice's image
    gridvm-debian12-initramfs:1 is registered, unendorsed."""
    vmm = test_driver_vmm
    repository = MatchThenLater(database_url, tmp_path / "store")
    files = write_files(tmp_path / "build", {"vmlinuz": b"kernel-bytes",
                                             "initrd.img": b"initrd-bytes"})
    image = repository.register(builder_document(), files, ALICE)
    credentials = SiteCredentials.load_or_create(tmp_path / "ca")

    def make_factory(policy: TrustPolicy) -> TargetSystemFactory:
        # short deadlines: were the check missing, the boot would fail fast, not hang
        return TargetSystemFactory(repository, vmm, credentials, tmp_path / "storage",
                                   reactor, trust=policy,
                                   deadlines=Deadlines(staging=20, booting=3, connecting=3))

    try:
        yield repository, make_factory, image
    finally:
        repository.close()


async def run(factory: TargetSystemFactory):
    job = factory.submit(JOB, ALICE)
    await factory.wait(job.job_id, ALICE)
    return job


@pytest_twisted.ensureDeferred
async def test_a_site_requiring_endorsement_refuses_an_unendorsed_image(site, pki):
    repository, make_factory, image = site
    factory = make_factory(TrustPolicy([pki.ca.cert], require=True))
    job = await run(factory)
    assert job.state.name == "FAILED"
    assert job.lifecycle.reason == "NO_MATCHING_IMAGE"
    assert f"{image.ref}: not endorsed" in job.lifecycle.message
    [rejection] = job.rejections
    assert rejection["ref"] == image.ref
    assert [(r["code"], r["message"]) for r in rejection["reasons"]] == [
        ("IMAGE_UNTRUSTED", "not endorsed")]
    assert factory.instances == {}

    stranger = create_endorsement(image.identity, pki.stranger.cert_pem,
                                  pki.stranger.key_pem(), expires=NOW + 30 * DAY)
    repository.endorse(image.ref, stranger, ALICE)
    job = await run(factory)
    assert job.lifecycle.reason == "NO_MATCHING_IMAGE"
    assert (f"{image.ref}: endorsed by CN=Stranger,O=Grid, whom this site does not trust"
            in job.lifecycle.message)


@pytest_twisted.ensureDeferred
async def test_trust_is_checked_again_right_before_the_boot(site, pki):
    repository, make_factory, image = site
    expires = NOW + 30 * DAY
    endorser = pki.endorsers["ec"]
    repository.endorse(image.ref, create_endorsement(
        image.identity, endorser.cert_pem, endorser.key_pem(), expires=expires), ALICE)
    clock = Clock(expires - DAY)  # trusted at the match ...
    repository.clock, repository.later = clock, expires  # ... expired by the boot
    factory = make_factory(TrustPolicy([pki.ca.cert], require=True, clock=clock))
    job = await run(factory)

    assert any(f"matched image {image.ref}" in line for line in job.log)
    assert job.state.name == "FAILED"
    assert job.lifecycle.reason == "IMAGE_UNTRUSTED"
    assert job.lifecycle.message == (
        f"{image.name} is no longer trusted: endorsement by {endorser.dn} expired on "
        f"{utc_iso(expires)}")
    [target] = factory.instances.values()
    assert target.state is InstanceState.FAILED
    assert target.lifecycle.reason == "IMAGE_UNTRUSTED"
    # refused once the image was staged (it is in the base-image cache), before the boot
    assert any((factory.vmm.state_dir / "cache").iterdir())
    assert "STAGING" in target.lifecycle.entered and "BOOTING" not in target.lifecycle.entered
    assert target.vm is None
    assert not (factory.vmm.instance_dir(target.instance_id)).exists()


@pytest_twisted.ensureDeferred
async def test_a_layer_is_trusted_only_with_its_base(site, pki, tmp_path):
    from tests.image_repo.test_layers import disk_document, qemu_img

    repository, make_factory, _image = site
    base, layer = tmp_path / "base.qcow2", tmp_path / "layer.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(layer))
    base_record = repository.register(disk_document("trust-base", base), [base], ALICE)
    doc = disk_document("trust-layer", layer, backing=base_record.id)
    doc["semantic"] = {"os": {"distro": "debian"}}
    record = repository.register(doc, [layer], ALICE)
    endorser = pki.endorsers["ed25519"]
    repository.endorse(record.ref, create_endorsement(
        record.identity, endorser.cert_pem, endorser.key_pem(), expires=NOW + 30 * DAY), ALICE)
    clock = Clock(NOW)
    factory = make_factory(TrustPolicy([pki.ca.cert], require=True, clock=clock))
    job = factory.submit({"Executable": "true", "Resources": {"Image": record.ref}}, ALICE)
    await factory.wait(job.job_id, ALICE)
    # the match already says why: the base is not trusted (no instance is made)
    assert job.lifecycle.reason == "NO_MATCHING_IMAGE"
    assert ("trust-layer:1: a layer on trust-base:1, which is not trusted: not endorsed"
            in job.lifecycle.message)
    assert factory.instances == {}

    # the base trusted at the match, its endorsement expired by the boot: refused before it
    expires = NOW + DAY
    repository.endorse(base_record.ref, create_endorsement(
        base_record.identity, endorser.cert_pem, endorser.key_pem(), expires=expires), ALICE)
    repository.clock, repository.later = clock, expires + DAY
    job = factory.submit({"Executable": "true", "Resources": {"Image": record.ref}}, ALICE)
    await factory.wait(job.job_id, ALICE)
    assert job.lifecycle.reason == "IMAGE_UNTRUSTED"
    assert job.lifecycle.message.startswith(
        "trust-layer is a layer on trust-base:1, which is not trusted: endorsement by ")
