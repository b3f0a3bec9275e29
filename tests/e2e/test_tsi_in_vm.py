"""The TSI agent inside a real VM, reached through the forwarded port with mutual TLS."""

import hashlib
import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from target_system.images import built_image_boot_spec
from tsi_bridge.ca import CertificateAuthority
from tsi_bridge.client import TSIClient
from tsi_bridge.context import instance_context_files
from tsi_bridge.errors import TSICommandFailed
from tsi_bridge.readiness import probe_agent
from tsi_bridge.tls import TLSConfig
from vmm import ports
from vmm.manager import InstanceSpec

pytestmark = pytest.mark.vm


@pytest_twisted.ensureDeferred
async def test_every_command_against_the_agent_in_a_vm(vmm, built_images, tmp_path):
    ca = CertificateAuthority.create()
    server = ca.issue_server()
    spec_files, issued = instance_context_files(ca, server, "tsi-vm", workdir_root="/home/gridvm")
    tls = TLSConfig(server.cert_pem, server.key_pem, ca.cert_pem, issued.cert_pem)
    host_port = ports.free_port()
    client = TSIClient(reactor, "127.0.0.1", host_port, tls=tls, user="gridvm")
    callback_port = client.start()
    instance = await vmm.boot(InstanceSpec(
        boot=built_image_boot_spec(built_images["initramfs"]), host_port=host_port,
        callback_port=callback_port, context_files=spec_files,
        probe=lambda h, p: probe_agent(reactor, h, p, tls)))
    try:
        assert instance.greeting  # the mutual-TLS readiness probe answered
        assert await client.ping()
        assert "gridvm" in await client.execute_script("id -un")
        workdir = "/home/gridvm/probe"
        await client.execute_script(f"mkdir -p {workdir}")
        big = os.urandom(5 * 1024 * 1024 + 7)
        for name, data in (("empty", b""), ("one", b"x"), ("big", big)):
            await client.write_file(f"{workdir}/{name}", data)
            back = await client.read_file(f"{workdir}/{name}")
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest(), name
        listing = {e.path.rsplit("/", 1)[1]: e for e in await client.ls(workdir, "N")}
        assert listing["big"].size == len(big) and listing["empty"].size == 0
        assert (await client.df(workdir))["TOTAL"] > 0

        bssid = await client.submit("cat one; exit 5", uspace_dir=workdir)
        await client.wait_for_job(bssid, poll_interval=0.2, timeout=60)
        assert await client.exit_code(workdir, grace=10) == 5
        assert await client.read_file(f"{workdir}/stdout") == b"x"

        sleeper = await client.submit("sleep 300", uspace_dir=workdir)
        assert sleeper in await client.get_status_listing()
        await client.abort_job(sleeper)
        await client.wait_for_job(sleeper, poll_interval=0.2, timeout=30)
        with pytest.raises(TSICommandFailed):
            await client.abort_job(sleeper)  # finished: the TSI says so
        with pytest.raises(TSICommandFailed):
            await client.read_file("/etc/shadow")  # outside the job user's reach
    finally:
        await client.close()
        await vmm.destroy(instance.instance_id)


@pytest_twisted.ensureDeferred
async def test_operator_probe_cli_against_the_vm(vmm, built_images, tmp_path):
    ca = CertificateAuthority.create()
    server = ca.issue_server()
    callback_port = ports.free_port()
    files, issued = instance_context_files(ca, server, "probe-vm", callback_port=callback_port)
    instance = await vmm.boot(InstanceSpec(
        boot=built_image_boot_spec(built_images["initramfs"]), callback_port=callback_port,
        context_files=files,
        probe=lambda h, p: probe_agent(reactor, h, p, TLSConfig(
            server.cert_pem, server.key_pem, ca.cert_pem, issued.cert_pem))))
    try:
        for name, data in (("ca.pem", ca.cert_pem), ("server.pem", server.cert_pem),
                           ("server.key", server.key_pem), ("vm.pem", issued.cert_pem)):
            (tmp_path / name).write_bytes(data)
        result = await threads.deferToThread(subprocess.run, [
            sys.executable, "-m", "tsi_bridge", "probe", "--host", "127.0.0.1",
            "--port", str(instance.host_port), "--tls", "--ca", str(tmp_path / "ca.pem"),
            "--cert", str(tmp_path / "server.pem"), "--key", str(tmp_path / "server.key"),
            "--peer-cert", str(tmp_path / "vm.pem"), "--callback-port", str(callback_port),
            "--user", "gridvm", "--workdir", "/home/gridvm", "--timeout", "60",
        ], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ping" in result.stdout.lower()
    finally:
        await vmm.destroy(instance.instance_id)
