"""Sites sharing a hypervisor touch only their own domains (by identity and exact name)."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.vmm.test_hypervisor import config
from vmm.errors import VMMError
from vmm.hypervisor import DomainState, Hypervisor
from vmm.identity import IDENTITY_FILE, load_or_create_site_id
from vmm.manager import VirtualMachineManager


def test_identity_is_generated_once_and_kept(tmp_path):
    first = load_or_create_site_id(tmp_path / "vmm")
    assert len(first) == 32
    assert load_or_create_site_id(tmp_path / "vmm") == first
    assert VirtualMachineManager(Hypervisor("test:///default", reactor),
                                 tmp_path / "vmm").site_id == first
    assert load_or_create_site_id(tmp_path / "other") != first


def test_a_damaged_identity_is_a_clear_error_not_a_new_identity(tmp_path):
    (tmp_path / IDENTITY_FILE).write_text("not a uuid\n")
    with pytest.raises(VMMError, match="no site identity"):
        load_or_create_site_id(tmp_path)
    assert (tmp_path / IDENTITY_FILE).read_text() == "not a uuid\n"


@pytest_twisted.ensureDeferred
async def test_second_site_with_the_same_prefix_leaves_the_first_sites_domains(test_uri,
                                                                               tmp_path):
    hv = Hypervisor(test_uri, reactor)
    first = VirtualMachineManager(hv, tmp_path / "first", reactor=reactor)
    second = VirtualMachineManager(hv, tmp_path / "second", reactor=reactor)
    assert first.site_id != second.site_id
    await hv.connect()
    try:
        await hv.create(config("gridvm-0001", instance_id="0001", site=first.site_id))
        adopted = await second.adopt()
        assert [(a.name, a.instance) for a in adopted] == [("gridvm-0001", None)]
        assert second.instances == {}
        await second.destroy("0001")  # e.g. recover() of an orphan, or a stale id
        assert await hv.state("gridvm-0001") == DomainState.RUNNING
        # the owner still adopts and destroys it
        assert [a.instance.instance_id for a in await first.adopt()] == ["0001"]
        await first.destroy("0001")
        assert await hv.state("gridvm-0001") == DomainState.GONE
    finally:
        await hv.close()


@pytest_twisted.ensureDeferred
async def test_a_prefix_that_prefixes_another_sites_does_not_adopt_its_domains(test_uri,
                                                                                tmp_path):
    hv = Hypervisor(test_uri, reactor)
    short = VirtualMachineManager(hv, tmp_path / "vmm", reactor=reactor, prefix="gridvm-")
    await hv.connect()
    try:
        # same identity even (a copied state directory), but named with a longer prefix
        await hv.create(config("gridvm-b-0002", instance_id="0002", site=short.site_id))
        await hv.create(config("gridvm-0003", instance_id="0003", site=short.site_id))
        adopted = {a.name: a.instance for a in await short.adopt()}
        assert adopted["gridvm-b-0002"] is None
        assert adopted["gridvm-0003"].instance_id == "0003"
        assert set(short.instances) == {"0003"}
    finally:
        await hv.close()
