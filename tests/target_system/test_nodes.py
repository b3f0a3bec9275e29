"""What a cluster node's medium tells the guest, and what its jobs get."""

import subprocess

from target_system.nodes import (
    HOSTFILE,
    NETWORK_HOOK,
    NodeIdentity,
    Peer,
    cluster_environment,
    hostfile,
    membership_script,
    node_context_files,
    nodes_file,
)

PEERS = [Peer("node0", "10.77.1.2", "head", 2), Peer("node1", "10.77.1.3", "worker", 1)]
HEAD = NodeIdentity("c1", 0, "node0", "head", "10.77.1.2", "02:67:76:01:00:02")


def test_the_hostfile_has_a_line_per_slot_and_the_node_list_a_line_per_node():
    assert hostfile(PEERS) == "node0\nnode0\nnode1\n"
    assert nodes_file(PEERS) == "node0 10.77.1.2 head\nnode1 10.77.1.3 worker\n"


def test_the_head_s_jobs_get_the_launchers_variables():
    env = cluster_environment(HEAD, PEERS)
    assert env["GRIDVM_NODEFILE"] == env["PBS_NODEFILE"] == HOSTFILE
    assert env["SLURM_JOB_NODELIST"] == "node0,node1" and env["GRIDVM_NODE_COUNT"] == "2"
    assert env["SLURM_NNODES"] == env["PBS_NUM_NODES"] == "2" and env["SLURM_NODEID"] == "0"


def test_the_start_up_hook_finds_the_nic_by_mac_and_sets_the_static_address():
    hook = node_context_files(HEAD, PEERS)[NETWORK_HOOK].decode()
    assert "mac=02:67:76:01:00:02" in hook and "ip addr add 10.77.1.2/24" in hook
    assert "ip route" not in hook  # no gateway: nothing on the cluster network is routed
    assert "hostname node0" in hook
    for script in (hook, membership_script(PEERS)):
        subprocess.run(["sh", "-n"], input=script.encode(), check=True)


def test_the_membership_script_replaces_only_the_cluster_s_lines_of_etc_hosts(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.77.1.9 old # gridvm-cluster\n")
    script = membership_script(PEERS).replace("/etc/gridvm/cluster", str(tmp_path / "c")) \
        .replace("/etc/hosts", str(hosts))
    subprocess.run(["sh", "-e"], input=script.encode(), check=True)
    assert hosts.read_text() == ("127.0.0.1 localhost\n10.77.1.2 node0 # gridvm-cluster\n"
                                 "10.77.1.3 node1 # gridvm-cluster\n")
    assert (tmp_path / "c" / "hostfile").read_text() == hostfile(PEERS)
