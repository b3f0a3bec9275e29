"""The main job, end to end on this machine.

Build the demo image (cached), register it in a local image repository, submit a job that
states image *requirements* (OS, application, resources — no image name), and let the
factory match an image, boot a VM through libvirt + QEMU, run the job through the TSI agent
over mutual TLS, and copy its outputs back.  Prints each phase as it happens, the job's
output, and the phase timings.  Used by ``make demo`` (README).
"""

from __future__ import annotations

import json
import sys
import time

from twisted.internet import defer, task

from client.config import gridvm_home
from client.errors import EXIT_FAILED, EXIT_UNAVAILABLE, CliError

DEMO_JOB = {
    "Name": "gridvm demo",
    "ApplicationName": "python3",
    "Arguments": ["-c", (
        "import os, platform, pwd, sys; "
        "print('Hello from', platform.node(), 'running Linux', platform.release()); "
        "print('Python', sys.version.split()[0], 'as user', pwd.getpwuid(os.getuid())[0]); "
        "print('input says:', open('input.txt').read().strip())")],
    "Imports": [{"From": "inline://dummy", "To": "input.txt",
                 "Data": "hello from the submitting host"}],
    "Resources": {"OperatingSystem": "debian", "OperatingSystemVersion": ">=12",
                  "CPUs": 1, "Memory": "256M", "Runtime": "5min"},
}


def say(message: str) -> None:
    print(message, flush=True)


def _register_once(repository, built, caller):
    """The image's record, registering it only if these exact files are not there yet."""
    meta = built.metadata
    digests = sorted(ref["sha512"] for ref in meta["origin"]["content"])
    for record in repository.list(caller, name=meta["general"]["name"]):
        if sorted(ref.sha512 for ref in record.metadata.origin.content) == digests \
                and record.status == "active":
            return record, False
    files = {ref["file"]: built.directory / ref["file"] for ref in meta["origin"]["content"]}
    return repository.register(meta, files, caller), True


async def _demo(reactor, kind: str, uri: str) -> None:
    from image_repo.access import Caller
    from image_repo.builder import BuildError, build_image
    from image_repo.db import make_engine, sqlite_url
    from image_repo.repository import ImageRepository
    from target_system.instance import SiteCredentials
    from tsf.factory import TargetSystemFactory
    from vmm.errors import VMMError
    from vmm.hypervisor import Hypervisor
    from vmm.manager import VirtualMachineManager

    home = gridvm_home()
    demo = home / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"[demo] building the {kind} guest image (cached after the first build) ...")
    try:
        built = build_image(kind, output_root=home / "images")
    except BuildError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE, reason=err.reason) from None
    say(f"[demo] image {built.directory.name}: "
        + ("cached" if built.cached else f"built in {built.seconds:.1f} s"))

    creator = Caller.of("image-creator", groups=["images"])
    user = Caller.of("demo-user", groups=["users"])
    repository = ImageRepository(make_engine(sqlite_url(demo / "catalogue.sqlite")),
                                 demo / "store")
    record, new = _register_once(repository, built, creator)
    say(f"[demo] image {record.ref} {'registered' if new else 'already registered'} "
        f"(id {record.id[:12]})")

    vmm = VirtualMachineManager(Hypervisor(uri, reactor), demo / "vmm", reactor=reactor,
                                prefix="gridvm-demo-")
    try:
        await vmm.start()
    except VMMError as err:
        raise CliError(f"cannot use libvirt at {uri}: {err}", EXIT_UNAVAILABLE,
                       reason=err.reason) from None
    vmm.remove_stale_directories()
    factory = TargetSystemFactory(repository, vmm, SiteCredentials.load_or_create(demo / "ca"),
                                  demo / "storage", reactor)
    try:
        say("[demo] submitting a job with image requirements:")
        say("         " + json.dumps(DEMO_JOB["Resources"]) + " + ApplicationName python3")
        job = factory.submit(DEMO_JOB, user)

        def show_job(transition) -> None:
            say(f"[job]  {transition.state.name}" + (
                f" ({transition.reason}: {transition.message})" if transition.reason else ""))

        def show_instance(target, transition) -> None:
            say(f"[vm]   {transition.state.name}" + (
                f" ({transition.reason}: {transition.message})" if transition.reason else ""))

        job.lifecycle.listeners.append(show_job)
        watched: set[str] = set()

        def watch_instances() -> None:
            for target in factory.instances.values():
                if target.instance_id not in watched:
                    watched.add(target.instance_id)
                    target.listeners.append(show_instance)
                    say(f"[demo] matched image {target.image.name}; instance "
                        f"{target.instance_id} ({target.vcpus} vCPU, {target.memory_mib} MiB) "
                        f"is {target.state.name}")

        watcher = task.LoopingCall(watch_instances)
        watcher.clock = reactor
        watcher.start(0.05)
        await factory.wait(job.job_id, user)
        watcher.stop()

        if job.state.name != "SUCCESSFUL":
            stderr = job.storage / job.description.stderr
            if stderr.exists():
                say("[demo] the job's stderr:")
                for line in stderr.read_text(errors="replace").splitlines()[-10:]:
                    say(f"         {line}")
            raise CliError(job.lifecycle.message or "the job failed", EXIT_FAILED,
                           reason=job.lifecycle.reason)
        say("[demo] the job's output (stdout), copied back from the VM:")
        for line in (job.storage / job.description.stdout).read_text().splitlines():
            say(f"         {line}")
        target = factory.instances[job.instance_id]
        say("[demo] phase timings:")
        for phase, seconds in target.lifecycle.phase_seconds().items():
            if phase in ("REQUESTED", "STAGING", "BOOTING", "CONNECTING"):
                say(f"         vm  {phase.lower():<11} {seconds:6.2f} s")
        for phase, seconds in job.lifecycle.phase_seconds().items():
            label = "waiting" if phase == "READY" else phase.lower()  # match + boot
            say(f"         job {label:<11} {seconds:6.2f} s")
        say(f"         total       {time.monotonic() - started:6.2f} s")
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("demo over")
        await vmm.hypervisor.close()
        repository.close()
    say("[demo] VM destroyed; overlay, medium and ports released; outputs kept in "
        f"{job.storage}")


def run_demo(kind: str = "initramfs", uri: str = "qemu:///system") -> int:
    failure: list[BaseException] = []

    async def main(reactor):
        try:
            await _demo(reactor, kind, uri)
        except CliError as err:
            failure.append(err)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    if failure:
        raise failure[0]
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
