"""A cloud-init NoCloud medium that turns any image with cloud-init and python3 into a
target system.

NoCloud reads ``meta-data`` (instance-id, hostname), ``user-data`` and ``network-config``
from the root of any file system labelled ``cidata``.  The user-data creates the job user
and its working directory, mounts the medium itself (the virtio disk with serial
``gridvm-ctx``) and starts the gridvm TSI agent **from the medium** as a transient systemd
unit with ``Restart=always``: the agent is stdlib Python, so no gridvm code needs to be in
the image.
The agent's configuration, certificate and key are the same files as for gridvm's own
images (``tsi_bridge.context``), under ``tsi/``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import tsi_bridge

MEDIUM_SERIAL = "gridvm-ctx"  #: the serial vmm gives the contextualization disk
MOUNT_POINT = "/run/gridvm/ctx"
AGENT_LIB = "lib"  #: directory on the medium holding the tsi_bridge package
AGENT_UNIT = "gridvm-tsi"
HOOKS_DIR = "init.d"  #: start-up hooks on the medium, run in name order before the agent
#: QEMU gives the one NIC of a guest without an explicit MAC this address.
QEMU_DEFAULT_MAC = "52:54:00:12:34:56"
GUEST_ADDRESS = "10.0.2.15/24"
GUEST_GATEWAY = "10.0.2.2"


def agent_sources(package: Path | None = None) -> dict[str, bytes]:
    """The guest-side part of ``tsi_bridge`` (package marker, protocol, agent) by path on
    the medium; nothing else of gridvm runs in the guest."""
    package = Path(package or Path(tsi_bridge.__file__).parent)
    files = {"__init__.py": (package / "__init__.py").read_bytes(),
             "protocol.py": (package / "protocol.py").read_bytes()}
    for source in sorted((package / "agent").glob("*.py")):
        files[f"agent/{source.name}"] = source.read_bytes()
    return {f"{AGENT_LIB}/tsi_bridge/{rel}": data for rel, data in files.items()}


def meta_data(instance_id: str, hostname: str | None = None) -> bytes:
    """NoCloud meta-data: a fresh instance-id makes cloud-init treat the boot as new."""
    return json.dumps({"instance-id": instance_id,
                       "local-hostname": hostname or f"gridvm-{instance_id}"},
                      indent=2).encode() + b"\n"


def network_config(mac: str = QEMU_DEFAULT_MAC) -> bytes:
    """Version 1 network config: the static address of QEMU user-mode networking."""
    return json.dumps({"version": 1, "config": [{
        "type": "physical", "name": "eth0", "mac_address": mac,
        "subnets": [{"type": "static", "address": GUEST_ADDRESS, "gateway": GUEST_GATEWAY}],
    }]}, indent=2).encode() + b"\n"


def user_data(*, job_user: str, job_group: str | None, workdir_root: str,
              config_path: str = "tsi/agent.conf", start_script: str | None = None,
              hostname: str = "gridvm") -> bytes:
    """``#cloud-config`` creating the job user, running the medium's start-up hooks
    (``init.d/*`` in name order, as gridvm's own images do: a cluster node's network, the
    site's hooks) and starting the agent from the medium (for an image's own TSI: the
    medium's ``start_script``).

    It all happens in ``bootcmd``, the first thing cloud-init's network stage runs: waiting
    for the ``users``/``runcmd`` modules of the later stages would cost a minute and more of
    emulated boot time.  The commands are idempotent (bootcmd runs on every boot).  The
    hostname is set there too, and ``preserve_hostname`` keeps cloud-init's later modules
    from undoing what a hook set (a cluster node's name).
    """
    group = job_group or job_user
    user, group, workdir, ctx = (shlex.quote(v) for v in (job_user, group, workdir_root,
                                                          MOUNT_POINT))
    # --no-block and no default dependencies: cloud-init's network stage runs before
    # sysinit.target, which a unit with default dependencies (and so systemd-run waiting for
    # it) would wait for — a deadlock.
    agent = shlex.join([
        "systemd-run", "--no-block", f"--unit={AGENT_UNIT}",
        "--property=DefaultDependencies=no", "--property=Restart=always",
        "--property=RestartSec=1", f"--setenv=PYTHONPATH={MOUNT_POINT}/{AGENT_LIB}",
        "--setenv=PYTHONDONTWRITEBYTECODE=1", "--setenv=LANG=C.UTF-8",
        *(["/bin/sh", f"{MOUNT_POINT}/{start_script}"] if start_script else
          ["python3", "-m", "tsi_bridge.agent", "--config", f"{MOUNT_POINT}/{config_path}"])])
    hooks = (f"for hook in {ctx}/{HOOKS_DIR}/*; do [ -f \"$hook\" ] && sh \"$hook\"; "
             "done; true")
    config = {"preserve_hostname": True, "bootcmd": [
        f"hostname {shlex.quote(hostname)}",
        f"getent group {group} >/dev/null || groupadd {group}",
        f"id -u {user} >/dev/null 2>&1 || useradd --create-home --gid {group} "
        f"--shell /bin/bash --comment 'gridvm jobs' {user}",
        f"mkdir -p {ctx} {workdir}",
        f"chown {user}:{group} {workdir}",
        f"mountpoint -q {ctx} || mount -o ro /dev/disk/by-id/virtio-{MEDIUM_SERIAL} {ctx}",
        hooks,
        f"systemctl is-active -q {AGENT_UNIT} || {agent}",
    ]}
    # JSON is YAML: cloud-init parses it as cloud-config after the header line.
    return b"#cloud-config\n" + json.dumps(config, indent=2).encode() + b"\n"


def nocloud_files(instance_id: str, agent_files: dict[str, bytes], *, job_user: str,
                  job_group: str | None, workdir_root: str,
                  start_script: str | None = None) -> dict[str, bytes]:
    """Everything on the medium: NoCloud's three files, the agent and its configuration
    (``agent_files`` as made by ``tsi_bridge.context.agent_context_files``)."""
    return {
        "meta-data": meta_data(instance_id),
        "user-data": user_data(job_user=job_user, job_group=job_group,
                               workdir_root=workdir_root, start_script=start_script,
                               hostname=f"gridvm-{instance_id}"),
        "network-config": network_config(),
        **agent_sources(),
        **agent_files,
    }
