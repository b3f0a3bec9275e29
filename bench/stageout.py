"""Benchmark of stage-out: many small files from our agent into site storage.

    .venv/bin/python bench/stageout.py [--files 5000] [--size 1024] [--vm]

Locally (our agent as a process on 127.0.0.1, plain TCP): the job directory of ``--files``
files of ``--size`` bytes is staged out the way the runner does it, file by file (LS, then
GETFILECHUNK per file on 4 warm workers: the path before the tar stream, still the one taken
against the official TSI) and as one GRIDVM_GETDIRECTORY tar stream; baseline in the same
run: ``shutil.copytree`` of the same directory on this host.  With ``--vm`` also in a real
VM (initramfs image, QEMU/TCG): a job writes the files, then the runner's stage-out of them,
streamed and file by file.  Figures are files/s; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task

from target_system.stageout import stage_out
from tests.support.local_agent import AgentProcess
from tsi_bridge.client import TSIClient


def make_files(directory: Path, count: int, size: int) -> None:
    (directory / "many").mkdir(parents=True)
    payload = b"x" * size
    for n in range(count):
        (directory / "many" / f"f{n:05d}").write_bytes(payload)


def copytree_rate(source: Path, target: Path, count: int) -> float:
    started = time.monotonic()
    shutil.copytree(source, target)
    return count / (time.monotonic() - started)


async def local_rates(reactor, base: Path, count: int, size: int) -> dict[str, float]:
    agent = AgentProcess(base / "agent").start()
    job = agent.workdir / "job"
    make_files(job, count, size)
    figures = {"baseline_copytree_files_s": copytree_rate(job, base / "copy", count)}
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=600)
    try:
        await defer.gatherResults([client.ping() for _ in range(4)])  # 4 warm workers
        for label, streams in (("file_by_file", False), ("stream", None)):
            client.streams = streams
            started = time.monotonic()
            result = await stage_out(client, str(job), base / label)
            seconds = time.monotonic() - started
            assert result.files == count and result.streamed == (streams is None), result
            figures[f"{label}_files_s"] = count / seconds
            figures[f"{label}_seconds"] = seconds
    finally:
        await client.close()
        agent.stop()
    return figures


async def vm_rates(count: int, size: int) -> dict[str, float]:
    """STAGINGOUT of a real job in a VM, streamed and file by file."""
    from twisted.internet import reactor

    from base.db import make_engine, sqlite_url
    from base.identity import Caller
    from image_builder import build_image
    from image_repo.repository import ImageRepository
    from target_system.instance import Deadlines, HealthPolicy, SiteCredentials
    from tsf.factory import TargetSystemFactory
    from vmm.hypervisor import Hypervisor
    from vmm.manager import VirtualMachineManager
    root = Path(tempfile.mkdtemp(prefix="gridvm-bench-stageout-", dir="/var/tmp"))
    root.chmod(0o755)
    user = Caller.of("bench", groups=["users"])
    built = build_image("initramfs", output_root=Path("/var/tmp/gridvm-bench/images"))
    repository = ImageRepository(make_engine(sqlite_url(root / "catalogue.sqlite")),
                                 root / "store")
    files = {ref["file"]: built.directory / ref["file"]
             for ref in built.metadata["origin"]["content"]}
    image = repository.register(built.metadata, files, Caller.of("creator", groups=["images"]))
    vmm = VirtualMachineManager(Hypervisor("qemu:///system", reactor), root / "state",
                                reactor=reactor, prefix=f"gridvm-bench-so-{root.name[-6:]}-")
    await vmm.start()
    factory = TargetSystemFactory(repository, vmm, SiteCredentials.load_or_create(root / "ca"),
                                  root / "storage", reactor,
                                  deadlines=Deadlines(staging=600, booting=600, connecting=300),
                                  health=HealthPolicy(interval=5, idle_timeout=None))
    factory.runner.poll_interval = 0.5
    files = "/home/gridvm/jobs/bench-files"  # beside the job's directory: kept after it
    code = (f"import os\nos.makedirs('{files}/many')\nfor n in range({count}):\n"
            f"    open(f'{files}/many/f{{n:05d}}', 'wb').write(b'x' * {size})\n")
    figures = {}
    try:
        job = factory.submit({"ApplicationName": "python3", "Arguments": ["-c", code],
                              "Resources": {"Image": image.name, "Runtime": "30min"}}, user)
        await factory.wait(job.job_id, user)
        assert job.state.name == "SUCCESSFUL", job.log
        target = factory.instances[job.instance_id]
        await defer.gatherResults([target.tsi.ping() for _ in range(4)])  # 4 warm workers
        for label, streams in (("stream", None), ("file_by_file", False)):
            target.tsi.streams = streams
            started = time.monotonic()
            result = await stage_out(target.tsi, files, root / label)
            seconds = time.monotonic() - started
            assert result.files == count, result
            figures[f"vm_{label}_files_s"] = count / seconds
            figures[f"vm_{label}_seconds"] = seconds
            print(f"vm {label}: {seconds:.1f} s", flush=True)
    finally:
        for target in list(factory.instances.values()):
            await target.terminate("bench over")
        await vmm.hypervisor.close()
        repository.close()
        shutil.rmtree(root, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--vm", action="store_true", help="also in a real VM")
    args = parser.parse_args()
    figures: dict = {"benchmark": "stageout", "files": args.files, "size": args.size}

    async def go(reactor):
        with tempfile.TemporaryDirectory(prefix="gridvm-bench-stageout-") as base:
            figures.update(await local_rates(reactor, Path(base), args.files, args.size))
        print(json.dumps(figures, sort_keys=True, default=lambda v: round(v, 3)), flush=True)
        if args.vm:
            figures.update(await vm_rates(args.files, args.size))
        figures.update(report(figures))
        print(json.dumps(figures, sort_keys=True, default=lambda v: round(v, 3)))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


def report(figures: dict) -> dict:
    ratios = {"stream_vs_file_by_file": figures["stream_files_s"]
              / figures["file_by_file_files_s"],
              "stream_vs_copytree": figures["stream_files_s"]
              / figures["baseline_copytree_files_s"]}
    if "vm_stream_files_s" in figures:
        ratios["vm_stream_vs_file_by_file"] = (figures["vm_stream_files_s"]
                                               / figures["vm_file_by_file_files_s"])
    for name, value in {**figures, **ratios}.items():
        if isinstance(value, float):
            print(f"{name:<32}{value:>12.2f}")
    return {**figures, "ratios": ratios}


if __name__ == "__main__":
    main()
