"""``gridvm demo``: the README's main job, end to end on this machine.

Build the demo image (cached), start a gridvm site (REST over HTTPS on 127.0.0.1), register
the image, and submit through the UNICORE REST API a job that states image *requirements*
(OS, application, resources — no image name).  The site matches an image, boots a VM through
libvirt + QEMU, runs the job through the TSI agent over mutual TLS and keeps its outputs.
Prints each state as the client sees it, the job's output and the phase timings.  Used by
``make demo`` (README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from twisted.internet import defer, task

from base.paths import gridvm_home
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


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="build the demo image, boot it and run the main job end to end"
    )
    demo.add_argument("--kind", choices=("initramfs", "qcow2"), default="initramfs")
    demo.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    demo.set_defaults(func=lambda args: run_demo(kind=args.kind, uri=args.uri))


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
    import secrets

    from twisted.internet import threads

    from client.api import Site
    from gridvm.catalogue import ProgressReport
    from image_builder import BuildError, build_image
    from tsf.config import config_from_dict
    from tsf.service import start_site
    from tsf.users import User, hash_password
    from vmm.errors import VMMError

    home = gridvm_home()
    root = home / "demo"
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"[demo] building the {kind} guest image (cached after the first build) ...")
    try:
        built = build_image(kind, output_root=home / "images",
                            progress=ProgressReport(sys.stdout, "[demo]  "))
    except BuildError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE, reason=err.reason) from None
    say(f"[demo] image {built.directory.name}: "
        + ("cached" if built.cached else f"built in {built.seconds:.1f} s"))

    config = config_from_dict({
        "site": {"name": "DEMO", "state_dir": str(root / "site"), "libvirt_uri": uri,
                 "domain_prefix": "gridvm-demo-", "keep_instances": False},
        "http": {"port": -1}, "https": {"port": 0},
        "health": {"idle_timeout": 0},
    })
    try:
        site = await start_site(config, reactor)
    except VMMError as err:
        raise CliError(f"cannot use libvirt at {uri}: {err}", EXIT_UNAVAILABLE,
                       reason=err.reason) from None
    try:
        password = secrets.token_urlsafe(16)
        site.users.put(User("demo-user", hash_password(password), groups=("users",),
                            vos=("demo",)))
        creator = User("image-creator", "", groups=("images",)).caller
        record, new = await threads.deferToThread(_register_once, site.repository, built,
                                                  creator)
        say(f"[demo] gridvm site up: {site.https_base} (HTTPS, self-signed)")
        say(f"[demo] image {record.ref} {'registered' if new else 'already registered'} "
            f"(id {record.id[:12]})")
        client = Site(site.https_base, "demo-user", password, verify=False)

        def run_job() -> None:
            say("[demo] submitting over the UNICORE REST API a job with image requirements:")
            say("         " + json.dumps(DEMO_JOB["Resources"]) + " + ApplicationName python3")
            job = client.submit(DEMO_JOB)
            say(f"[demo] job {job.url}")
            job.wait(interval=0.25, on_change=lambda props: say(
                f"[job]  {props['status']}" + (f" ({props['statusMessage']})"
                                               if props.get("statusMessage") else "")))
            props = job.properties()
            if props["status"] != "SUCCESSFUL":
                stderr = job.read(DEMO_JOB.get("Stderr", "stderr"))
                for line in stderr.decode(errors="replace").splitlines()[-10:]:
                    say(f"[stderr] {line}")
                raise CliError(props.get("statusMessage") or "the job failed", EXIT_FAILED,
                               reason=props.get("gridvm", {}).get("reason"))
            say(f"[demo] matched image {props['gridvm']['image']}; "
                f"instance {props['gridvm']['instance']}")
            say("[demo] the job's output (stdout), read over REST:")
            for line in job.read("stdout").decode().splitlines():
                say(f"         {line}")
            instance = client.get(f"instances/{props['gridvm']['instance']}")
            say("[demo] phase timings:")
            for phase, seconds in (instance.get("phases") or {}).items():
                if phase in ("REQUESTED", "STAGING", "BOOTING", "CONNECTING"):
                    say(f"         vm  {phase.lower():<11} {seconds:6.2f} s")
            for phase, seconds in props.get("consumedTime", {}).items():
                label = "waiting" if phase == "READY" else phase.lower()  # match + boot
                say(f"         job {label:<11} {seconds:6.2f} s")
            say(f"         total       {time.monotonic() - started:6.2f} s")

        await threads.deferToThread(run_job)
    finally:
        await site.stopService()
    say("[demo] site stopped; VM destroyed, overlay, medium and ports released")


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
