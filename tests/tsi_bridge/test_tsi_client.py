"""The Twisted client against a real agent subprocess, plain and with mutual TLS."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tsi_bridge.channels import quick_ack
from tsi_bridge.client import TSIClient
from tsi_bridge.errors import TSICommandFailed, TSIError
from tsi_bridge.readiness import probe_agent


def client_for(endpoint, **options) -> TSIClient:
    agent, tls = endpoint
    return TSIClient(reactor, "127.0.0.1", agent.port, tls=tls, **options)


@pytest_twisted.ensureDeferred
async def test_every_command(endpoint, tmp_path):
    agent, tls = endpoint
    client = client_for(endpoint, request_timeout=30)
    job_dir = str(agent.workdir / f"job-{os.getpid()}-{id(tmp_path)}")
    try:
        assert await client.ping() == "11.2.1"
        assert await probe_agent(reactor, "127.0.0.1", agent.port, tls) == "0.1.0"
        assert await client.execute_script(f"mkdir -p {job_dir} && echo made") == "made\n"
        await client.put_file_chunk(f"{job_dir}/input.txt", b"staged input\n")
        await client.put_file_chunk(f"{job_dir}/input.txt", b"more\n", append=True)
        assert await client.get_file_chunk(f"{job_dir}/input.txt", 7, 100) == b"input\nmore\n"
        [info] = await client.ls(f"{job_dir}/input.txt")
        assert (info.size, info.is_dir, info.permissions) == (18, False, "-rw-r--r--")
        listing = await client.ls(job_dir, "N")
        assert [i.path for i in listing] == [f"{job_dir}/input.txt"]
        assert await client.ls(f"{job_dir}/missing") == []
        df = await client.df(job_dir)
        assert df["TOTAL"] >= df["FREE"] > 0
        user_info = await client.get_user_info()
        assert user_info["home"] and user_info["status"]

        bssid = await client.submit(
            "cat input.txt > copy.txt\necho out; echo err >&2\nsleep 0.5\n"
            "echo $? > UNICORE_SCRIPT_EXIT_CODE\n", uspace_dir=job_dir, runtime=60)
        assert bssid.isdigit()
        status = await client.get_status_listing()
        assert status[bssid].state == "RUNNING"
        await client.wait_for_job(bssid, poll_interval=0.1, timeout=20)
        assert await client.exit_code(job_dir, grace=5) == 0
        assert await client.read_file(f"{job_dir}/stdout") == b"out\n"
        assert await client.read_file(f"{job_dir}/stderr") == b"err\n"
        assert await client.read_file(f"{job_dir}/copy.txt") == b"staged input\nmore\n"
        assert '"exit_code": 0' in await client.job_details(bssid)

        with pytest.raises(TSICommandFailed) as failure:
            await client.abort_job(bssid)  # finished
        assert failure.value.reason == "TSI_ERROR" and "finished" in failure.value.message
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_hold_resume_abort_and_nonzero_exit(endpoint):
    agent, _tls = endpoint
    client = client_for(endpoint, request_timeout=30)
    job_dir = str(agent.workdir / "control")
    try:
        bssid = await client.submit("sleep 30\n", uspace_dir=job_dir)
        await client.hold_job(bssid)
        assert (await client.get_status_listing())[bssid].state == "SUSPENDED"
        await client.resume_job(bssid)
        assert (await client.get_status_listing())[bssid].state == "RUNNING"
        await client.abort_job(bssid)
        await client.wait_for_job(bssid, poll_interval=0.1, timeout=10)
        assert await client.exit_code(job_dir, grace=5) == 128 + 15
        assert '"reason": "JOB_ABORTED"' in await client.job_details(bssid)

        with pytest.raises(TSICommandFailed) as failure:
            await client.execute_script("echo to-stdout; exit 3")
        assert "failed with code 3: to-stdout" in failure.value.message
        failing = await client.submit("exit 7\n", uspace_dir=job_dir + "/b")
        await client.wait_for_job(failing, poll_interval=0.1, timeout=10)
        assert await client.exit_code(job_dir + "/b", grace=5) == 7
        # the worker survived all the TSI_FAILED replies
        assert await client.ping() == "11.2.1"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_only_our_job_ids_are_acted_on(endpoint):
    agent, _tls = endpoint
    ours, theirs = client_for(endpoint), client_for(endpoint)
    try:
        mine = await ours.submit("sleep 2\n", uspace_dir=str(agent.workdir / "ours"))
        other = await theirs.submit("sleep 2\n", uspace_dir=str(agent.workdir / "theirs"))
        assert set(await ours.get_status_listing()) == {mine}
        assert {mine, other} <= set(await ours.get_status_listing(all_jobs=True))
        with pytest.raises(TSIError) as refused:
            await ours.abort_job(other)
        assert refused.value.reason == "BAD_REQUEST"
    finally:
        await ours.close()
        await theirs.close()


@pytest.mark.parametrize("size", [0, 1, 50 * 1024 * 1024])
@pytest_twisted.ensureDeferred
async def test_file_round_trip_by_checksum(endpoint, tmp_path, size):
    agent, _tls = endpoint
    client = client_for(endpoint, request_timeout=60)
    source, back = tmp_path / "source.bin", tmp_path / "back.bin"
    source.write_bytes(os.urandom(size))
    remote = str(agent.workdir / f"file-{size}.bin")
    try:
        assert await client.upload(str(source), remote) == size
        [info] = await client.ls(remote)
        assert info.size == size
        assert await client.download(remote, str(back)) == size
        assert hashlib.sha256(back.read_bytes()).digest() == \
            hashlib.sha256(source.read_bytes()).digest()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_pool_serves_concurrent_requests_with_bounded_workers(endpoint):
    client = client_for(endpoint, pool_size=3)
    try:
        results = await defer.gatherResults([client.ping() for _ in range(12)])
        assert results == ["11.2.1"] * 12
        assert client.idle_workers == 3
        outputs = await defer.gatherResults(
            [client.execute_script(f"sleep 0.2; echo {n}") for n in range(6)])
        assert outputs == [f"{n}\n" for n in range(6)]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_ping_behind_a_queue_of_requests_takes_the_next_free_worker(endpoint):
    client = client_for(endpoint, pool_size=2)
    order: list[str] = []
    try:
        await client.ping()
        queued = [client.execute_script(f"sleep 0.3; echo {n}").addCallback(
            lambda out: order.append(out.strip())) for n in range(6)]
        await client.ping().addCallback(lambda _: order.append("ping"))
        await defer.gatherResults(queued)
        # two scripts had the workers; the ping came with the first one freed
        assert order.index("ping") <= 2, order
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_channels_find_their_tcp_socket_for_quick_acks(endpoint):
    """Plain and under TLS, both channels of a worker reach the TCP socket they set
    TCP_QUICKACK on (the official TSI's split replies otherwise wait ~40 ms each)."""
    client = client_for(endpoint)
    try:
        await client.ping()
        [worker] = client._idle
        for channel in (worker.command, worker.data):
            assert isinstance(channel.socket, socket.socket)
            assert channel.socket.getpeername()[0] == "127.0.0.1"
            quick_ack(channel.socket)  # the option exists here and is accepted
            assert channel.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) in (0, 1)
        quick_ack(None)
        assert await client.ping() == "11.2.1"  # and the link works on
    finally:
        await client.close()
