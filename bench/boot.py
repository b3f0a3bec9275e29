"""Boot benchmark: gridvm's vmm against bare QEMU, measured in the same run.

    .venv/bin/python bench/boot.py [--runs 5] [--big-gib 10] [--kind initramfs,erofs]

1. Time from ``VirtualMachineManager.boot()`` to "the agent answered" for the image of each
   --kind (default initramfs), against the same kernel + initrd (+ read-only root disk)
   started by bare ``qemu-system-x86_64`` to the same ready signal (median of --runs each,
   interleaved, the kinds side by side); the ratio's goal is <= 1.15.
2. Overlay creation on a 1 GiB and a --big-gib GiB base against a full copy (+ fsync).
3. QEMU resident memory per idle guest (``IDLE_WAIT`` s after ready), the vmm domain (its
   balloon reports the pages the guest frees) against bare QEMU; goal <= 190 MiB.
4. --concurrent (8) cold boots started at once, all ready, against the linear cost
   (--concurrent x the median single boot above); goal <= 1.1.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from image_builder import build_image
from target_system.images import built_image_boot_spec
from vmm import ports
from vmm.hypervisor import Hypervisor
from vmm.manager import BootSpec, InstanceSpec, VirtualMachineManager
from vmm.readiness import ProbeRace, line_probe
from vmm.storage import create_overlay

ROOT = Path("/var/tmp/gridvm-bench")


def boot_spec(image) -> BootSpec:
    return built_image_boot_spec(image)


#: Seconds a booted guest idles before its QEMU's resident memory is read.
IDLE_WAIT = 5.0


def qemu_pid(domain: str) -> int | None:
    try:
        return int(Path(f"/var/run/libvirt/qemu/{domain}.pid").read_text())
    except (OSError, ValueError):
        return None


def pss_mib(pid: int) -> float:
    """Proportional set size: pages shared with other guests (the kernel and initramfs
    files QEMU maps) counted by share."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def wait_probe(reactor, probe, port: int, deadline: float) -> None:
    """The same staggered probing as vmm's readiness wait, so both sides see the same signal."""

    async def in_time() -> None:
        if time.monotonic() >= deadline:
            raise TimeoutError("no answer")

    await ProbeRace(reactor, probe, "127.0.0.1", port).run(in_time)


async def bare_qemu_boot(reactor, spec: BootSpec, workdir: Path,
                         idle: float = 0.0) -> tuple[float, float]:
    """Seconds from starting QEMU to the agent's answer, and QEMU's RSS in MiB ``idle``
    seconds later."""
    port = ports.free_port()
    disk = []
    if spec.disk is not None:  # the read-only shared root of the erofs kind
        disk = ["-drive", f"file={spec.disk.path},if=none,id=d0,format={spec.disk_format},"
                "readonly=on", "-device", "virtio-blk-pci,drive=d0,serial=gridvm-root"]
    cmd = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg,tb-size=32", "-m", "256",
        "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(spec.kernel.path), "-initrd", str(spec.initrd.path),
        "-append", spec.cmdline, "-serial", f"file:{workdir / 'bare-console.log'}",
        "-device", "virtio-rng-pci",
        "-netdev", f"user,id=n0,net=10.0.2.0/24,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:4433",
        "-device", "virtio-net-pci,netdev=n0", *disk,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_probe(reactor, line_probe(reactor), port, started + 120)
        elapsed = time.monotonic() - started
        await task.deferLater(reactor, idle, lambda: None)
        return elapsed, rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def concurrent_boots(manager: VirtualMachineManager, spec: BootSpec,
                           count: int) -> float:
    """Seconds until ``count`` boots started together are all ready (all destroyed after)."""
    started = time.monotonic()
    boots = [manager.boot(InstanceSpec(boot=spec, callback_port=ports.free_port(),
                                      context_files={"bench.txt": b"x"}))
             for _ in range(count)]
    results = await defer.DeferredList(boots, consumeErrors=True)
    elapsed = time.monotonic() - started
    for ok, instance in results:
        if ok:
            await manager.destroy(instance.instance_id)
    failed = [str(failure.value)[:200] for ok, failure in results if not ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} concurrent boots failed: {failed[0]}")
    return elapsed


async def vmm_boot(reactor, manager: VirtualMachineManager, spec: BootSpec) -> tuple[float,
                                                                                      dict, float]:
    started = time.monotonic()
    instance = await manager.boot(InstanceSpec(boot=spec, callback_port=ports.free_port(),
                                               context_files={"bench.txt": b"x"}))
    elapsed = time.monotonic() - started
    pid = qemu_pid(instance.domain)
    await task.deferLater(reactor, IDLE_WAIT, lambda: None)  # idle: freed pages reported
    rss = rss_mib(pid) if pid else 0.0
    pss = pss_mib(pid) if pid else 0.0
    print(f"  vmm domain idle: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB", flush=True)
    await manager.destroy(instance.instance_id)
    return elapsed, instance.timings, rss, pss


def write_base(path: Path, gib: float) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(int(gib * 1024)):
            f.write(block[i % 7:] + block[: i % 7])
        f.flush()
        os.fsync(f.fileno())


def overlay_vs_copy(base: Path, workdir: Path) -> dict[str, float]:
    overlay_times, copy_times = [], []
    for i in range(3):
        started = time.monotonic()
        create_overlay(base, workdir / f"ov{i}.qcow2", backing_format="raw")
        overlay_times.append(time.monotonic() - started)
        (workdir / f"ov{i}.qcow2").unlink()
    started = time.monotonic()
    shutil.copyfile(base, workdir / "copy.img")
    with open(workdir / "copy.img", "rb+") as f:
        os.fsync(f.fileno())
    copy_times.append(time.monotonic() - started)
    (workdir / "copy.img").unlink()
    overlay = statistics.median(overlay_times)
    copy = statistics.median(copy_times)
    return {"overlay_s": round(overlay, 4), "copy_s": round(copy, 3),
            "copy_over_overlay": round(copy / overlay, 1)}


def kind_figures(kind: str, figures: dict[str, list]) -> dict:
    """The medians of one kind's runs, printed and as the JSON line's values."""
    vmm_median, bare_median = statistics.median(figures["vmm"]), statistics.median(figures["bare"])
    phases = figures["phases"]
    result = {
        "boot": {"vmm_median_s": round(vmm_median, 3), "bare_qemu_median_s": round(bare_median, 3),
                 "ratio": round(vmm_median / bare_median, 3),
                 "vmm_phases_median_s": {k: round(statistics.median(p[k] for p in phases), 3)
                                         for k in phases[0]}},
        "qemu_rss_mib": {"vmm_domain": round(statistics.median(figures["rss"]), 1),
                         "bare_qemu": round(statistics.median(figures["bare_rss"]), 1)},
        "qemu_pss_mib": {"vmm_domain": round(statistics.median(figures["pss"]), 1)},
    }
    print(f"{kind}: boot to ready: vmm {vmm_median:.2f} s, bare QEMU {bare_median:.2f} s, "
          f"ratio {vmm_median / bare_median:.3f} (goal <= 1.15)")
    print(f"{kind}: QEMU RSS per guest: vmm domain {result['qemu_rss_mib']['vmm_domain']} MiB, "
          f"bare {result['qemu_rss_mib']['bare_qemu']} MiB, "
          f"vmm domain PSS {result['qemu_pss_mib']['vmm_domain']} MiB (goal <= 190)")
    return result


async def main(reactor, args) -> None:
    ROOT.mkdir(mode=0o755, exist_ok=True)
    kinds = args.kind.split(",")
    specs = {kind: boot_spec(build_image(kind, output_root=ROOT / "images",
                                         agent_package=args.agent and Path(args.agent)))
             for kind in kinds}
    manager = VirtualMachineManager(Hypervisor(args.uri, reactor), ROOT / "state",
                                    reactor=reactor, prefix="gridvm-bench-",
                                    tb_cache_mib=args.tb_cache_mib)
    await manager.start()
    workdir = Path(tempfile.mkdtemp(dir=ROOT))
    workdir.chmod(0o755)
    results: dict = {"runs": args.runs}
    try:
        for spec in specs.values():
            await vmm_boot(reactor, manager, spec)  # warm the cache and libvirt
        runs: dict[str, dict[str, list]] = {kind: {"vmm": [], "bare": [], "rss": [], "pss": [],
                                                   "bare_rss": [], "phases": []}
                                            for kind in specs}
        for run in range(args.runs):
            for kind, spec in specs.items():
                figures = runs[kind]
                t, timing, rss, pss = await vmm_boot(reactor, manager, spec)
                b, brss = await bare_qemu_boot(reactor, spec, workdir, IDLE_WAIT)
                for key, value in (("vmm", t), ("bare", b), ("rss", rss), ("pss", pss),
                                   ("bare_rss", brss), ("phases", timing)):
                    figures[key].append(value)
                print(f"run {run + 1} {kind}: vmm {t:.2f} s  bare qemu {b:.2f} s", flush=True)
        results["kinds"] = {kind: kind_figures(kind, figures) for kind, figures in runs.items()}
        first = results["kinds"][kinds[0]]
        results.update(boot=first["boot"], qemu_rss_mib=first["qemu_rss_mib"],
                       qemu_pss_mib=first["qemu_pss_mib"])
        vmm_median = first["boot"]["vmm_median_s"]
        spec = specs[kinds[0]]
        if args.concurrent > 0:
            together = await concurrent_boots(manager, spec, args.concurrent)
            linear = args.concurrent * vmm_median
            results["concurrent"] = {"boots": args.concurrent, "all_ready_s": round(together, 2),
                                     "linear_s": round(linear, 2),
                                     "ratio": round(together / linear, 3)}
            print(f"{args.concurrent} concurrent cold boots all ready in {together:.1f} s, "
                  f"linear {linear:.1f} s, ratio {together / linear:.3f} (goal <= 1.1)")

        results["overlay"] = {}
        for gib in (1, args.big_gib):
            if gib <= 0:
                continue
            base = workdir / f"base-{gib}g.img"
            write_base(base, gib)
            figures = overlay_vs_copy(base, workdir)
            base.unlink()
            results["overlay"][f"{gib}GiB"] = figures
            print(f"{gib} GiB base: overlay {figures['overlay_s'] * 1000:.1f} ms, full copy "
                  f"{figures['copy_s']:.2f} s ({figures['copy_over_overlay']}x)")
    finally:
        await manager.hypervisor.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"bench": "boot", **results}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-gib", type=float, default=10)
    parser.add_argument("--concurrent", type=int, default=8,
                        help="cold boots started at once (0: skip)")
    parser.add_argument("--tb-cache-mib", type=int, default=None,
                        help="the vmm domains' TCG cache (default: vmm's choice per image)")
    parser.add_argument("--kind", default="initramfs",
                        help="image kinds to measure side by side, comma-separated (e.g. "
                        "initramfs,erofs; the JSON line's top-level figures are the first's)")
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--agent", default=None,
                        help="agent package directory for the guest (default: tsi_bridge)")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
