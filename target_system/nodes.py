"""What a node of a virtual cluster knows about itself and its peers, inside the guest.

Each node's contextualization medium carries ``init.d/00-cluster-network`` (run as root by
the guest's start-up before the agent starts): it brings up the NIC whose MAC is the node's
cluster NIC with the node's static address (10.77.<net>.<2+index>/24; no gateway, so
nothing on it is routed anywhere), sets the node's host name, and writes the cluster files
below ``/etc/gridvm/cluster``:

``hostfile``
    one line per CPU slot, node names as in ``/etc/hosts`` (PBS_NODEFILE's convention,
    read as a host file by Open MPI's and MPICH's launchers too);
``nodes``
    ``<name> <address> <role>`` per node;
``node.env``
    the node's own ``GRIDVM_NODE_*`` variables, sourced by shells.

The node names (``node0`` … for a multi-node job, ``<service>-<i>`` for a cluster
definition) go into ``/etc/hosts``.  A job on the first node gets the variables of
:func:`cluster_environment`.  When the membership changes, :func:`membership_script`
rewrites the peer files on a live node (run through its TSI).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

MEDIUM = "/run/gridvm/ctx"  #: where the guest mounts its medium
CLUSTER_DIR = "/etc/gridvm/cluster"
SERVICE_DIR = "/etc/gridvm/service"
SERVICE_HOOK = "init.d/10-service"
SERVICE_LOG = "/var/log/gridvm-service.log"
HOSTFILE = f"{CLUSTER_DIR}/hostfile"
NODES_FILE = f"{CLUSTER_DIR}/nodes"
NETWORK_HOOK = "init.d/00-cluster-network"


@dataclass(frozen=True)
class Peer:
    """One node of a cluster as every other node sees it."""

    name: str
    address: str
    role: str = "node"
    slots: int = 1  #: CPU slots it offers (its lines in the hostfile)


@dataclass(frozen=True)
class NodeIdentity:
    """The node a medium is for: its place in the cluster and its cluster NIC."""

    cluster: str
    index: int
    name: str
    role: str
    address: str
    mac: str


def hostfile(peers: Sequence[Peer]) -> str:
    return "".join(f"{peer.name}\n" * peer.slots for peer in peers)


def nodes_file(peers: Sequence[Peer]) -> str:
    return "".join(f"{peer.name} {peer.address} {peer.role}\n" for peer in peers)


def hosts_lines(peers: Sequence[Peer]) -> str:
    return "".join(f"{peer.address} {peer.name}\n" for peer in peers)


def _node_env(node: NodeIdentity, count: int) -> str:
    values = {"GRIDVM_CLUSTER": node.cluster, "GRIDVM_NODE_INDEX": str(node.index),
              "GRIDVM_NODE_NAME": node.name, "GRIDVM_NODE_ROLE": node.role,
              "GRIDVM_NODE_ADDRESS": node.address, "GRIDVM_NODE_COUNT": str(count)}
    return "".join(f"{key}={shlex.quote(value)}; export {key}\n" for key, value in values.items())


def membership_script(peers: Sequence[Peer]) -> str:
    """Shell (root in the guest) that writes the peer files and /etc/hosts for ``peers``."""
    q = shlex.quote
    tagged = "".join(f"{line} # gridvm-cluster\n" for line in hosts_lines(peers).splitlines())
    return "\n".join([
        f"mkdir -p {CLUSTER_DIR}",
        f"printf %s {q(hostfile(peers))} > {HOSTFILE}.new && mv {HOSTFILE}.new {HOSTFILE}",
        f"printf %s {q(nodes_file(peers))} > {NODES_FILE}.new && "
        f"mv {NODES_FILE}.new {NODES_FILE}",
        f"chmod 0644 {HOSTFILE} {NODES_FILE}",
        f"grep -v ' # gridvm-cluster$' /etc/hosts > {CLUSTER_DIR}/hosts.new",
        f"printf %s {q(tagged)} >> {CLUSTER_DIR}/hosts.new && "
        f"cat {CLUSTER_DIR}/hosts.new > /etc/hosts && rm -f {CLUSTER_DIR}/hosts.new",
    ]) + "\n"


def network_hook(node: NodeIdentity, peers: Sequence[Peer], owner: str) -> str:
    """The start-up hook of the node's medium: its cluster NIC up, its peer files (and
    /etc/hosts) owned by ``owner``, the TSI's job user, so that the site can rewrite them
    through the TSI when the membership changes."""
    q = shlex.quote
    return "\n".join([
        "#!/bin/sh",
        "# gridvm: this node's cluster network (no gateway: nothing on it is routed)",
        f"mac={q(node.mac)}",
        "nic=",
        "i=0",
        'while [ -z "$nic" ] && [ $i -lt 100 ]; do',
        "    for dev in /sys/class/net/*; do",
        '        [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && nic=${dev##*/}',
        "    done",
        # busybox has usleep; a cloud image's coreutils sleep takes fractions
        '    [ -n "$nic" ] || { usleep 20000 2>/dev/null || sleep 0.02; i=$((i + 1)); }',
        "done",
        'if [ -z "$nic" ]; then echo "gridvm: no cluster NIC with MAC $mac"; exit 1; fi',
        'ip link set "$nic" up',
        f'ip addr add {q(node.address + "/24")} dev "$nic"',
        f"hostname {q(node.name)}",
        membership_script(peers).rstrip("\n"),
        f"printf %s {q(_node_env(node, len(peers)))} > {CLUSTER_DIR}/node.env",
        f"chown -R {q(owner)} {CLUSTER_DIR} /etc/hosts 2>/dev/null",
        f"echo \"gridvm: cluster node {node.name} at {node.address} on $nic\"",
    ]) + "\n"


def node_context_files(node: NodeIdentity, peers: Sequence[Peer],
                       owner: str = "gridvm") -> dict[str, bytes]:
    """The files a cluster node's medium carries besides the agent's."""
    return {NETWORK_HOOK: network_hook(node, peers, owner).encode()}


def cluster_environment(node: NodeIdentity, peers: Sequence[Peer]) -> dict[str, str]:
    """The variables a job on ``node`` gets: gridvm's own and the batch systems' names that
    MPI launchers and batch scripts read (PBS/Torque, Slurm)."""
    names = [peer.name for peer in peers]
    return {
        "GRIDVM_NODEFILE": HOSTFILE, "PBS_NODEFILE": HOSTFILE,
        "GRIDVM_NODES": " ".join(names), "GRIDVM_NODE_COUNT": str(len(peers)),
        "GRIDVM_NODE_NAME": node.name, "GRIDVM_NODE_INDEX": str(node.index),
        "PBS_NUM_NODES": str(len(peers)), "SLURM_JOB_NUM_NODES": str(len(peers)),
        "SLURM_NNODES": str(len(peers)), "SLURM_JOB_NODELIST": ",".join(names),
        "SLURM_NODEID": str(node.index),
    }


def service_context_files(files: dict[str, bytes], environment: dict[str, str],
                          start: Sequence[str]) -> dict[str, bytes]:
    """A cluster service's context on its nodes' media: ``files`` copied to
    ``/etc/gridvm/service/``, ``environment`` in its ``env`` file, and the ``start``
    commands run in order as root (in the background, with the node's and the service's
    variables, output to /var/log/gridvm-service.log) once the cluster network is up."""
    q = shlex.quote
    env = "".join(f"{key}={q(value)}; export {key}\n" for key, value in environment.items())
    medium = {f"service/files/{path}": content for path, content in files.items()}
    medium["service/start.sh"] = "".join(
        [f". {CLUSTER_DIR}/node.env\n", f". {SERVICE_DIR}/env\n", f"cd {SERVICE_DIR}\n",
         *(f"{command}\n" for command in start)]).encode()
    hook = "\n".join([
        "#!/bin/sh",
        "# gridvm: this node's service context (files, environment, start commands)",
        f"mkdir -p {SERVICE_DIR} {posixpath.dirname(SERVICE_LOG)}",
        f"[ -d {MEDIUM}/service/files ] && cp -R {MEDIUM}/service/files/. {SERVICE_DIR}/",
        f"printf %s {q(env)} > {SERVICE_DIR}/env",
        f"chmod -R a+rX {SERVICE_DIR}",
        f"sh {MEDIUM}/service/start.sh > {SERVICE_LOG} 2>&1 < /dev/null &" if start else "",
    ]) + "\n"
    return {**medium, SERVICE_HOOK: hook.encode()}
