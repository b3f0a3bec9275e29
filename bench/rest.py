"""Benchmark of the REST site: submission through REST against the Python API, and GET rates.

    .venv/bin/python bench/rest.py [--quick]

One site in-process (``tsf.service.start_site``, real VMs through qemu:///system).  For the
Python API (``factory.submit``) and for REST (``POST /jobs``, then ``GET /jobs/{id}`` every
20 ms) it measures submission → RUNNING and → SUCCESSFUL, cold (the job boots its owner's
instance) and warm (the idle instance is reused); both owners have their own instance, so
both cold runs boot.  Then ``GET /jobs/{id}`` requests per second with 1 and 16 concurrent
keep-alive clients (Basic auth; a separate load-generator process, so that the client does
not share the server's GIL), against a trivial twisted.web resource on the same reactor as
the baseline.  Last, a download of a 256 MiB job file from site storage (``GET
.../files/big.bin``, streamed) against twisted.web's own ``static.File`` serving the same
file on the same reactor: MB/s and the growth of the server's peak resident memory.  Ends
with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from twisted.internet import defer, task, threads
from twisted.web import resource, server, static

from base.identity import Caller
from image_builder import build_image
from target_system.lifecycle import JobState
from tsf.config import config_from_dict
from tsf.service import start_site
from tsf.users import User, UsersFile, hash_password

ROOT = Path("/var/tmp/gridvm-bench")
PASSWORD = "bench-password"
JOB = {"Executable": "/bin/sh", "Arguments": ["-c", "sleep 0.5; echo done"],
       "Resources": {"Image": "gridvm-debian12-initramfs"}}

LOAD = r"""
import sys, threading, time, httpx
url, user, password = sys.argv[1:4]
clients, seconds = int(sys.argv[4]), float(sys.argv[5])
counts = [0] * clients
stop = time.monotonic() + seconds
def work(i):
    with httpx.Client(auth=(user, password) if user else None, timeout=30) as c:
        c.get(url).raise_for_status()
        while time.monotonic() < stop:
            c.get(url, headers={"Accept": "application/json"}).raise_for_status()
            counts[i] += 1
threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts) / (time.monotonic() - start))
"""

DOWNLOAD = r"""
import sys, time, httpx
url, user, password = sys.argv[1:4]
start, total = time.monotonic(), 0
with httpx.Client(auth=(user, password) if user else None, timeout=300) as c:
    with c.stream("GET", url, headers={"Accept": "application/octet-stream"}) as r:
        r.raise_for_status()
        for piece in r.iter_bytes(1 << 20):
            total += len(piece)
print(total, time.monotonic() - start)
"""
DOWNLOAD_MIB = 256


def peak_rss_mib(reset: bool = False) -> float:
    """This process's peak resident memory (VmHWM); ``reset`` starts a new peak."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def download(url: str, user: str | None) -> tuple[int, float]:
    result = subprocess.run([sys.executable, "-c", DOWNLOAD, url, user or "", PASSWORD],
                            capture_output=True, text=True, check=True, timeout=600)
    size, seconds = result.stdout.split()
    return int(size), float(seconds)


async def measure_download(url: str, user: str | None) -> dict[str, float]:
    before = peak_rss_mib(reset=True)
    size, seconds = await threads.deferToThread(download, url, user)
    assert size == DOWNLOAD_MIB << 20, size
    return {"mb_per_s": size / seconds / 1e6, "peak_rss_growth_mib": peak_rss_mib() - before}


class Plain(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader("content-type", "application/json")
        return b'{"status": "RUNNING"}\n'


async def python_api(site, caller: Caller) -> dict[str, float]:
    factory = site.factory
    started = time.perf_counter()
    job = factory.submit(dict(JOB), caller)
    running = None
    while not job.state.terminal:
        if running is None and job.state in (JobState.RUNNING, JobState.STAGINGOUT):
            running = time.perf_counter() - started
        await task.deferLater(site.reactor, 0.02, lambda: None)
    await factory.wait(job.job_id, caller)
    assert job.state is JobState.SUCCESSFUL, job.log
    return {"running_s": running or 0.0, "successful_s": time.perf_counter() - started}


def rest_job(base: str) -> tuple[dict[str, float], str]:
    with httpx.Client(auth=("rest", PASSWORD), timeout=60) as client:
        started = time.perf_counter()
        answer = client.post(f"{base}/jobs", json=JOB)
        answer.raise_for_status()
        url = answer.headers["location"]
        running = None
        while True:
            status = client.get(url).json()["status"]
            if running is None and status in ("RUNNING", "STAGINGOUT", "SUCCESSFUL"):
                running = time.perf_counter() - started
            if status in ("SUCCESSFUL", "FAILED"):
                assert status == "SUCCESSFUL", client.get(url).json()["log"]
                return {"running_s": running, "successful_s": time.perf_counter() - started}, url
            time.sleep(0.02)


def load(url: str, user: str | None, clients: int, seconds: float) -> float:
    result = subprocess.run([sys.executable, "-c", LOAD, url, user or "", PASSWORD,
                             str(clients), str(seconds)], capture_output=True, text=True,
                            check=True, timeout=seconds + 60)
    return float(result.stdout.strip())


async def run(reactor, quick: bool) -> dict:
    image = await threads.deferToThread(build_image, "initramfs",
                                        output_root=ROOT / "images")
    state = ROOT / f"rest-{uuid.uuid4().hex[:8]}"
    state.mkdir(parents=True)
    users = UsersFile(state / "users.json")
    users.put(User("rest", hash_password(PASSWORD), ("users",), ("demo",)))
    config = config_from_dict({
        "site": {"name": "BENCH", "state_dir": str(state),
                 "domain_prefix": f"gridvm-bench-rest-{state.name[-8:]}-",
                 "keep_instances": False},  # end the VMs with the bench
        "http": {"port": 0}, "https": {"port": -1},
        "health": {"idle_timeout": 0, "interval": 30}})
    site = await start_site(config, reactor)
    plain = reactor.listenTCP(0, server.Site(Plain()), interface="127.0.0.1")
    files = None
    try:
        files = {ref["file"]: image.directory / ref["file"]
                 for ref in image.metadata["origin"]["content"]}
        await threads.deferToThread(site.repository.register, image.metadata, files,
                                    Caller.of("creator", ["images"]))
        site.factory.runner.poll_interval = 0.2
        results: dict = {}
        papi = Caller.of("papi", ["users"], ["demo"])
        results["python_cold"] = await python_api(site, papi)
        results["rest_cold"], url = await threads.deferToThread(rest_job, site.http_base)
        warm_rounds = 1 if quick else 3
        for label in ("python_warm", "rest_warm"):
            runs = []
            for _ in range(warm_rounds):
                if label == "python_warm":
                    runs.append(await python_api(site, papi))
                else:
                    runs.append((await threads.deferToThread(rest_job, site.http_base))[0])
            results[label] = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        seconds = 2.0 if quick else 5.0
        plain_url = f"http://127.0.0.1:{plain.getHost().port}/"
        for clients in (1, 16):
            results[f"get_job_rps_{clients}"] = await threads.deferToThread(
                load, url, "rest", clients, seconds)
            results[f"plain_rps_{clients}"] = await threads.deferToThread(
                load, plain_url, None, clients, seconds)
        job = site.factory.jobs[url.rsplit("/", 1)[1]]  # finished: its files on the host
        big = job.storage / "big.bin"
        with big.open("wb") as handle:
            for _ in range(DOWNLOAD_MIB):
                handle.write(os.urandom(1 << 20))
        files = reactor.listenTCP(0, server.Site(static.File(str(job.storage))),
                                  interface="127.0.0.1")
        results["download_rest"] = await measure_download(
            f"{url.replace('/jobs/', '/storages/')}-uspace/files/big.bin", "rest")
        results["download_plain"] = await measure_download(
            f"http://127.0.0.1:{files.getHost().port}/big.bin", None)
        results["instances_booted"] = len(site.factory.instances)
        return results
    finally:
        await plain.stopListening()
        if files is not None:
            await files.stopListening()
        await site.stopService()
        shutil.rmtree(state, ignore_errors=True)


def report(results: dict) -> dict:
    print(f"{'submission → state (s)':<30}{'RUNNING':>10}{'SUCCESSFUL':>12}")
    for label in ("python_cold", "rest_cold", "python_warm", "rest_warm"):
        r = results[label]
        print(f"{label:<30}{r['running_s']:>10.3f}{r['successful_s']:>12.3f}")
    ratios = {
        f"rest/python_{kind}_{phase}": results[f"rest_{kind}"][f"{phase}_s"]
        / results[f"python_{kind}"][f"{phase}_s"]
        for kind in ("cold", "warm") for phase in ("running", "successful")}
    for clients in (1, 16):
        ratios[f"get_job/plain_rps_{clients}"] = (results[f"get_job_rps_{clients}"]
                                                  / results[f"plain_rps_{clients}"])
        print(f"GET job, {clients:>2} client(s): {results[f'get_job_rps_{clients}']:8.0f} req/s"
              f"   (plain twisted.web: {results[f'plain_rps_{clients}']:8.0f} req/s)")
    rest, plain = results["download_rest"], results["download_plain"]
    ratios["download_rest/plain_mb_per_s"] = rest["mb_per_s"] / plain["mb_per_s"]
    print(f"download {DOWNLOAD_MIB} MiB: REST {rest['mb_per_s']:.0f} MB/s, peak RSS "
          f"+{rest['peak_rss_growth_mib']:.1f} MiB   (static.File {plain['mb_per_s']:.0f} "
          f"MB/s, +{plain['peak_rss_growth_mib']:.1f} MiB)")
    for name, value in ratios.items():
        print(f"{name:<32}{value:>8.2f}")
    return {"benchmark": "rest", **results, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    args = parser.parse_args()
    figures: dict = {}

    async def go(reactor):
        figures.update(report(await run(reactor, args.quick)))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit as exit_:
        if exit_.code:
            raise
    print(json.dumps(_rounded(figures), sort_keys=True))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    main()
