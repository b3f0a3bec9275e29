"""The cloud-init NoCloud medium: what cloud-init reads from it, and the agent it carries."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pycdlib

from tsi_bridge.context import agent_context_files
from tsi_bridge.nocloud import (
    AGENT_UNIT,
    MOUNT_POINT,
    QEMU_DEFAULT_MAC,
    agent_sources,
    meta_data,
    nocloud_files,
    user_data,
)
from vmm.context import VOLUME_LABEL, build_medium, read_medium


def agent_files() -> dict[str, bytes]:
    return agent_context_files(agent_cert_pem=b"CERT", agent_key_pem=b"KEY", ca_pem=b"CA",
                               server_cert_pem=b"SERVER", callback_port=40002,
                               job_user="gridvm", workdir_root="/home/gridvm/jobs")


def cloud_config(data: bytes) -> dict:
    header, _, body = data.partition(b"\n")
    assert header == b"#cloud-config"
    return json.loads(body)  # JSON is YAML: cloud-init reads it as cloud-config


def test_meta_data_names_a_fresh_instance_and_its_hostname():
    assert json.loads(meta_data("abc123")) == {"instance-id": "abc123",
                                               "local-hostname": "gridvm-abc123"}


def test_user_data_creates_the_job_user_and_starts_the_agent_from_the_medium():
    config = cloud_config(user_data(job_user="gridvm", job_group=None,
                                    workdir_root="/home/gridvm/jobs"))
    assert list(config) == ["preserve_hostname", "bootcmd"]  # bootcmd: the earliest stage
    assert config["preserve_hostname"] is True  # with the network up; a hook's name stays
    hostname, group, user, mkdir, chown, mount, hooks, agent = config["bootcmd"]
    assert hostname == "hostname gridvm"
    assert hooks.startswith(f"for hook in {MOUNT_POINT}/init.d/*;")
    assert group == "getent group gridvm >/dev/null || groupadd gridvm"
    assert user == ("id -u gridvm >/dev/null 2>&1 || useradd --create-home --gid gridvm "
                    "--shell /bin/bash --comment 'gridvm jobs' gridvm")
    assert mkdir == f"mkdir -p {MOUNT_POINT} /home/gridvm/jobs"
    assert chown == "chown gridvm:gridvm /home/gridvm/jobs"
    assert mount == (f"mountpoint -q {MOUNT_POINT} || mount -o ro "
                     f"/dev/disk/by-id/virtio-gridvm-ctx {MOUNT_POINT}")
    words = shlex.split(agent.split(" || ", 1)[1])
    assert words[:5] == ["systemd-run", "--no-block", f"--unit={AGENT_UNIT}",
                         "--property=DefaultDependencies=no", "--property=Restart=always"]
    assert f"--setenv=PYTHONPATH={MOUNT_POINT}/lib" in words
    assert words[-5:] == ["python3", "-m", "tsi_bridge.agent", "--config",
                          f"{MOUNT_POINT}/tsi/agent.conf"]
    for command in config["bootcmd"]:  # every command is valid shell
        subprocess.run(["sh", "-n", "-c", command], check=True)


def test_values_are_quoted_for_the_shell_and_a_job_group_is_used():
    config = cloud_config(user_data(job_user="jobs", job_group="vo",
                                    workdir_root="/w/a dir;x"))
    assert config["bootcmd"][1] == "getent group vo >/dev/null || groupadd vo"
    assert "--gid vo" in config["bootcmd"][2]
    assert config["bootcmd"][4] == "chown jobs:vo '/w/a dir;x'"


def test_the_mediums_start_up_hooks_run_in_name_order_and_a_failing_one_stops_nothing(
        tmp_path):
    """As gridvm's own images do: a cluster node's network, the site's hooks."""
    config = cloud_config(user_data(job_user="gridvm", job_group=None,
                                    workdir_root="/home/gridvm/jobs", hostname="node0"))
    [hooks] = [c for c in config["bootcmd"] if c.startswith("for hook in")]
    (tmp_path / "init.d").mkdir()
    ran = tmp_path / "ran"
    for name, word, end in (("20-second", "second", ""), ("00-first", "first", "exit 3"),
                            ("10-middle", "middle", "")):
        (tmp_path / "init.d" / name).write_text(f"echo {word} >> {ran}\n{end}\n")
    result = subprocess.run(["sh", "-c", hooks.replace(MOUNT_POINT, str(tmp_path))])
    assert result.returncode == 0
    assert ran.read_text().split() == ["first", "middle", "second"]
    assert "hostname node0" in config["bootcmd"]


def test_the_medium_is_labelled_cidata_and_carries_nocloud_files_agent_and_config(tmp_path):
    files = nocloud_files("abc123", agent_files(), job_user="gridvm", job_group=None,
                          workdir_root="/home/gridvm/jobs")
    medium = build_medium(files, tmp_path / "context.iso")
    iso = pycdlib.PyCdlib()
    iso.open(str(medium))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == VOLUME_LABEL == "cidata"
    finally:
        iso.close()
    content = read_medium(medium)
    assert content == files
    assert json.loads(content["meta-data"])["instance-id"] == "abc123"
    network = json.loads(content["network-config"])
    assert network["version"] == 1
    assert network["config"][0]["mac_address"] == QEMU_DEFAULT_MAC
    assert network["config"][0]["subnets"] == [
        {"type": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2"}]
    assert json.loads(content["tsi/agent.conf"])["callback_port"] == 40002
    assert "lib/tsi_bridge/agent/server.py" in content


def test_the_shipped_agent_sources_are_complete_on_the_standard_library_alone(tmp_path):
    for rel, data in agent_sources().items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert not any("client" in rel or "context" in rel for rel in agent_sources())
    # -S -E: no site-packages, no PYTHONPATH; only the medium's lib directory
    code = ("import sys; sys.path.insert(0, 'lib'); import tsi_bridge.agent.__main__, "
            "tsi_bridge.agent.server, tsi_bridge.agent.tls; "
            "print(tsi_bridge.agent.server.__file__)")
    result = subprocess.run([sys.executable, "-S", "-E", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "lib/tsi_bridge/agent/server.py")
