"""Admission at submit, over the factory's fakes: a job outside the site's size limits is
refused before anything boots, an image's default size never exceeds the site's, and a
user at a per-user limit is refused naming it (other users are not)."""

from __future__ import annotations

import pytest
import pytest_twisted

from base.reasons import Reason
from target_system.jobdesc import JobDescriptionError
from target_system.lifecycle import JobState
from tests.image_repo.examples import builder_document, variant, write_files
from tests.tsf.test_factory_unit import ALICE, BOB, JOB, Site, credentials  # noqa: F401
from tsf.admission import Admission, SiteLimits, UserLimitReached, UserLimits
from tsf.factory import Quotas

WAITING = {**JOB, "haveClientStageIn": True}  #: a job that waits for its start


@pytest.fixture
def make_site(tmp_path, credentials):  # noqa: F811
    sites = []

    def make(users: UserLimits | None = None, site: SiteLimits | None = None) -> Site:
        made = Site(tmp_path / str(len(sites)), credentials, Quotas(per_user=2, total=2),
                    admission=Admission(site or SiteLimits(), users or UserLimits()))
        sites.append(made)
        return made

    yield make
    for made in sites:
        made.repository.close()


@pytest.mark.parametrize("resources, path, complaint", [
    ({"CPUs": 1000}, "Resources.CPUs", "1000 is outside this site's limit: 1 to 4"),
    ({"CPUsPerNode": 5}, "Resources.CPUsPerNode", "5 is outside"),
    ({"CPUs": 4, "Memory": "9G"}, "Resources.Memory", "9216 MiB is outside this site's limit: "
                                                      "1 to 8192 MiB"),
    ({"Runtime": "2d"}, "Resources.Runtime", "172800 s is outside this site's limit: 1 to "
                                             "86400 s"),
    ({"Disk": "65G"}, "Resources.Disk", "65 GiB is outside this site's limit: 1 to 64 GiB"),
    ({"Nodes": 5}, "Resources.Nodes", "5 is outside this site's limit: 1 to 4"),
    ({"Nodes": 2, "CPUsPerNode": 5}, "Resources.CPUsPerNode", "5 is outside"),
])
def test_a_job_outside_the_site_limits_is_refused_before_anything(make_site, resources, path,
                                                                  complaint):
    site = make_site()
    with pytest.raises(JobDescriptionError) as err:
        site.factory.submit({**JOB, "Resources": {**JOB["Resources"], **resources}}, ALICE)
    assert err.value.path == path and complaint in str(err.value)
    assert site.factory.list_jobs(ALICE) == [] and site.vms.specs == []


@pytest_twisted.ensureDeferred
async def test_the_site_limits_themselves_are_allowed_and_boot_that_size(make_site):
    site = make_site(site=SiteLimits(cpus=2, memory_mib=512))
    job = site.factory.submit({**JOB, "Resources": {**JOB["Resources"], "CPUs": 2,
                                                    "Memory": "512M"}}, ALICE)
    await site.finished(job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert [(s.vcpus, s.memory_mib) for s in site.vms.specs] == [(2, 512)]


@pytest_twisted.ensureDeferred
async def test_an_image_default_size_above_the_site_limits_is_cut_down(make_site, tmp_path):
    site = make_site(site=SiteLimits(cpus=2, memory_mib=1024))
    big = variant(builder_document(name="big-default"), **{
        "origin.virtual_hardware": {"vcpus": 64, "memory_mib": 1 << 20}})
    files = write_files(tmp_path / "big", {"vmlinuz": b"kernel-bytes",
                                           "initrd.img": b"initrd-bytes"})
    site.repository.register(big, files, ALICE)
    job = site.factory.submit({**JOB, "Resources": {"Image": "big-default"}}, ALICE)
    await site.finished(job)
    assert job.state is JobState.SUCCESSFUL, job.log
    assert [(s.vcpus, s.memory_mib) for s in site.vms.specs] == [(2, 1024)]


@pytest.mark.parametrize("limits, doc, limit", [
    (UserLimits(jobs=3), WAITING, "jobs"),
    (UserLimits(unfinished_jobs=3), WAITING, "unfinished_jobs"),
    (UserLimits(description_bytes=3 * 1024), {**WAITING, "Name": "n" * 500}, "description_bytes"),
])
def test_a_user_at_a_per_user_limit_is_refused_naming_it(make_site, limits, doc, limit):
    site = make_site(users=limits)
    for _ in range(3 if limit != "description_bytes" else 5):
        try:
            site.factory.submit(doc, ALICE)
        except UserLimitReached:
            break
    with pytest.raises(UserLimitReached) as err:
        site.factory.submit(doc, ALICE)
    assert err.value.limit == limit and err.value.reason is Reason.QUOTA_EXCEEDED
    assert str(err.value).startswith(f"per-user limit {limit}: ")
    kept = len(site.factory.list_jobs(ALICE))
    assert site.factory.submit(doc, BOB).owner == "bob"  # another user is not limited
    assert len(site.factory.list_jobs(ALICE)) == kept


@pytest_twisted.ensureDeferred
async def test_finished_jobs_count_as_kept_but_not_as_unfinished(make_site):
    site = make_site(users=UserLimits(jobs=2, unfinished_jobs=1))
    await site.finished(site.factory.submit(JOB, ALICE))
    site.factory.submit(WAITING, ALICE)  # one unfinished, two kept
    with pytest.raises(UserLimitReached, match=r"^per-user limit jobs: you keep 2 jobs"):
        site.factory.submit(WAITING, ALICE)


@pytest_twisted.ensureDeferred
async def test_a_user_whose_files_fill_the_storage_limit_is_refused(make_site):
    site = make_site(users=UserLimits(storage_bytes=1000))
    job = await site.finished(site.factory.submit(JOB, ALICE))
    (job.storage / "big.out").write_bytes(b"x" * 1000)
    with pytest.raises(UserLimitReached, match=r"^per-user limit storage_bytes: your jobs' files"):
        site.factory.submit(JOB, ALICE)
    await site.factory.delete(job.job_id, ALICE)
    assert site.factory.submit(WAITING, ALICE).owner == "alice"
