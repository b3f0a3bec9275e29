"""A CONTAINER job's script: the launcher's command line, on one VM and on a cluster node."""

from __future__ import annotations

import dataclasses
import itertools
import shlex
from pathlib import Path

from target_system.containers import ContainerToRun, StagedContainer
from target_system.jobdesc import parse_job
from target_system.jobs import job_script
from target_system.nodes import CLUSTER_DIR

CONTAINER = ContainerToRun("c1", "busybox:1", "docker://busybox", "image.oci.tar", "ab" * 64,
                           1, "amd64", Path("/store/ab"))
STAGED = StagedContainer("/var/cache/c", "/var/cache/c/ab.tar", "/var/cache/c/launch.py",
                         "/usr/bin/crun")


def launcher_words(site_environment=None) -> list[str]:
    job = dataclasses.replace(parse_job({
        "ApplicationName": "CONTAINER", "Parameters": {"IMAGE_URL": "busybox",
                                                       "COMMAND": "cat $PBS_NODEFILE"}}),
        container=CONTAINER)
    script = job_script(job, "/home/gridvm/jobs/j1", None, STAGED, site_environment)
    [line] = [line for line in script.splitlines() if "launch.py" in line]
    return shlex.split(line)


def test_on_a_cluster_node_the_container_gets_the_node_variables_and_peer_files():
    words = launcher_words({"PBS_NODEFILE": f"{CLUSTER_DIR}/hostfile", "GRIDVM_NODES": "a b"})
    pairs = set(itertools.pairwise(words))
    assert {("--env", "PBS_NODEFILE"), ("--env", "GRIDVM_NODES"),
            ("--bind-ro", CLUSTER_DIR), ("--bind-ro", "/etc/hosts")} <= pairs


def test_on_one_vm_nothing_of_the_instance_is_bound():
    words = launcher_words()
    assert "--bind-ro" not in words and "PBS_NODEFILE" not in words[:words.index("--")]
