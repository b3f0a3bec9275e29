"""Virtual clusters in real VMs: a multi-node job whose nodes reach one another by TCP and
UDP on their private switch, and neither the host's loopback services nor another cluster.
"""

import socket
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from target_system.lifecycle import InstanceState, JobState
from tests.e2e.conftest import ALICE, BOB

pytestmark = pytest.mark.vm

INITRAMFS = {"Image": "gridvm-debian12-initramfs"}
ECHO_PORT = 7000

#: a site start-up hook: every node echoes TCP and UDP on ECHO_PORT, prefixed with its name
ECHO_HOOK = f"""python3 -c '
import socket, threading
name = socket.gethostname().encode()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", {ECHO_PORT}))
    while True:
        data, peer = s.recvfrom(512); s.sendto(name + b" " + data, peer)
def tcp():
    s = socket.create_server(("", {ECHO_PORT}))
    while True:
        c, _ = s.accept(); c.sendall(name + b" " + c.recv(512)); c.close()
threading.Thread(target=udp).start(); tcp()
' >/dev/null 2>&1 &
""".encode()

#: run on the head: one line per probe, "<what> <target> <answer or error class>"
PROBE = f"""
import os, socket, sys
print("env", "count", os.environ["GRIDVM_NODE_COUNT"], os.environ["SLURM_JOB_NODELIST"])
print("env", "hostfile", ",".join(open(os.environ["PBS_NODEFILE"]).read().split()))
def tcp(host, port):
    try:
        with socket.create_connection((host, port), timeout=3) as c:
            c.sendall(b"tcp"); return c.recv(512).decode()
    except OSError as err:
        return type(err).__name__
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    try:
        s.sendto(b"udp", (host, port)); return s.recvfrom(512)[0].decode()
    except OSError as err:
        return type(err).__name__
peers = [line.split() for line in open("/etc/gridvm/cluster/nodes")]
for name, address, role in peers[1:]:
    print("tcp", name, tcp(name, {ECHO_PORT}))
    print("udp", address, udp(address, {ECHO_PORT}))
host_port = int(sys.argv[1])
for host in ("10.0.2.2", "10.0.2.100", address.rsplit(".", 1)[0] + ".1"):
    print("host", host, tcp(host, host_port))
for other in sys.argv[2:]:
    print("other", other, tcp(other, {ECHO_PORT}), udp(other, {ECHO_PORT}))
"""


class LoopbackService:
    """A TCP service on the host's 127.0.0.1 that records whoever connects."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


async def wait_state(job, states, timeout=300.0):
    for _ in range(int(timeout / 0.2)):
        if job.state in states:
            return
        await task.deferLater(reactor, 0.2, lambda: None)
    raise AssertionError(f"job stuck in {job.state.name}: {job.log}")


async def wait_until(done, timeout=120.0):
    """Poll ``done`` every 0.2 s; AssertionError after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.2)):
        if done():
            return
        await task.deferLater(reactor, 0.2, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_three_node_job_nodes_reach_each_other_and_nothing_else(site):
    factory, _repo, _root = site
    factory.registry.context_hooks["50-echo"] = ECHO_HOOK
    service = LoopbackService()
    # another cluster, running while the three-node job probes it
    other = factory.submit({"Executable": "sleep", "Arguments": ["300"],
                            "Resources": {**INITRAMFS, "Nodes": 2}}, BOB)
    await wait_state(other, {JobState.RUNNING, JobState.FAILED})
    assert other.state is JobState.RUNNING, other.log
    other_cluster = factory.clusters.clusters[f"job-{other.job_id}"]
    other_addresses = [p.address for p in other_cluster.peers()]

    job = factory.submit({
        "ApplicationName": "python3",
        "Arguments": ["-c", PROBE, str(service.port), *other_addresses],
        "Imports": [{"From": "inline://dummy", "To": "in.txt", "Data": "staged in\n"}],
        "Resources": {**INITRAMFS, "Nodes": 3, "CPUsPerNode": 1, "Runtime": "10min"},
    }, ALICE)
    cluster_id = f"job-{job.job_id}"
    await wait_state(job, {JobState.RUNNING, JobState.FAILED})
    nodes = factory.clusters.clusters[cluster_id].nodes
    assert [n for n in nodes] == ["node0", "node1", "node2"]
    assert len({t.instance_id for t in nodes.values()}) == 3
    directory = factory.clusters.networks.root / cluster_id
    assert directory.is_dir()
    await factory.wait(job.job_id, ALICE).addTimeout(300, reactor)
    factory.abort(other.job_id, BOB)
    assert job.state is JobState.SUCCESSFUL, job.log
    lines = (job.storage / "stdout").read_text().splitlines()
    print("\n".join(lines))
    answers = {tuple(line.split()[:2]): line.split(maxsplit=2)[2] for line in lines}

    # the nodes reach each other by TCP (by name) and UDP (by address)
    assert answers[("tcp", "node1")] == "node1 tcp"
    assert answers[("tcp", "node2")] == "node2 tcp"
    assert sorted(v for (what, _t), v in answers.items() if what == "udp") == [
        "node1 udp", "node2 udp"]
    # neither the host's loopback services nor the other cluster
    hosts = [v for (what, _t), v in answers.items() if what == "host"]
    assert len(hosts) == 3 and not any(h.startswith("node") for h in hosts), lines
    assert service.connections == 0
    others = [v for (what, _t), v in answers.items() if what == "other"]
    assert len(others) == 2 and not any("node" in v for v in others), lines
    # the node list in the environment and in the host file
    assert answers[("env", "count")] == "3 node0,node1,node2"
    assert answers[("env", "hostfile")] == "node0,node1,node2"
    # stage-in went to the head, outputs come from it
    assert (job.storage / "in.txt").read_text() == "staged in\n"

    # the nodes and the network end with the job
    await wait_until(lambda: cluster_id not in factory.clusters.clusters)
    for target in nodes.values():
        assert target.state is InstanceState.TERMINATED, target.describe()
    assert not directory.exists()
    await factory.wait(other.job_id, BOB).addTimeout(120, reactor)
    await wait_until(lambda: f"job-{other.job_id}" not in factory.clusters.clusters)
    assert not (factory.clusters.networks.root / f"job-{other.job_id}").exists()
    service.server.close()


HEAD_AND_WORKERS = {"Name": "web", "Services": {
    "head": {"Resources": INITRAMFS,
             "Context": {"Files": {"index.html": "the head says hi"},
                         "Start": ["python3 -m http.server 8000 --directory "
                                   "/etc/gridvm/service >/dev/null 2>&1 &"]}},
    "worker": {"Resources": INITRAMFS, "Min": 1, "Max": 3, "Count": 2, "DependsOn": ["head"],
               "Context": {"Environment": {"HEAD_URL": "http://head-0:8000/index.html"},
                           "Start": ["python3 -c 'import os, urllib.request; open(\"/tmp/"
                                     "fetched\", \"wb\").write(urllib.request.urlopen(os."
                                     "environ[\"HEAD_URL\"], timeout=20).read())'"]}},
}}


async def settled(factory, cluster, timeout=400.0):
    await wait_until(lambda: cluster.cluster_id not in factory.clusters._work, timeout)
    return cluster


async def in_node(target, script: str) -> str:
    return await target.tsi.execute_script(script)


async def fetched(target, timeout=60.0) -> str:
    """What the worker's start command fetched from the head (it runs in the background)."""
    for _ in range(int(timeout)):
        text = await in_node(target, "cat /tmp/fetched 2>/dev/null || true")
        if text:
            return text
        await task.deferLater(reactor, 1.0, lambda: None)
    return await in_node(target, "cat /var/log/gridvm-service.log")


@pytest_twisted.ensureDeferred
async def test_head_and_workers_depending_on_it_scaled_to_three_and_back(site):
    factory, _repo, _root = site
    keeper = factory.clusters
    cluster = await settled(factory, keeper.up(HEAD_AND_WORKERS, ALICE, factory.admission.site))
    assert cluster.state.value == "READY", cluster.log
    nodes = cluster.cluster.nodes
    head = nodes["head-0"]
    # the workers started once the head was READY: their start command fetched its page
    for name in ("worker-0", "worker-1"):
        assert await fetched(nodes[name]) == "the head says hi"
    # the head booted alone, and was told of the workers once they were up
    listed = await in_node(head, "cat /etc/gridvm/cluster/nodes")
    assert [line.split()[0] for line in listed.splitlines()] == [
        "head-0", "worker-0", "worker-1"]

    keeper.scale(cluster.cluster_id, "worker", 3, ALICE)
    await settled(factory, cluster)
    assert cluster.state.value == "READY" and len(cluster.members["worker"]) == 3, cluster.log
    listed = await in_node(head, "cat /etc/gridvm/cluster/nodes; grep -w worker-2 /etc/hosts")
    assert "worker-2" in listed.splitlines()[-1] and len(listed.splitlines()) == 5
    assert await fetched(nodes["worker-2"]) == "the head says hi"
    gone = nodes["worker-2"]

    keeper.scale(cluster.cluster_id, "worker", 2, ALICE)
    await settled(factory, cluster)
    assert gone.state is InstanceState.TERMINATED
    listed = await in_node(nodes["worker-0"], "cat /etc/gridvm/cluster/nodes")
    assert "worker-2" not in listed and len(listed.splitlines()) == 3

    directory = cluster.cluster.switch.directory
    keeper.down(cluster.cluster_id, ALICE)
    await settled(factory, cluster)
    assert cluster.state.value == "STOPPED"
    assert all(t.state is InstanceState.TERMINATED for t in nodes.values())
    assert not directory.exists()
