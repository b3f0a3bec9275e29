"""The main job, end to end on this machine: build the demo image, boot it, run a job.

Used by ``make demo`` (README).  Prints what each phase did and how long it took.
"""

from __future__ import annotations

import sys
import time

from twisted.internet import defer, task

from client.config import gridvm_home
from client.errors import EXIT_FAILED, EXIT_UNAVAILABLE, CliError


def say(message: str) -> None:
    print(message, flush=True)


async def _demo(reactor, kind: str, uri: str) -> None:
    from image_repo.builder import BuildError, build_image
    from target_system.images import built_image_boot_spec
    from vmm.errors import VMMError
    from vmm.hypervisor import Hypervisor
    from vmm.manager import InstanceSpec, VirtualMachineManager

    home = gridvm_home()
    say(f"[demo] building the {kind} guest image (cached after the first build) ...")
    try:
        image = build_image(kind, output_root=home / "images")
    except BuildError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE, reason=err.reason) from None
    say(f"[demo] image {image.directory.name}: "
        + ("cached" if image.cached else f"built in {image.seconds:.1f} s"))
    meta = image.metadata
    boot = built_image_boot_spec(image)

    manager = VirtualMachineManager(Hypervisor(uri, reactor), home / "vmm", reactor=reactor,
                                    prefix="gridvm-demo-")
    try:
        await manager.start()
        say(f"[demo] booting a VM through libvirt ({uri}) ...")
        started = time.monotonic()
        instance = await manager.boot(InstanceSpec(boot=boot, image=meta["general"]["name"],
                                                   memory_mib=256))
        say(f"[demo] VM {instance.domain} ready in {time.monotonic() - started:.2f} s; "
            f"agent says {instance.greeting!r}")
        for phase, seconds in instance.timings.items():
            say(f"         {phase:<8} {seconds:7.2f} s")
        say("[demo] console (last lines):")
        for line in instance.console_tail(4).splitlines():
            say(f"         {line}")
        await manager.destroy(instance.instance_id)
        say("[demo] VM destroyed, overlay and medium removed")
    except VMMError as err:
        raise CliError(str(err), EXIT_FAILED, reason=err.reason) from None
    finally:
        await manager.hypervisor.close()


def run_demo(kind: str = "initramfs", uri: str = "qemu:///system") -> int:
    failure: list[CliError] = []

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
