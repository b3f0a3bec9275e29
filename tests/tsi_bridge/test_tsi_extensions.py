"""gridvm's small-job extensions (GRIDVM_MKDIR, GRIDVM_REMOVE, GRIDVM_WAITSTATUS) against the
agent, and the client's fallback to standard commands on a TSI that does not know them."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
import tsi_transcripts as t
from tsi_replay import ReplayTSI
from twisted.internet import reactor

from tsi_bridge import protocol
from tsi_bridge.client import TSIClient
from tsi_bridge.errors import TSICommandFailed


@pytest_twisted.ensureDeferred
async def test_directories_are_made_and_removed_without_a_shell(start_agent):
    agent = start_agent("--shell", "/bin/false")  # any EXECUTESCRIPT would fail
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=30)
    job = agent.workdir / "job"
    try:
        await client.make_directories([str(job), str(job / "a" / "b")])
        assert (job / "a" / "b").is_dir()
        (job / "a" / "b" / "f").write_text("x")
        await client.remove_tree(str(job))
        assert not job.exists()
        await client.remove_tree(str(job))  # gone already: fine, like rm -rf
        with pytest.raises(TSICommandFailed, match="root of the working area"):
            await client.remove_tree(str(agent.workdir))
        assert agent.workdir.is_dir() and client.unsupported == set()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_the_end_of_a_job_is_pushed_not_polled(start_agent):
    agent = start_agent()
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=30)
    job = agent.workdir / "job"
    job.mkdir(parents=True)
    try:
        assert await client.wait_status(30) == {}  # the first answers at once
        bssid = await client.submit("sleep 0.5\necho $? > UNICORE_SCRIPT_EXIT_CODE\n",
                                    uspace_dir=str(job))
        assert bssid in await client.wait_status(0.1)  # still running: back after 0.1 s
        started = time.monotonic()
        assert bssid not in await client.wait_status(30)
        assert time.monotonic() - started < 5  # at its end, not after the 30 s
        # the exit code is there once the end is reported
        assert await client.exit_code(str(job), grace=0) == 0
        with pytest.raises(TSICommandFailed, match="0 to 60 seconds"):
            await client._request(protocol.wait_status_body(0, 61), "GRIDVM_WAITSTATUS")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_tsi_without_the_extensions_gets_standard_commands():
    unknown = t.UNKNOWN_COMMAND[1]
    tsi = ReplayTSI({"GRIDVM_MKDIR": unknown, "GRIDVM_REMOVE": unknown,
                     "GRIDVM_WAITSTATUS": unknown, "SUBMIT": t.OFFICIAL_SUBMIT[1],
                     "EXECUTESCRIPT": b"TSI_OK\nENDOFMESSAGE\n"})
    client = TSIClient(reactor, "127.0.0.1", tsi.port, pool_size=1, callback_timeout=5)
    try:
        await client.make_directories(["/w/job", "/w/job/in"])
        await client.make_directories(["/w/job2"])
        await client.remove_tree("/w/job")
        await client.submit("true\n", uspace_dir="/w/job")
        assert await client.wait_status(1) is None  # poll GETSTATUSLISTING instead
        assert await client.wait_status(1) is None
        commands = [protocol.find_command(r) for r in tsi.requests]
        assert commands == ["GRIDVM_MKDIR", "EXECUTESCRIPT", "EXECUTESCRIPT", "GRIDVM_REMOVE",
                            "EXECUTESCRIPT", "SUBMIT", "GRIDVM_WAITSTATUS"]
        assert "mkdir -p /w/job /w/job/in" in tsi.requests[1]
        assert "rm -rf -- /w/job" in tsi.requests[4]
    finally:
        await client.close()
        tsi.close()
