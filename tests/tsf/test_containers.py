"""CONTAINER jobs on the site, without a VM (libvirt's test driver): IMAGE_URL resolved to a
registered container image, and the job placed only on a VM image with a container runtime
for its architecture, or failing with why (unknown container, no runtime, wrong
architecture)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from base.identity import Caller
from base.reasons import Reason
from image_repo.repository import ImageRepository
from target_system.containers import FAILURE_FILE, SETUP_FAILED, guest_paths
from target_system.instance import Deadlines, SiteCredentials
from target_system.jobdesc import JobDescriptionError, parse_job
from target_system.jobs import Job, job_script
from tests.image_repo.examples import builder_document, sha512, variant, write_files
from tests.support.oci import oci_archive
from tsf.factory import TargetSystemFactory
from tsf.rest.sites import applications_of

ALICE = Caller.of("alice", groups=["users"])
CAROL = Caller.of("carol", groups=["others"])
ARCHIVE = b""  # set by the fixture: a small OCI archive
URL = "docker://localhost/gridvm/busybox:1.35.0"
CRUN = {"name": "crun", "executable": "/usr/bin/crun", "version": "1.8.1"}


def container_document(name="busybox", **changes) -> dict:
    """A registered container image: the archive the ``site`` fixture made."""
    return variant({
        "general": {"name": name, "permissions": {"others": "r"}},
        "origin": {"runtime_technology": "container", "content_type": "oci",
                   "source_url": URL, "architecture": "x86_64",
                   "content": [{"role": "container", "file": "busybox.oci.tar",
                                "sha512": sha512(ARCHIVE), "size": len(ARCHIVE)}]},
    }, **changes)


@pytest_twisted.async_yield_fixture
async def site(tmp_path, database_url, test_driver_vmm):
    """(repository, factory, register(doc, owner)) on the test driver."""
    vmm = test_driver_vmm
    repository = ImageRepository(database_url, tmp_path / "store")
    global ARCHIVE
    oci_archive(tmp_path / "image.oci.tar", [[("etc", None), ("etc/os-release", b"ID=x\n")]])
    ARCHIVE = (tmp_path / "image.oci.tar").read_bytes()
    files = write_files(tmp_path / "build", {"vmlinuz": b"kernel-bytes",
                                             "initrd.img": b"initrd-bytes",
                                             "busybox.oci.tar": ARCHIVE})

    def register(doc, owner=ALICE):
        wanted = [f for f in files if f.name in {c["file"] for c in doc["origin"]["content"]}]
        return repository.register(doc, wanted, owner)

    factory = TargetSystemFactory(repository, vmm, SiteCredentials.load_or_create(
        tmp_path / "ca"), tmp_path / "storage", reactor,
        deadlines=Deadlines(staging=20, booting=3, connecting=3))
    try:
        yield repository, factory, register
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("test over")
        repository.close()


def container_job(url=URL, **resources):
    doc = {"ApplicationName": "CONTAINER", "Parameters": {"IMAGE_URL": url, "COMMAND": "id"}}
    if resources:
        doc["Resources"] = resources
    return parse_job(doc)


async def failed(factory, desc, caller=ALICE):
    await factory.prepare(desc, caller, "http://localhost/storages/")
    job = factory.submit(desc, caller)
    await factory.wait(job.job_id, caller)
    assert job.state.name == "FAILED"
    return job


def reasons(job, ref):
    [rejection] = [r for r in job.rejections if r["ref"] == ref]
    return {r["code"]: r["message"] for r in rejection["reasons"]}


@pytest_twisted.ensureDeferred
async def test_image_url_names_a_registered_container_by_reference_or_name(site):
    _repository, factory, register = site
    record = register(container_document())
    for url in (URL, "busybox", record.ref, record.id):
        desc = container_job(url)
        await factory.prepare(desc, ALICE, "http://localhost/storages/")
        assert desc.container is not None and desc.container.image_id == record.id
        assert desc.container.sha512 == sha512(ARCHIVE)
        assert desc.container.path.read_bytes() == ARCHIVE
        assert desc.requirements.to_dict() == {"architecture": "x86_64",
                                               "container_runtime": True}
    # its permissions hold: carol may not see it, so for her the URL names nothing
    register(container_document("private", **{"general.permissions": {"others": ""},
                                              "origin.source_url": "docker://x/private"}))
    desc = container_job("docker://x/private")
    job = await failed(factory, desc, CAROL)
    assert desc.container is None and job.lifecycle.reason == Reason.CONTAINER_UNKNOWN


@pytest_twisted.ensureDeferred
async def test_a_container_job_says_why_it_cannot_run(site):
    _repository, factory, register = site
    register(container_document())
    plain = register(builder_document())
    # no VM image with a container runtime
    job = await failed(factory, container_job())
    assert job.lifecycle.reason == Reason.NO_MATCHING_IMAGE
    assert "no VM image with a container runtime runs busybox:1" in job.lifecycle.message
    assert reasons(job, plain.ref)["CONTAINER_RUNTIME"] == "image offers no container runtime"
    assert reasons(job, "busybox:1")["CONTAINER_NOT_BOOTABLE"]
    # a runtime, but for another architecture
    arm = register(variant(builder_document(name="arm-crun"), **{
        "origin.architecture": "aarch64", "semantic.container_runtime": CRUN}))
    job = await failed(factory, container_job())
    assert reasons(job, arm.ref) == {"ARCHITECTURE": "architecture is aarch64, required x86_64"}
    # the job asks for another architecture than the container's
    with pytest.raises(JobDescriptionError, match=r"Resources\.CPUArchitecture: the "
                       "container image busybox:1 is for x86_64, not aarch64"):
        await factory.prepare(container_job(CPUArchitecture="aarch64"), ALICE, "")
    # an IMAGE_URL that is no container image and no VM image (nor built from one)
    job = await failed(factory, container_job("docker://nowhere/else:1"))
    assert job.lifecycle.reason == Reason.CONTAINER_UNKNOWN
    assert job.lifecycle.message.startswith(
        "IMAGE_URL docker://nowhere/else:1 names no container image you may use")
    assert factory.instances == {}


@pytest_twisted.ensureDeferred
async def test_the_job_script_runs_the_command_through_the_launcher(site):
    _repository, factory, register = site
    register(container_document())
    desc = parse_job({"ApplicationName": "CONTAINER", "Arguments": ["a b"],
                      "Parameters": {"IMAGE_URL": URL, "COMMAND": "echo $1"},
                      "Environment": {"MINE": "1"}, "Resources": {"CPUs": 1, "Memory": "64M"}})
    await factory.prepare(desc, ALICE, "")
    staged = guest_paths(desc.container, "/home/gridvm/jobs", "/usr/bin/crun")
    script = job_script(desc, "/home/gridvm/jobs/j1", None, staged)
    [line] = [x for x in script.splitlines() if staged.launcher in x]
    assert line.startswith(f"python3 {staged.launcher} --archive {staged.archive} --sha512 ")
    assert ("--workdir /home/gridvm/jobs/j1 --runtime /usr/bin/crun --cpus 1 "
            "--memory-mib 64 --env COMMAND --env IMAGE_URL --env MINE") in line
    assert line.endswith("""-- /bin/sh -c 'echo $1 "$@"' sh 'a b'""")
    assert staged.archive == f"/home/gridvm/jobs/.containers/{sha512(ARCHIVE)[:64]}.oci.tar"


@pytest_twisted.ensureDeferred
async def test_the_site_lists_container_images_under_container_not_as_vm_images(site):
    repository, _factory, register = site
    register(container_document())
    vm = register(builder_document())
    apps = applications_of(repository.list(ALICE))
    assert apps["CONTAINER---v1.0"]["images"] == [vm.ref]
    assert apps["CONTAINER---v1.0"]["containers"] == [URL]
    assert all("busybox:1" not in app["images"] for app in apps.values())


@pytest_twisted.ensureDeferred
async def test_a_container_that_could_not_start_fails_container_failed(site, tmp_path):
    _repository, factory, register = site
    register(container_document())
    desc = container_job()
    await factory.prepare(desc, ALICE, "")
    job = Job(owner="alice", description=desc, reactor=reactor, storage=tmp_path / "job")
    job.storage.mkdir()
    job.exit_code = SETUP_FAILED
    (job.storage / FAILURE_FILE).write_text(
        "the container cannot run: the container image is for arm64, this instance is amd64\n")
    factory.runner._finish(job)
    assert job.lifecycle.reason == Reason.CONTAINER_FAILED
    assert job.lifecycle.message.endswith("the container image is for arm64, this instance is "
                                          "amd64")
    # the same exit code from the command itself is the command's
    plain = Job(owner="alice", description=desc, reactor=reactor, storage=tmp_path / "other")
    plain.exit_code = SETUP_FAILED
    factory.runner._finish(plain)
    assert plain.lifecycle.reason == Reason.NONZERO_EXIT
