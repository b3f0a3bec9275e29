"""Cold start by restore against cold start by boot, measured in the same run.

    .venv/bin/python bench/restore.py [--runs 5] [--concurrent 8]

1. Cold submit -> RUNNING through the Python API (no instance of the image up), the
   instance booted and, once the image's snapshot is built, restored (the agent's ack its
   readiness, the restored domain's own TCG cache), restored with the booted domains' TCG
   cache, and restored as before (a probe after the ack, the booted domains' cache); median
   of --runs each, interleaved; the ratios over boot; goal: RUNNING by restore <= 1.0 s.
2. The snapshot: build time, save file size; the restore's phases (restore, identity, ready
   when probed) and the site's (booting, connecting: the TSI link's first ping, ready to
   running: the SUBMIT).
3. --concurrent restores started at once through the VM manager, each with its own identity:
   seconds until all acked and until each also answered a mutual-TLS probe (goal: all
   within 5 s), against one restore alone and against as many restored as before.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import libvirt_qemu
from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import pss_mib, qemu_pid  # the same QEMU memory figure as bench/boot.py
from e2e import JOB, one_job  # the same cold job as bench/e2e.py

from base.db import make_engine, sqlite_url
from base.identity import Caller
from image_builder import build_image
from image_repo.repository import ImageRepository
from target_system.images import built_image_boot_spec
from target_system.instance import HealthPolicy, SiteCredentials
from tsf.factory import Quotas, TargetSystemFactory
from tsi_bridge.context import instance_context_files
from tsi_bridge.readiness import probe_agent
from tsi_bridge.tls import TLSConfig
from vmm import ports
from vmm.hypervisor import Hypervisor
from vmm.manager import InstanceSpec, VirtualMachineManager
from vmm.restoring import SnapshotRestorer

ROOT = Path("/var/tmp/gridvm-bench")


def median(values) -> float:
    return round(statistics.median(values), 3)


def qemu_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a QEMU process so far (work done, less noisy than
    wall time on a shared host)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def site_path(target, job) -> dict[str, float]:
    """The site's part of the cold path: the instance's VM start (BOOTING, restore or boot
    included), its TSI link's first ping (CONNECTING), and from READY to the job RUNNING."""
    entered = target.lifecycle.entered
    running = next(at for name, at in job.lifecycle.history if name == "RUNNING")
    return {"site_booting": entered["CONNECTING"] - entered["BOOTING"],
            "site_connecting": entered["READY"] - entered["CONNECTING"],
            "site_ready_to_running": running - entered["READY"]}


async def cold_job(factory, vmm, restorer: SnapshotRestorer | None) -> tuple[float, dict, str]:
    """Seconds from submit to RUNNING of a job that needs a new instance, its phases and
    its QEMU's PSS once the job is done."""
    vmm.restorer = restorer
    to_running, _done, job = await one_job(factory, JOB)
    target = factory.instances[job.instance_id]
    pid = qemu_pid(target.vm.domain)
    jit = await vmm.hypervisor.run(lambda conn: libvirt_qemu.qemuMonitorCommand(
        conn.lookupByName(target.vm.domain), "info jit",
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
    timings = {**target.vm.timings, **site_path(target, job),
               "qemu_cpu_s_after_job": qemu_cpu_seconds(pid) if pid else 0.0,
               "tb_flushes_after_job": float(re.search(r"TB flush count\s+(\d+)", jit)[1]),
               "qemu_pss_mib_after_job": pss_mib(pid) if pid else 0.0}
    started_by = target.vm.started_by
    await target.terminate("next run is cold")
    return to_running, timings, started_by


async def concurrent_restores(reactor, vmm, credentials, image, count: int) -> dict:
    """Seconds until ``count`` instances restored at once all acked their identities, and
    until each also answered a mutual-TLS probe (one attempt at a time, after its ack)."""
    specs, probes = [], {}
    for _ in range(count):
        spec = InstanceSpec(boot=built_image_boot_spec(image), image="bench-concurrent",
                            restorable=True, callback_port=ports.free_port())
        files, issued = instance_context_files(credentials.ca, credentials.server,
                                               spec.instance_id)
        tls = TLSConfig(credentials.server.cert_pem, credentials.server.key_pem,
                        credentials.ca.cert_pem, issued.cert_pem)
        spec.context_files = files
        spec.probe = probes[spec.instance_id] = (
            lambda t: lambda h, p: probe_agent(reactor, h, p, t, timeout=15.0))(tls)
        specs.append(spec)
    key, slot = await vmm.restorer.key(specs[0])
    await vmm.restorer.build(specs[0], key, slot)
    started = time.monotonic()
    acked: list[float] = []

    async def one(spec):
        instance = await vmm.boot(spec)
        acked.append(time.monotonic() - started)
        if instance.started_by == "restored" and not vmm.restorer.probe_after_ack:
            await probes[spec.instance_id](vmm.address, instance.host_port)
        return instance

    instances = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(one(spec)) for spec in specs], consumeErrors=True)
    elapsed = time.monotonic() - started
    restored = sum(i.started_by == "restored" for i in instances)
    for instance in instances:
        await vmm.destroy(instance.instance_id)
    print(f"{count} concurrent: all acked after {max(acked):.2f} s, all answered after "
          f"{elapsed:.2f} s ({restored} restored)", flush=True)
    return {"acked": max(acked), "answered": elapsed}


async def main(reactor, args) -> None:
    ROOT.mkdir(mode=0o755, exist_ok=True)
    built = build_image("initramfs", output_root=ROOT / "images")
    work = Path(tempfile.mkdtemp(dir=ROOT))
    work.chmod(0o755)
    repository = ImageRepository(make_engine(sqlite_url(work / "catalogue.sqlite")),
                                 work / "store")
    files = {r["file"]: built.directory / r["file"] for r in built.metadata["origin"]["content"]}
    repository.register(built.metadata, files, Caller.of("creator", groups=["images"]))
    vmm = VirtualMachineManager(Hypervisor(args.uri, reactor), work / "vmm", reactor=reactor,
                                prefix="gridvm-bench-rs-", restore=True)
    await vmm.start()
    restorer = vmm.restorer
    credentials = SiteCredentials.load_or_create(work / "ca")
    factory = TargetSystemFactory(repository, vmm, credentials, work / "storage", reactor,
                                  quotas=Quotas(8, 8), health=HealthPolicy(idle_timeout=None))
    results: dict = {"runs": args.runs}
    try:
        started = time.monotonic()
        await cold_job(factory, vmm, restorer)  # boots, and builds the snapshot meanwhile
        await defer.gatherResults(list(restorer.builds.values()))
        results["snapshot_ready_after_first_job_s"] = round(time.monotonic() - started, 2)
        snapshot = restorer.store.all()[0]
        results["save_file_mb"] = round(snapshot.save_bytes / 1e6, 1)
        boots: list[float] = []
        #: variant -> (probe after the ack, restored domains' TCG cache), as before: probed, 32
        settings = {"restore": (False, restorer.tb_cache_mib),
                    "restore_tb_cache_32": (False, None),
                    "restore_before": (True, None)}
        variants = {name: ([], []) for name in settings}  # (seconds, phases)
        for run in range(args.runs):
            booted, _t, how_b = await cold_job(factory, vmm, None)
            assert how_b == "booted", how_b
            boots.append(booted)
            line = f"run {run + 1}: cold RUNNING by boot {booted:.2f} s"
            for variant, (seconds, phases) in variants.items():
                restorer.probe_after_ack, restorer.tb_cache_mib = settings[variant]
                restored, timings, how_r = await cold_job(factory, vmm, restorer)
                assert how_r == "restored", how_r
                seconds.append(restored)
                phases.append(timings)
                line += (f"; by {variant} {restored:.2f} s "
                         f"({', '.join(f'{k} {v:.2f}' for k, v in timings.items())})")
            restorer.probe_after_ack, restorer.tb_cache_mib = settings["restore"]
            print(line, flush=True)
        cold = results["cold_running"] = {"boot_median_s": median(boots)}
        for variant, (seconds, phases) in variants.items():
            cold[f"{variant}_median_s"] = median(seconds)
            cold[f"ratio_{variant}_over_boot"] = round(statistics.median(seconds)
                                                       / statistics.median(boots), 3)
            cold[f"{variant}_phases_median_s"] = {k: median(p[k] for p in phases)
                                                  for k in phases[0]}
        vmm.restorer = restorer
        one = await concurrent_restores(reactor, vmm, credentials, built, 1)
        restorer.probe_after_ack, restorer.tb_cache_mib = settings["restore_before"]
        before = await concurrent_restores(reactor, vmm, credentials, built, args.concurrent)
        restorer.probe_after_ack, restorer.tb_cache_mib = settings["restore"]
        many = await concurrent_restores(reactor, vmm, credentials, built, args.concurrent)
        results["concurrent"] = {
            "count": args.concurrent, "all_acked_s": round(many["acked"], 2),
            "all_answered_s": round(many["answered"], 2),
            "before_all_answered_s": round(before["answered"], 2),
            "one_alone_answered_s": round(one["answered"], 2),
            "ratio_over_linear": round(many["answered"] / (one["answered"] * args.concurrent),
                                       3)}
        print(f"cold RUNNING: boot {cold['boot_median_s']} s, restore "
              f"{cold['restore_median_s']} s (32 MiB TCG cache: "
              f"{cold['restore_tb_cache_32_median_s']} s, as before: "
              f"{cold['restore_before_median_s']} s; goal <= 1.0 s); save file "
              f"{results['save_file_mb']} MB; {args.concurrent} restores all answered in "
              f"{many['answered']:.2f} s (as before: {before['answered']:.2f} s; goal <= 5 s)")
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("bench done")
        await vmm.hypervisor.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "restore", **results}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--uri", default="qemu:///system")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
