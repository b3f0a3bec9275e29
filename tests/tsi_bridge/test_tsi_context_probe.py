"""The contracts with the rest of gridvm: context files, the probe CLI, privileged mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.local_agent import REPO
from tsi_bridge.client import TSIClient
from tsi_bridge.context import instance_context_files
from tsi_bridge.errors import TSICommandFailed
from tsi_bridge.readiness import probe_agent
from tsi_bridge.tls import TLSConfig


def run_probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsi_bridge", "probe", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_probe_cli_plain_and_tls(endpoint, pki, tmp_path):
    agent, tls = endpoint
    args = ["--host", "127.0.0.1", "--port", str(agent.port), "--workdir", str(agent.workdir)]
    if tls is not None:
        d = pki.directory
        args += ["--tls", "--ca", str(d / "ca.pem"), "--cert", str(d / "server.pem"),
                 "--key", str(d / "server.key"), "--peer-cert", str(d / "agent.pem")]
    result = run_probe(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("ping", "mkdir", "upload", "submit", "wait", "exit code", "read output"):
        assert any(line.split()[:1] == ["ok"] and step in line
                   for line in result.stdout.splitlines()), result.stdout
    assert " ms " in result.stdout and "all steps passed" in result.stdout


def test_probe_cli_fails_cleanly(tmp_path):
    result = run_probe("--host", "127.0.0.1", "--port", "1")
    assert result.returncode == 1
    assert "TSI_UNREACHABLE" in result.stdout and "Traceback" not in result.stderr
    usage = run_probe("--host", "127.0.0.1", "--port", "1", "--tls")
    assert usage.returncode == 2 and "--tls needs" in usage.stderr


@pytest_twisted.ensureDeferred
async def test_agent_runs_from_its_context_files(start_agent, pki, tmp_path):
    files, issued = instance_context_files(pki.ca, pki.server, "ctx-1", callback_port=None,
                                           workdir_root=str(tmp_path / "jobs"))
    assert set(files) == {"tsi/agent.conf", "tsi/agent.pem", "tsi/agent.key", "tsi/ca.pem",
                          "tsi/server.pem"}
    config = json.loads(files["tsi/agent.conf"])
    assert config["callback_host"] == "10.0.2.100" and config["listen_port"] == 4433
    medium = tmp_path / "ctx"
    for name, content in files.items():
        (medium / name).parent.mkdir(parents=True, exist_ok=True)
        (medium / name).write_bytes(content)
    # on loopback: override what only makes sense inside a guest
    agent = start_agent("--callback-host", "127.0.0.1",
                        config=medium / "tsi" / "agent.conf")
    tls = TLSConfig(pki.server.cert_pem, pki.server.key_pem, pki.ca.cert_pem, issued.cert_pem)
    assert await probe_agent(reactor, "127.0.0.1", agent.port, tls) == "0.1.0"
    client = TSIClient(reactor, "127.0.0.1", agent.port, tls=tls)
    try:
        assert await client.ping() == "11.2.1"
        # confine_paths: the guest's agent refuses paths outside its working directory root
        with pytest.raises(TSICommandFailed) as refused:
            await client.read_file("/etc/passwd")
        assert "outside the working directory root" in refused.value.message
    finally:
        await client.close()


def test_agent_rejects_bad_configuration(tmp_path):
    bad = tmp_path / "agent.conf"
    bad.write_text(json.dumps({"listen_port": 4433, "callback_hots": "x"}))
    result = subprocess.run([sys.executable, "-S", "-m", "tsi_bridge.agent", "--config",
                             str(bad)], capture_output=True, text=True, timeout=30,
                            env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert "unknown configuration key: callback_hots" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="privileged mode needs root")
@pytest_twisted.ensureDeferred
async def test_privileged_agent_runs_everything_as_the_job_user(start_agent):
    base = Path(tempfile.mkdtemp(prefix="gridvm-tsi-priv-"))
    os.chmod(base, 0o755)
    try:
        agent = start_agent("--job-user", "nobody", "--workdir-root", str(base / "jobs"))
        client = TSIClient(reactor, "127.0.0.1", agent.port, user="whoever")
        try:
            assert (await client.execute_script("id -u")).strip() == "65534"
            await client.write_file(str(base / "jobs" / "mine.txt"), b"x")
            assert (base / "jobs" / "mine.txt").stat().st_uid == 65534
            with pytest.raises(TSICommandFailed) as denied:
                await client.write_file(str(base / "not-mine.txt"), b"x")
            assert "Permission denied" in denied.value.message
            [entry] = await client.ls(str(base / "jobs" / "mine.txt"))
            assert entry.owned and entry.owner == "nobody"
            bssid = await client.submit("id -u > who.txt\n", uspace_dir=str(base / "jobs/j"))
            await client.wait_for_job(bssid, poll_interval=0.1, timeout=10)
            assert await client.read_file(str(base / "jobs/j/who.txt")) == b"65534\n"
            assert await client.exit_code(str(base / "jobs/j"), grace=5) == 0
        finally:
            await client.close()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="privileged mode needs root")
@pytest_twisted.ensureDeferred
async def test_privileged_agent_switches_to_the_identity_user(start_agent):
    agent = start_agent("--workdir-root", "/tmp", privileged=True)
    clients = {user: TSIClient(reactor, "127.0.0.1", agent.port, user=user)
               for user in ("nobody", "root", "nosuchuser")}
    try:
        assert (await clients["nobody"].execute_script("id -u")).strip() == "65534"
        with pytest.raises(TSICommandFailed) as root:
            await clients["root"].execute_script("id -u")
        assert root.value.message == "Attempted to run a command as root root"
        with pytest.raises(TSICommandFailed) as unknown:
            await clients["nosuchuser"].execute_script("id -u")
        assert "unknown user nosuchuser" in unknown.value.message
        assert await clients["root"].ping() == "11.2.1"  # PING needs no identity
    finally:
        for client in clients.values():
            await client.close()
