"""Cluster benchmark: time to READY of a virtual cluster of N nodes, against one VM.

    .venv/bin/python bench/cluster.py [--runs 2] [--nodes 1,2,4]

For each N, N instances of the initramfs image boot at once, each with a NIC on one cluster
switch (``vmm.switch``) and the node start-up hook on its medium, until every agent
answered; the baseline is one VM booted alone, without a cluster NIC, in the same run
(median of --runs each, interleaved).  The figures are ratios to that baseline: on a host
with fewer cores than N, emulated guests share them and the ratio grows with N.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from image_builder import build_image
from target_system.images import built_image_boot_spec
from target_system.nodes import NodeIdentity, Peer, node_context_files
from vmm import ports
from vmm.hypervisor import Hypervisor
from vmm.manager import InstanceSpec, VirtualMachineManager
from vmm.switch import ClusterNetworks

ROOT = Path("/var/tmp/gridvm-bench")


async def boot_alone(manager, spec) -> float:
    started = time.monotonic()
    instance = await manager.boot(InstanceSpec(boot=spec, callback_port=ports.free_port(),
                                               context_files={"bench.txt": b"x"}))
    elapsed = time.monotonic() - started
    await manager.destroy(instance.instance_id)
    return elapsed


async def boot_cluster(manager, networks: ClusterNetworks, spec, count: int, run: int) -> float:
    switch = networks.create(f"bench-{count}-{run}")
    attached = [switch.attach(i) for i in range(count)]
    peers = [Peer(f"node{p.index}", p.address) for p in attached]
    specs = [InstanceSpec(
        boot=spec, callback_port=ports.free_port(), cluster_nic=port.nic(),
        context_files=node_context_files(NodeIdentity(
            switch.directory.name, port.index, f"node{port.index}", "node", port.address,
            port.mac), peers), boot_timeout=600) for port in attached]
    started = time.monotonic()
    try:
        instances = await defer.gatherResults([manager.boot(s) for s in specs],
                                               consumeErrors=True)
        elapsed = time.monotonic() - started
        for instance in instances:
            await manager.destroy(instance.instance_id)
    finally:
        networks.remove(switch.directory.name)
    return elapsed


async def main(reactor, args) -> None:
    ROOT.mkdir(mode=0o755, exist_ok=True)
    spec = built_image_boot_spec(build_image("initramfs", output_root=ROOT / "images"))
    manager = VirtualMachineManager(Hypervisor(args.uri, reactor), ROOT / "state",
                                    reactor=reactor, prefix="gridvm-bench-cl-")
    await manager.start()
    networks = ClusterNetworks(ROOT / "state" / "clusters", reactor)
    counts = [int(n) for n in args.nodes.split(",")]
    alone: list[float] = []
    clusters: dict[int, list[float]] = {n: [] for n in counts}
    try:
        await boot_alone(manager, spec)  # warm the cache and libvirt
        for run in range(args.runs):
            alone.append(await boot_alone(manager, spec))
            for count in counts:
                clusters[count].append(await boot_cluster(manager, networks, spec, count, run))
            print(f"run {run + 1}: one VM {alone[-1]:.2f} s, " + ", ".join(
                f"{n} nodes {clusters[n][-1]:.2f} s" for n in counts), flush=True)
    finally:
        await manager.hypervisor.close()
        shutil.rmtree(networks.root, ignore_errors=True)
    baseline = statistics.median(alone)
    results = {"one_vm_median_s": round(baseline, 3), "cores": _cores(),
               "nodes": {str(n): {"median_s": round(statistics.median(t), 3),
                                  "ratio": round(statistics.median(t) / baseline, 3)}
                         for n, t in clusters.items()}}
    for n, figures in results["nodes"].items():
        print(f"{n} nodes READY in {figures['median_s']:.2f} s: {figures['ratio']:.2f}x one VM")
    print(json.dumps({"bench": "cluster", "runs": args.runs, **results}))


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--uri", default="qemu:///system")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
