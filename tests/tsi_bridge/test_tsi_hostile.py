"""Hostile or broken peers: each gets a clear error, and the agent keeps serving the others."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted
import tsi_transcripts as t
from tsi_raw import RawWorker, request
from twisted.internet import reactor, task

from tsi_bridge.client import TSIClient
from tsi_bridge.errors import TSIConnectionLost, TSIUnreachable
from tsi_bridge.readiness import probe_agent

FAST = ["--handshake-timeout", "1", "--request-timeout", "1", "--transfer-timeout", "1",
        "--idle-timeout", "30"]


def still_serving(agent) -> None:
    worker = RawWorker(agent.port)
    try:
        assert worker.exchange(t.PING[0]) == t.PING[1]
    finally:
        worker.close()


def closed_without_answer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def wait_for_log(agent, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.log():
        assert time.monotonic() < deadline, f"{text!r} not in agent log:\n{agent.log()[-2000:]}"
        time.sleep(0.05)


def test_garbage_and_silence_on_the_shepherd_port(start_agent):
    agent = start_agent(*FAST)
    garbage = socket.create_connection(("127.0.0.1", agent.port))
    garbage.sendall(b"\x16\x03\x01garbage\xff\xfe\n")
    assert garbage.recv(10) == b""  # closed without an answer
    silent = socket.create_connection(("127.0.0.1", agent.port))
    still_serving(agent)  # the silent peer blocks nobody
    silent.settimeout(5)
    assert silent.recv(10) == b""  # and is closed after the handshake timeout
    for line in (b"newtsiprocess\n", b"newtsiprocess 0\n", b"newtsiprocess x\n",
                 b"shutdown now\n"):
        peer = socket.create_connection(("127.0.0.1", agent.port))
        peer.sendall(line)
        assert peer.recv(10) == b""
    still_serving(agent)
    assert agent.alive()
    assert "not understood" in agent.log()


def test_nobody_listening_for_the_callbacks(start_agent):
    agent = start_agent(*FAST)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    peer = socket.create_connection(("127.0.0.1", agent.port))
    peer.sendall(b"newtsiprocess %d\n" % port)
    assert peer.recv(10) == b"OK\n"
    wait_for_log(agent, "ConnectionRefusedError")
    still_serving(agent)


def test_truncated_and_oversized_and_unfinished_messages(start_agent):
    agent = start_agent(*FAST)
    truncated = RawWorker(agent.port)
    truncated.command.sendall(t.PING[0][:12])
    truncated.command.close()
    truncated.data.close()
    wait_for_log(agent, "peer closed in the middle of a message")

    unfinished = RawWorker(agent.port)
    unfinished.command.sendall(b"#TSI_PING\n")
    assert unfinished.closed_by_peer(timeout=5)  # request timeout: 1 s
    wait_for_log(agent, "request incomplete after 1 s")
    unfinished.close()

    flood = RawWorker(agent.port)
    with contextlib.suppress(OSError):
        flood.command.sendall(b"x" * (17 * 1024 * 1024))
    assert flood.closed_by_peer()
    flood.close()
    still_serving(agent)


def test_abandoned_putfilechunk_ends_the_worker_without_spinning(start_agent):
    agent = start_agent(*FAST)
    target = agent.workdir / "abandoned.bin"
    put = request(f"#TSI_PUTFILECHUNK\n#TSI_FILESACTION 0\n#TSI_FILE {target} 644\n"
                  "#TSI_LENGTH 1000000\n")
    # the client dies half-way
    dying = RawWorker(agent.port)
    assert dying.exchange(put) == b"TSI_OK\nENDOFMESSAGE\n"
    dying.data.sendall(b"x" * 1000)
    dying.close()
    wait_for_log(agent, "data channel closed, 999000 of 1000000 bytes missing")
    # the client stalls half-way and stays connected
    stalling = RawWorker(agent.port)
    assert stalling.exchange(put) == b"TSI_OK\nENDOFMESSAGE\n"
    stalling.data.sendall(b"x" * 1000)
    assert stalling.closed_by_peer(timeout=5)
    stalling.close()
    wait_for_log(agent, "no data for 1 s")
    before = agent.cpu_seconds()
    time.sleep(1.0)
    assert agent.cpu_seconds() - before < 0.3  # nothing spins
    still_serving(agent)


def test_failed_write_keeps_the_stream_in_sync(start_agent):
    agent = start_agent()
    worker = RawWorker(agent.port)
    try:
        put = request("#TSI_PUTFILECHUNK\n#TSI_FILESACTION 0\n#TSI_FILE /dev/full 644\n"
                      "#TSI_LENGTH 10\n")
        assert worker.exchange(put) == b"TSI_OK\nENDOFMESSAGE\n"
        worker.data.sendall(b"0123456789")
        assert worker.read_reply().startswith(b"TSI_FAILED: [Errno 28] No space left")
        assert worker.exchange(t.PING[0]) == t.PING[1]
    finally:
        worker.close()


def test_jobs_keep_running_when_the_connection_drops(start_agent):
    agent = start_agent()
    job = agent.workdir / "survivor"
    worker = RawWorker(agent.port)
    submitted = worker.exchange(request(
        f"#!/bin/bash\n#TSI_SUBMIT\n#TSI_USPACE_DIR {job}\n#TSI_SCRIPT\nsleep 1\n"
        "echo $? > UNICORE_SCRIPT_EXIT_CODE\n"))
    bssid = submitted.split(b"\n")[1]
    worker.close()  # drop both connections while the job runs
    again = RawWorker(agent.port)
    try:
        assert b" " + bssid + b" RUNNING" in again.exchange(t.STATUS_REQUEST)
        deadline = time.monotonic() + 10
        while again.exchange(t.STATUS_REQUEST) != t.STATUS_EMPTY:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (job / "UNICORE_SCRIPT_EXIT_CODE").read_text() == "0\n"
    finally:
        again.close()


def test_jobs_are_adopted_after_an_agent_restart(start_agent):
    agent = start_agent()
    job = agent.workdir / "adopted"
    worker = RawWorker(agent.port)
    bssid = worker.exchange(request(
        f"#!/bin/bash\n#TSI_SUBMIT\n#TSI_USPACE_DIR {job}\n#TSI_SCRIPT\nsleep 2\n"
        "echo 5 > UNICORE_SCRIPT_EXIT_CODE\n")).split(b"\n")[1]
    worker.close()
    agent.stop()
    agent.start()  # same state dir, same port
    worker = RawWorker(agent.port)
    try:
        assert b" " + bssid + b" RUNNING" in worker.exchange(t.STATUS_REQUEST)
        assert "adopted 1 job(s)" in agent.log()
        deadline = time.monotonic() + 10
        while worker.exchange(t.STATUS_REQUEST) != t.STATUS_EMPTY:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (job / "UNICORE_SCRIPT_EXIT_CODE").read_text() == "5\n"
        aborted = worker.exchange(request(f"#TSI_ABORTJOB\n#TSI_BSSID {bssid.decode()}\n"))
        assert aborted.startswith(b"TSI_FAILED: Job ") and b"finished" in aborted
    finally:
        worker.close()


def test_runtime_limit_kills_the_whole_process_group(start_agent):
    agent = start_agent()
    job = agent.workdir / "overtime"
    worker = RawWorker(agent.port)
    try:
        bssid = worker.exchange(request(
            f"#!/bin/bash\n#TSI_SUBMIT\n#TSI_USPACE_DIR {job}\n#TSI_TIME 1\n#TSI_SCRIPT\n"
            "sleep 60 & sleep 60\necho $? > UNICORE_SCRIPT_EXIT_CODE\n")).split(b"\n")[1]
        started = time.monotonic()
        while worker.exchange(t.STATUS_REQUEST) != t.STATUS_EMPTY:
            assert time.monotonic() - started < 10
            time.sleep(0.1)
        details = worker.exchange(request(f"#TSI_GETJOBDETAILS\n#TSI_BSSID {bssid.decode()}\n"))
        assert b'"reason": "RUNTIME_EXCEEDED"' in details
        code = int((job / "UNICORE_SCRIPT_EXIT_CODE").read_text())
        assert code == 128 + 15  # written by the agent: the script was killed by SIGTERM
        time.sleep(0.3)
        assert "sleep 60" not in _processes_with_cwd(job)
    finally:
        worker.close()


def _processes_with_cwd(directory) -> str:
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(directory):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        except OSError:
            continue
    return b"\n".join(found).decode(errors="replace")


# ----------------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_agent(start_agent, pki):
    return start_agent(*FAST, *pki.agent_flags(), name="tls-agent")


@pytest_twisted.ensureDeferred
async def test_tls_refuses_strangers_impostors_and_plain_tcp(tls_agent, pki):
    agent = tls_agent
    plain = socket.create_connection(("127.0.0.1", agent.port))
    plain.sendall(b"newtsiprocess 4242\n")
    assert closed_without_answer(plain)
    for tls in (pki.stranger_tls(), pki.impostor_tls()):
        with pytest.raises(TSIUnreachable):
            await probe_agent(reactor, "127.0.0.1", agent.port, tls, timeout=5)
        client = TSIClient(reactor, "127.0.0.1", agent.port, tls=tls, callback_timeout=3)
        with pytest.raises(TSIUnreachable):
            await client.ping()
        await client.close()
    # the client pins the instance: an agent with another instance's certificate is refused
    wrong_pin = pki.client_tls().pinned_to(pki.other_instance.cert_pem)
    with pytest.raises(TSIUnreachable):
        await probe_agent(reactor, "127.0.0.1", agent.port, wrong_pin, timeout=5)
    # a plain-TCP readiness probe against the TLS port
    with pytest.raises(TSIUnreachable):
        await probe_agent(reactor, "127.0.0.1", agent.port, None, timeout=3)
    assert agent.alive()
    good = TSIClient(reactor, "127.0.0.1", agent.port, tls=pki.client_tls())
    try:
        assert await good.ping() == "11.2.1"
    finally:
        await good.close()
    log = agent.log()
    assert "TLS handshake" in log


def test_tls_agent_refuses_raw_python_client_without_certificate(tls_agent):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", tls_agent.port)))
    try:
        sock.sendall(b"ping gridvm\n")
        assert sock.recv(100) == b""
    except (ssl.SSLError, ConnectionResetError):
        pass
    finally:
        sock.close()
    assert tls_agent.alive()


# ------------------------------------------------------------------------ client side


@pytest_twisted.ensureDeferred
async def test_client_reports_unreachable_and_lost(start_agent):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    nowhere = TSIClient(reactor, "127.0.0.1", port, connect_timeout=2)
    with pytest.raises(TSIUnreachable) as unreachable:
        await nowhere.ping()
    assert unreachable.value.reason == "TSI_UNREACHABLE"
    await nowhere.close()

    agent = start_agent()
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=1)
    try:
        assert await client.ping() == "11.2.1"
        with pytest.raises(TSIConnectionLost) as lost:
            await client.execute_script("sleep 5")
        assert lost.value.reason == "TSI_LOST" and "within 1 s" in lost.value.message
        assert await client.ping() == "11.2.1"  # a fresh worker replaces the discarded one
        agent.stop()
        with pytest.raises((TSIConnectionLost, TSIUnreachable)):
            await client.ping()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_callback_listener_refuses_unexpected_connections():
    client = TSIClient(reactor, "127.0.0.1", 1)
    port = client.start()
    try:
        intruder = socket.create_connection(("127.0.0.1", port))
        await task.deferLater(reactor, 0.2, lambda: None)  # let the reactor refuse it
        assert closed_without_answer(intruder)
    finally:
        await client.close()


def test_script_timeout_kills_the_script_and_keeps_the_worker(start_agent):
    agent = start_agent("--script-timeout", "1")
    worker = RawWorker(agent.port)
    try:
        started = time.monotonic()
        reply = worker.exchange(request(
            "#!/bin/bash\n#TSI_EXECUTESCRIPT\n#TSI_SCRIPT\nsleep 30 & sleep 30\n"))
        assert reply.startswith(b"TSI_FAILED: Command ")
        assert b"did not finish within 1 s and was killed" in reply
        assert time.monotonic() - started < 5
        assert worker.exchange(t.PING[0]) == t.PING[1]
    finally:
        worker.close()
