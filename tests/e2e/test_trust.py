"""A site that requires endorsements boots an image a trusted endorser vouches for, in a real
VM (the refusals need no VM: tests/tsf/test_trust.py)."""

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from image_repo.trust import TrustPolicy, create_endorsement
from target_system.lifecycle import InstanceState, JobState
from tests.e2e.conftest import ALICE, CREATOR
from tests.image_repo.pki import DAY, NOW, build_pki

pytestmark = pytest.mark.vm


@pytest_twisted.ensureDeferred
async def test_an_endorsed_image_boots_on_a_site_that_requires_endorsement(site):
    factory, repository, _root = site
    pki = await threads.deferToThread(build_pki)
    factory.trust = TrustPolicy([pki.ca.cert], require=True)
    endorser = pki.endorsers["ec"]

    def endorse():
        record = repository.get("gridvm-debian12-initramfs", CREATOR)
        repository.endorse(record.id, create_endorsement(
            record.identity, endorser.cert_pem, endorser.key_pem(), expires=NOW + DAY),
            CREATOR)

    await threads.deferToThread(endorse)
    job = factory.submit({"Executable": "/bin/echo", "Arguments": ["trusted"]}, ALICE)
    await factory.wait(job.job_id, ALICE).addTimeout(240, reactor)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert (job.storage / "stdout").read_text() == "trusted\n"
    assert job.image == "gridvm-debian12-initramfs"
    # it was the only candidate: the qcow2 image is rejected as untrusted
    result = await threads.deferToThread(repository.match, {}, ALICE, policy=factory.trust)
    assert [c.name for c in result.candidates] == ["gridvm-debian12-initramfs"]
    assert [(r.name, [x.message for x in r.reasons]) for r in result.rejected] == [
        ("gridvm-debian12-qcow2", ["not endorsed"])]
    target = factory.instance(job.instance_id, ALICE)
    assert target.state is InstanceState.READY
    assert "BOOTING" in target.lifecycle.entered  # admitted by the pre-boot check
    await target.terminate("test")
