"""gridvm's small-job extensions (GRIDVM_MKDIR, GRIDVM_REMOVE, GRIDVM_WAITSTATUS) against the
agent, and the client's fallback to standard commands on a TSI that does not know them."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

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


def test_gridvm_submit_is_not_a_command_the_official_tsi_would_run():
    body = protocol.gridvm_submit_body("true\n", {"USPACE_DIR": "/w/job"},
                                       [("in/a b.txt", b"data\n", 0o600), ("empty", b"", 0o644)])
    header = protocol.header_lines(body)
    assert header[:2] == ["#!/bin/bash", "#TSI_GRIDVM_SUBMIT"]
    assert "#TSI_GRIDVM_FILE 600 aW4vYSBiLnR4dA== ZGF0YQo=" in header
    assert "#TSI_GRIDVM_FILE 644 ZW1wdHk= =" in header
    assert protocol.find_command(body) == "GRIDVM_SUBMIT"
    assert protocol.official_command(body) is None  # answered "Unknown": the fallback
    assert protocol.parse_inline_files(body) == [("in/a b.txt", b"data\n", 0o600),
                                                 ("empty", b"", 0o644)]
    with pytest.raises(ValueError, match="at most 64 files"):
        protocol.gridvm_submit_body("true\n", {}, [(f"f{n}", b"", 0o644) for n in range(65)])
    with pytest.raises(protocol.ProtocolError, match="bad #TSI_GRIDVM_FILE"):
        protocol.parse_inline_files("#TSI_GRIDVM_SUBMIT\n#TSI_GRIDVM_FILE 644 !!! =\n")


@pytest_twisted.ensureDeferred
async def test_one_exchange_makes_the_directory_writes_the_files_and_submits(start_agent):
    agent = start_agent()
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=30)
    job = agent.workdir / "job"
    script = "cat in/a.txt > out.txt\necho $? > UNICORE_SCRIPT_EXIT_CODE\n"
    try:
        await client.wait_status(0)
        bssid = await client.submit_with_files(
            script, [("in/a.txt", b"inline\n", 0o600), ("empty", b"", 0o755)],
            uspace_dir=str(job))
        while bssid in await client.wait_status(10):
            pass
        assert (job / "out.txt").read_bytes() == b"inline\n"
        assert (job / "in" / "a.txt").stat().st_mode & 0o777 == 0o600
        assert (job / "empty").stat().st_mode & 0o777 == 0o755
        assert await client.exit_code(str(job), grace=0) == 0
        for name in ("../escape", "/etc/passwd"):
            with pytest.raises(TSICommandFailed, match="leads outside the job directory"):
                await client.submit_with_files("true\n", [(name, b"x", 0o644)],
                                               uspace_dir=str(job))
        assert not (agent.workdir / "escape").exists() and client.unsupported == set()
        space = await client.remove_tree(str(job))  # and the space left, in one exchange
        assert not job.exists()
        assert space is not None and space["TOTAL"] > 0 and 0 <= space["FREE"] <= space["TOTAL"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_tsi_without_gridvm_submit_is_told_step_by_step():
    unknown = t.UNKNOWN_COMMAND[1]
    tsi = ReplayTSI({"GRIDVM_SUBMIT": unknown})
    client = TSIClient(reactor, "127.0.0.1", tsi.port, pool_size=1, callback_timeout=5)
    try:
        assert await client.submit_with_files("true\n", [], uspace_dir="/w/job") is None
        assert await client.submit_with_files("true\n", [], uspace_dir="/w/job") is None
        assert client.unsupported == {"GRIDVM_SUBMIT"}
        assert [protocol.find_command(r) for r in tsi.requests] == ["GRIDVM_SUBMIT"]
    finally:
        await client.close()
        tsi.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest_twisted.ensureDeferred
async def test_jobs_of_a_switched_user_start_from_its_launcher(start_agent):
    base = Path(tempfile.mkdtemp(prefix="gridvm-launch-"))
    base.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    agent = start_agent("--job-user", "nobody", "--workdir-root", str(base))
    client = TSIClient(reactor, "127.0.0.1", agent.port, request_timeout=30)
    job = base / "job"
    try:
        await client.wait_status(0)
        bssids = [await client.submit_with_files(
            f"id -u > out; echo $PPID >> out; exit {n}\n", [], uspace_dir=f"{job}{n}")
            for n in range(3)]
        while set(bssids) & set(await client.wait_status(10)):
            pass
        parents = set()
        for n in range(3):  # the exit code written for the job (it wrote none itself)
            assert await client.exit_code(f"{job}{n}", grace=0) == n
            uid, parent = (Path(f"{job}{n}") / "out").read_text().split()
            assert int(uid) == nobody.pw_uid
            parents.add(int(parent))
        assert len(parents) == 1 and agent.process.pid not in parents  # one launcher
        assert json.loads(await client.job_details(bssids[2]))["exit_code"] == 2
        (job.with_name("job0")).chmod(0o500)  # a file the user cannot write: staging fails
        with pytest.raises(TSICommandFailed, match=r"TSI_ERROR: staging in: .*denied"):
            await client.submit_with_files("true\n", [("b", b"x", 0o644)],
                                           uspace_dir=f"{job}0")
    finally:
        await client.close()
        shutil.rmtree(base)
