"""The guest-side container launcher: OCI archive checked and unpacked once (layers in order,
whiteouts, every path inside the root), the architecture checked, a rootless runtime
configuration, the runtime's exit code passed on, and why a container cannot start."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from target_system import container_launcher as launcher
from tests.support.oci import oci_archive, tar_bytes

LOWER = [("bin", None), ("bin/sh", b"#!shell"), ("etc", None),
         ("etc/os-release", b'PRETTY_NAME="lower"\n'), ("etc/old", b"old"),
         ("opt", None), ("opt/a", b"a"), ("opt/b", b"b"), ("escape", "/")]
UPPER = [("etc/os-release", b'PRETTY_NAME="upper"\n'), ("etc/.wh.old", b""),
         ("opt/.wh..wh..opq", b""), ("opt/c", b"c"),
         ("escape/etc/planted", b"must stay inside the root"),
         ("../outside", b"must stay inside the root")]


def test_layers_unpack_in_order_with_whiteouts_and_nothing_leaves_the_root(tmp_path):
    archive = tmp_path / "image.oci.tar"
    sha = oci_archive(archive, [LOWER, UPPER])
    target = tmp_path / "cache" / sha[:64]
    config = launcher.unpack(str(archive), sha, str(target), "amd64")
    root = target / "rootfs"
    assert config["architecture"] == "amd64"
    assert (root / "etc/os-release").read_text() == 'PRETTY_NAME="upper"\n'
    assert not (root / "etc/old").exists()
    assert sorted(os.listdir(root / "opt")) == ["c"]
    assert (root / "etc/planted").read_text() == "must stay inside the root"  # via "/"
    assert (root / "outside").exists() and not (tmp_path / "cache" / "outside").exists()
    assert stat.S_IMODE((root / "bin/sh").stat().st_mode) == 0o755
    # once per instance: a second call reads what the first unpacked
    archive.write_bytes(b"changed")
    assert launcher.unpack(str(archive), sha, str(target), "amd64") == config


def test_a_damaged_archive_or_another_architecture_is_refused(tmp_path):
    archive = tmp_path / "image.oci.tar"
    sha = oci_archive(archive, [LOWER], architecture="arm64")
    with pytest.raises(launcher.ContainerFailed, match="sha512"):
        launcher.unpack(str(archive), "0" * 128, str(tmp_path / "a"), "amd64")
    assert not (tmp_path / "a").exists()
    config = launcher.unpack(str(archive), sha, str(tmp_path / "b"), "amd64")
    with pytest.raises(launcher.ContainerFailed, match=r"for arm64, this instance is amd64"):
        launcher.check_architecture(config, "x86_64")
    not_oci = tmp_path / "plain.tar"
    not_oci.write_bytes(tar_bytes([("hello", b"hi")]))
    with pytest.raises(launcher.ContainerFailed, match=r"no index\.json"):
        launcher.unpack(str(not_oci), hashlib.sha512(not_oci.read_bytes()).hexdigest(),
                        str(tmp_path / "c"), "amd64")


def test_the_runtime_configuration_is_rootless_with_the_jobs_user_directory_and_limits():
    config = launcher.runtime_config(rootfs="/c/rootfs", workdir="/home/u/jobs/1",
                                     args=["/bin/sh", "-c", "true"], env={"A": "1"},
                                     uid=1000, gid=1001, memory_mib=256)
    process = config["process"]
    assert process["user"] == {"uid": 1000, "gid": 1001}
    assert process["cwd"] == "/home/u/jobs/1" and process["env"] == ["A=1"]
    assert {"type": "RLIMIT_AS", "hard": 256 << 20, "soft": 256 << 20} in process["rlimits"]
    assert config["root"] == {"path": "/c/rootfs", "readonly": True}
    [work] = [m for m in config["mounts"] if m["destination"] == "/home/u/jobs/1"]
    assert work["source"] == "/home/u/jobs/1" and "rw" in work["options"]
    linux = config["linux"]
    assert {"type": "user"} in linux["namespaces"]
    assert linux["uidMappings"] == [{"containerID": 1000, "hostID": 1000, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 1001, "hostID": 1001, "size": 1}]


FAKE_RUNTIME = """#!/bin/sh
# a stand-in OCI runtime: records its arguments and the bundle's config, exits 7
case "$3" in run) cp "$5/config.json" "$RECORD.config"; echo "$@" > "$RECORD"; exit 7;; esac
"""


def test_main_runs_the_runtime_and_passes_its_exit_code_on(tmp_path, monkeypatch):
    archive = tmp_path / "image.oci.tar"
    sha = oci_archive(archive, [LOWER])
    runtime = tmp_path / "crun"
    runtime.write_text(FAKE_RUNTIME)
    runtime.chmod(0o755)
    work = tmp_path / "job"
    work.mkdir()
    monkeypatch.setenv("RECORD", str(tmp_path / "record"))
    monkeypatch.setenv("JOB_VAR", "from the job")
    code = launcher.main(["--archive", str(archive), "--sha512", sha, "--cache",
                          str(tmp_path / "cache"), "--workdir", str(work), "--runtime",
                          str(runtime), "--env", "JOB_VAR", "--", "/bin/sh", "-c", "exit 7"])
    assert code == 7
    argv = (tmp_path / "record").read_text().split()
    assert argv[:3] == ["--root", str(tmp_path / "cache" / "state"), "run"]
    config = json.loads((tmp_path / "record.config").read_text())
    assert config["process"]["args"] == ["/bin/sh", "-c", "exit 7"]
    assert config["process"]["user"] == {"uid": os.getuid(), "gid": os.getgid()}
    env = dict(item.split("=", 1) for item in config["process"]["env"])
    assert env["JOB_VAR"] == "from the job" and env["FROM_IMAGE"] == "yes"
    assert os.listdir(tmp_path / "cache" / "run") == []  # the bundle is removed


def test_main_says_why_a_container_cannot_start(tmp_path, capsys):
    archive = tmp_path / "image.oci.tar"
    oci_archive(archive, [LOWER])
    work = tmp_path / "job"
    work.mkdir()
    code = launcher.main(["--archive", str(archive), "--sha512", "0" * 128, "--cache",
                          str(tmp_path / "cache"), "--workdir", str(work), "--", "true"])
    assert code == launcher.SETUP_FAILED
    note = (work / launcher.FAILURE_FILE).read_text()
    assert note.startswith("the container cannot run: the staged archive's sha512 is")
    assert "gridvm-container: the container cannot run" in capsys.readouterr().err


def test_instance_paths_are_bound_read_only_with_their_mount_points_made(tmp_path,
                                                                          monkeypatch):
    """A cluster node's peer files and /etc/hosts reach a container job (MPI reads them)."""
    archive = tmp_path / "image.oci.tar"
    sha = oci_archive(archive, [LOWER])
    runtime = tmp_path / "crun"
    runtime.write_text(FAKE_RUNTIME)
    runtime.chmod(0o755)
    work, peers, hosts = tmp_path / "job", tmp_path / "cluster", tmp_path / "hosts"
    work.mkdir()
    peers.mkdir()
    (peers / "hostfile").write_text("node0\nnode1\n")
    hosts.write_text("10.77.0.2 node0\n")
    monkeypatch.setenv("RECORD", str(tmp_path / "record"))
    launcher.main(["--archive", str(archive), "--sha512", sha, "--cache",
                   str(tmp_path / "cache"), "--workdir", str(work), "--runtime", str(runtime),
                   "--bind-ro", str(peers), "--bind-ro", str(hosts),
                   "--bind-ro", str(tmp_path / "absent"), "--", "true"])
    config = json.loads((tmp_path / "record.config").read_text())
    bound = {m["destination"]: m for m in config["mounts"] if m["source"] in (
        str(peers), str(hosts), str(tmp_path / "absent"))}
    assert set(bound) == {str(peers), str(hosts)}  # what the instance lacks is left out
    assert all("ro" in m["options"] and "rbind" in m["options"] for m in bound.values())
    rootfs = tmp_path / "cache" / sha[:64] / "rootfs"
    assert (rootfs / str(peers).lstrip("/")).is_dir()
    assert (rootfs / str(hosts).lstrip("/")).is_file()
