"""Cold start by restore against cold start by boot, measured in the same run.

    .venv/bin/python bench/restore.py [--runs 5] [--concurrent 8]

1. Cold submit -> RUNNING through the Python API (no instance of the image up), the
   instance booted and, once the image's snapshot is built, restored; median of --runs
   each, interleaved; the ratio restore / boot; goal: RUNNING by restore <= 1.0 s.
2. The snapshot: build time, save file size; the restore's phases (restore, identity, ready).
3. --concurrent restores started at once through the VM manager, each with its own identity:
   seconds until all agents answer (goal: all within 5 s), against one restore alone.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


async def cold_job(factory, vmm, restorer: SnapshotRestorer | None) -> tuple[float, dict, str]:
    """Seconds from submit to RUNNING of a job that needs a new instance."""
    vmm.restorer = restorer
    to_running, _done, job = await one_job(factory, JOB)
    target = factory.instances[job.instance_id]
    timings = dict(target.vm.timings)
    started_by = target.vm.started_by
    await target.terminate("next run is cold")
    return to_running, timings, started_by


async def concurrent_restores(reactor, vmm, credentials, image, count: int) -> float:
    """Seconds until ``count`` instances restored at once all answer (mutual TLS)."""
    specs = []
    for _ in range(count):
        spec = InstanceSpec(boot=built_image_boot_spec(image), image="bench-concurrent",
                            restorable=True, callback_port=ports.free_port())
        files, issued = instance_context_files(credentials.ca, credentials.server,
                                               spec.instance_id)
        tls = TLSConfig(credentials.server.cert_pem, credentials.server.key_pem,
                        credentials.ca.cert_pem, issued.cert_pem)
        spec.context_files = files
        spec.probe = (lambda t: lambda h, p: probe_agent(reactor, h, p, t))(tls)
        specs.append(spec)
    key, slot = await vmm.restorer.key(specs[0])
    await vmm.restorer.build(specs[0], key, slot)
    started = time.monotonic()
    instances = await defer.gatherResults([vmm.boot(spec) for spec in specs],
                                          consumeErrors=True)
    elapsed = time.monotonic() - started
    restored = sum(i.started_by == "restored" for i in instances)
    for instance in instances:
        await vmm.destroy(instance.instance_id)
    print(f"{count} concurrent: all ready after {elapsed:.2f} s ({restored} restored)",
          flush=True)
    return elapsed


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
        boots, restores, phases = [], [], []
        for run in range(args.runs):
            booted, _t, how_b = await cold_job(factory, vmm, None)
            restored, timings, how_r = await cold_job(factory, vmm, restorer)
            assert (how_b, how_r) == ("booted", "restored"), (how_b, how_r)
            boots.append(booted)
            restores.append(restored)
            phases.append(timings)
            print(f"run {run + 1}: cold RUNNING by boot {booted:.2f} s, by restore "
                  f"{restored:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in timings.items())})",
                  flush=True)
        results["cold_running"] = {
            "boot_median_s": median(boots), "restore_median_s": median(restores),
            "ratio_restore_over_boot": round(statistics.median(restores)
                                             / statistics.median(boots), 3),
            "restore_phases_median_s": {k: median(p[k] for p in phases) for k in phases[0]},
        }
        vmm.restorer = restorer
        one = await concurrent_restores(reactor, vmm, credentials, built, 1)
        many = await concurrent_restores(reactor, vmm, credentials, built, args.concurrent)
        results["concurrent"] = {"count": args.concurrent, "all_ready_s": round(many, 2),
                                 "one_alone_s": round(one, 2),
                                 "ratio_over_linear": round(many / (one * args.concurrent), 3)}
        print(f"cold RUNNING: boot {results['cold_running']['boot_median_s']} s, restore "
              f"{results['cold_running']['restore_median_s']} s (goal <= 1.0 s); save file "
              f"{results['save_file_mb']} MB; {args.concurrent} restores all ready in "
              f"{many:.2f} s (goal <= 5 s)")
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
