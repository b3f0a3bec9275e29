"""End-to-end benchmark through the Python API: requirements → job RUNNING → SUCCESSFUL.

    .venv/bin/python bench/e2e.py [--runs 5] [--jobs 20]

- cold: each job needs a new instance (boot included); reused: an idle instance is there;
  pooled: the user has no instance, a warm pool's pre-booted one is taken; median of --runs
  each (reused and pooled also their fastest run: on a shared host the guest's share of the
  CPU decides most of a SUBMIT's time), with the bare QEMU boot of bench/boot.py measured in
  the same run and the ratio cold-RUNNING / bare boot;
- sustained small-job throughput on one instance (2 vCPUs; --jobs, IN_FLIGHT at a time), with
  gridvm's small-job extensions and, as the baseline, with standard TSI commands only;
- per-phase times (instance and job; for reused and pooled jobs the phases before RUNNING).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import bare_qemu_boot  # the same baseline as bench/boot.py

from base.db import make_engine, sqlite_url
from base.identity import Caller
from image_builder import build_image
from image_repo.repository import ImageRepository
from target_system.images import built_image_boot_spec
from target_system.instance import HealthPolicy, SiteCredentials
from tsf.admission import Admission, UserLimits
from tsf.factory import Quotas, TargetSystemFactory
from tsf.pools import PoolSpec
from vmm.hypervisor import Hypervisor
from vmm.manager import VirtualMachineManager

ROOT = Path("/var/tmp/gridvm-bench")
USER = Caller.of("bench", groups=["users"])
JOB = {"Executable": "true", "Resources": {"OperatingSystem": "debian", "CPUs": 1}}
#: Jobs of the throughput run unfinished at once (four per job slot of the instance).
IN_FLIGHT = 8
#: gridvm's small-job extensions, switched off for the throughput baseline
STANDARD_ONLY = {"GRIDVM_MKDIR", "GRIDVM_REMOVE", "GRIDVM_WAITSTATUS", "GRIDVM_SUBMIT"}
#: Jobs of the per-exchange breakdown (one at a time).
BREAKDOWN_JOBS = 20
JOB_PHASES = ("READY", "STAGINGIN", "QUEUED", "RUNNING", "STAGINGOUT")


def median(values):
    return round(statistics.median(values), 3)


def phases_to_running(phases: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds of each job phase before RUNNING (READY: matching and placement,
    STAGINGIN: the job directory and inputs, QUEUED: the SUBMIT exchange)."""
    return {k: median([p.get(k, 0) for p in phases]) for k in ("READY", "STAGINGIN", "QUEUED")}


async def one_job(factory, description) -> tuple[float, float, object]:
    """Seconds from submit to RUNNING and to SUCCESSFUL."""
    started = time.monotonic()
    marks = {}
    job = factory.submit(description, USER)
    job.lifecycle.listeners.append(
        lambda t: marks.setdefault(t.state.name, time.monotonic()))
    await factory.wait(job.job_id, USER)
    if job.state.name != "SUCCESSFUL":
        raise RuntimeError(f"job failed: {job.status_message}")
    return marks["RUNNING"] - started, marks["SUCCESSFUL"] - started, job


async def many_jobs(factory, description, count: int
                    ) -> tuple[int, float, set, dict, float]:
    """``count`` jobs, at most ``IN_FLIGHT`` unfinished at a time (sustained: a fresh one as
    each ends; 200 at once overload one small guest); (successful, seconds, instances,
    median seconds per job phase, the site's own CPU milliseconds per job)."""
    started, cpu = time.monotonic(), time.process_time()
    jobs = []
    window = defer.DeferredSemaphore(IN_FLIGHT)

    def one() -> defer.Deferred:
        jobs.append(factory.submit(description, USER))
        return factory.wait(jobs[-1].job_id, USER)

    await defer.gatherResults([window.run(one) for _ in range(count)])
    elapsed = time.monotonic() - started
    site_cpu_ms = round((time.process_time() - cpu) * 1000 / count, 1)
    phases = [j.lifecycle.phase_seconds() for j in jobs]
    return (sum(j.state.name == "SUCCESSFUL" for j in jobs), elapsed,
            {j.instance_id for j in jobs},
            {k: median([p.get(k, 0) for p in phases]) for k in JOB_PHASES}, site_cpu_ms)


#: The guest's CPU counters: the whole machine's, then each python3 process's (the agent,
#: its helpers and launchers; the jobs themselves are their children, counted apart).
GUEST_CPU = "head -1 /proc/stat; cat /proc/[0-9]*/stat 2>/dev/null | grep '(python3' || true"


async def guest_cpu(tsi) -> tuple[int, int]:
    """(busy jiffies of the whole guest, jiffies of its python3 processes)."""
    lines = (await tsi.execute_script(GUEST_CPU)).splitlines()
    cpu = [int(v) for v in lines[0].split()[1:]]
    busy = sum(cpu) - cpu[3] - cpu[4]  # all but idle and iowait
    python = sum(int(f[11]) + int(f[12]) for f in
                 (line.rsplit(")", 1)[1].split() for line in lines[1:] if ")" in line))
    return busy, python


async def exchange_breakdown(reactor, target) -> dict[str, float]:
    """Median milliseconds of each TSI exchange of a small job, one job at a time on the
    idle instance: what a job costs without queueing (PING: the bare round trip)."""
    tsi, root = target.tsi, target.settings.workdir_root
    script = "echo $? > UNICORE_SCRIPT_EXIT_CODE\n"
    times: dict[str, list[float]] = {}

    async def timed(name, call, *args, **kwargs):
        started = time.monotonic()
        result = await call(*args, **kwargs)
        times.setdefault(name, []).append((time.monotonic() - started) * 1000)
        return result

    await tsi.wait_status(0)  # answers at once: the count of ended jobs known
    for n in range(BREAKDOWN_JOBS):
        workdir = f"{root}/breakdown-{n}"
        await timed("PING", tsi.ping)
        bssid = await timed("GRIDVM_SUBMIT", tsi.submit_with_files, script, [],
                            uspace_dir=workdir)
        while bssid in await timed("GRIDVM_WAITSTATUS (to the job's end)", tsi.wait_status,
                                   5):
            pass
        local = Path(tempfile.mkdtemp(dir=ROOT)) / "out.tar"
        # stage-out and removal in one exchange, as the job runner sends them
        await timed("GRIDVM_GETDIRECTORY (then remove)", tsi.get_directory, workdir,
                    str(local), then_remove=True)
        shutil.rmtree(local.parent)
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


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
                                prefix="gridvm-bench-e2e-")
    await vmm.start()
    factory = TargetSystemFactory(repository, vmm, SiteCredentials.load_or_create(work / "ca"),
                                  work / "storage", reactor, quotas=Quotas(4, 8),
                                  health=HealthPolicy(idle_timeout=None),
                                  admission=Admission(users=UserLimits(
                                      unfinished_jobs=max(100, args.jobs))))
    factory.runner.poll_interval = args.poll
    results: dict = {"runs": args.runs, "poll_interval_s": args.poll}
    try:
        cold_running, cold_done, bare, instance_phases, job_phases = [], [], [], [], []
        for run in range(args.runs):
            to_running, to_done, job = await one_job(factory, JOB)
            cold_running.append(to_running)
            cold_done.append(to_done)
            target = factory.instances[job.instance_id]
            instance_phases.append(target.lifecycle.phase_seconds())
            job_phases.append(job.lifecycle.phase_seconds())
            await target.terminate("next run is cold")
            bare_s, _rss = await bare_qemu_boot(reactor, built_image_boot_spec(built), work)
            bare.append(bare_s)
            print(f"cold run {run + 1}: RUNNING after {to_running:.2f} s, SUCCESSFUL after "
                  f"{to_done:.2f} s; bare QEMU boot {bare_s:.2f} s", flush=True)

        warm_running, warm_done, warm_phases = [], [], []
        await one_job(factory, JOB)  # an instance to reuse
        for run in range(args.runs):
            to_running, to_done, job = await one_job(factory, JOB)
            warm_running.append(to_running)
            warm_done.append(to_done)
            warm_phases.append(job.lifecycle.phase_seconds())
            print(f"reused run {run + 1}: RUNNING after {to_running:.2f} s, SUCCESSFUL after "
                  f"{to_done:.2f} s", flush=True)

        for target in list(factory.instances.values()):
            await target.terminate("pooled next")
        factory.pools = {"bench": PoolSpec("bench", built.metadata["general"]["name"])}
        factory.pool_interval = 0.2
        factory.startService()
        pooled_running, pooled_done, pooled_phases = [], [], []
        for run in range(args.runs):
            while not any(t.owner == "pool:bench" and t.state.name == "READY"
                          for t in factory.instances.values()):
                await task.deferLater(reactor, 0.1, lambda: None)
            to_running, to_done, job = await one_job(factory, JOB)
            assert any("from pool bench" in line for line in job.log), job.log
            pooled_running.append(to_running)
            pooled_done.append(to_done)
            pooled_phases.append(job.lifecycle.phase_seconds())
            await factory.instances[job.instance_id].terminate("next run takes from the pool")
            print(f"pooled run {run + 1}: RUNNING after {to_running:.2f} s, SUCCESSFUL after "
                  f"{to_done:.2f} s", flush=True)
        factory.pools = {}
        await factory.stopService()  # ends every instance, the pool's spare too

        factory.quotas = Quotas(1, 8)  # one instance: jobs beyond its 2 slots share it
        two_slots = {"Executable": "true", "Resources": {"OperatingSystem": "debian",
                                                         "CPUs": 2}}
        _, _, first = await one_job(factory, two_slots)  # boot the 2-vCPU instance first
        link = factory.instances[first.instance_id].tsi
        # baseline: the same instance driven with standard TSI commands only (shell for
        # mkdir/rm, status polled), as before gridvm's small-job extensions
        link.unsupported.update(STANDARD_ONLY)
        link.submit_makes_directory = False  # a standard TSI needs the job directory first
        base_ok, base_elapsed, _, base_phases, base_cpu = await many_jobs(factory, two_slots,
                                                                          args.jobs)
        link.unsupported.difference_update(STANDARD_ONLY)
        link.submit_makes_directory = True
        print(f"throughput, standard commands: {base_ok}/{args.jobs} jobs in "
              f"{base_elapsed:.1f} s: {args.jobs / base_elapsed:.2f} jobs/s", flush=True)
        busy, python = await guest_cpu(link)
        ok, elapsed, instances, phases, site_cpu = await many_jobs(factory, two_slots,
                                                                   args.jobs)
        busy_after, python_after = await guest_cpu(link)
        hz = os.sysconf("SC_CLK_TCK")
        guest = {"busy_ms_per_job": round((busy_after - busy) * 1000 / hz / args.jobs, 1),
                 "agent_helpers_launchers_ms_per_job": round(
                     (python_after - python) * 1000 / hz / args.jobs, 1)}
        print(f"guest CPU per job (both vCPUs): {guest}", flush=True)
        breakdown = await exchange_breakdown(reactor, factory.instances[first.instance_id])
        print(f"one job at a time, median ms per exchange: {breakdown}", flush=True)

        results["cold"] = {"to_running_median_s": median(cold_running),
                           "to_successful_median_s": median(cold_done),
                           "bare_qemu_boot_median_s": median(bare),
                           "ratio_running_over_bare_boot": round(
                               statistics.median(cold_running) / statistics.median(bare), 3)}
        results["reused"] = {"to_running_median_s": median(warm_running),
                             "to_running_min_s": round(min(warm_running), 3),
                             "to_successful_median_s": median(warm_done),
                             "ratio_running_over_cold": round(
                                 statistics.median(warm_running)
                                 / statistics.median(cold_running), 3),
                             "phases_to_running_median_s": phases_to_running(warm_phases)}
        results["pooled"] = {"to_running_median_s": median(pooled_running),
                             "to_running_min_s": round(min(pooled_running), 3),
                             "to_successful_median_s": median(pooled_done),
                             "ratio_running_over_cold": round(
                                 statistics.median(pooled_running)
                                 / statistics.median(cold_running), 3),
                             "phases_to_running_median_s": phases_to_running(pooled_phases)}
        results["throughput"] = {"jobs": args.jobs, "successful": ok,
                                 "instances": len(instances), "seconds": round(elapsed, 2),
                                 "jobs_per_s": round(args.jobs / elapsed, 2),
                                 "standard_commands_jobs_per_s": round(
                                     args.jobs / base_elapsed, 2),
                                 "standard_commands_successful": base_ok,
                                 "ratio_over_standard_commands": round(
                                     base_elapsed / elapsed, 3),
                                 "job_phases_median_s": phases,
                                 "exchange_median_ms": breakdown,
                                 "site_cpu_ms_per_job": site_cpu,
                                 "guest_cpu": guest,
                                 "standard_commands_site_cpu_ms_per_job": base_cpu,
                                 "standard_commands_job_phases_median_s": base_phases}
        results["instance_phases_median_s"] = {
            k: median([p.get(k, 0) for p in instance_phases])
            for k in ("REQUESTED", "STAGING", "BOOTING", "CONNECTING")}
        results["job_phases_median_s"] = {
            k: median([p.get(k, 0) for p in job_phases])
            for k in JOB_PHASES}
        print(f"cold: RUNNING {results['cold']['to_running_median_s']} s, SUCCESSFUL "
              f"{results['cold']['to_successful_median_s']} s; bare boot "
              f"{results['cold']['bare_qemu_boot_median_s']} s; ratio "
              f"{results['cold']['ratio_running_over_bare_boot']}")
        print(f"reused: RUNNING {results['reused']['to_running_median_s']} s, SUCCESSFUL "
              f"{results['reused']['to_successful_median_s']} s")
        print(f"pooled: RUNNING {results['pooled']['to_running_median_s']} s, SUCCESSFUL "
              f"{results['pooled']['to_successful_median_s']} s (RUNNING "
              f"{results['pooled']['ratio_running_over_cold']} of cold)")
        print(f"throughput: {ok}/{args.jobs} jobs in {elapsed:.1f} s on {len(instances)} "
              f"instance(s): {args.jobs / elapsed:.2f} jobs/s; median phases {phases}, with "
              f"standard commands {base_phases}")
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("bench over")
        await vmm.hypervisor.close()
        repository.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "e2e", **results}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.5, help="status poll interval, s")
    parser.add_argument("--uri", default="qemu:///system")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
