"""The official TSI's captured conversation replayed byte by byte against our agent."""

from __future__ import annotations

import re
import time

import tsi_transcripts as t
from tsi_raw import RawWorker, request


def test_probe_conversation_replayed_against_the_agent(shared_agent, tmp_path):
    job = str(tmp_path / "job-1795316720875")

    def here(data: bytes) -> bytes:
        return data.replace(t.JOB.encode(), job.encode())

    worker = RawWorker(shared_agent.port)
    try:
        assert worker.exchange(t.PING[0]) == t.PING[1]
        assert worker.exchange(here(t.MKDIR[0])) == here(t.MKDIR[1])

        assert worker.exchange(here(t.PUT_INPUT[0])) == t.PUT_INPUT[1]
        worker.data.sendall(t.PUT_INPUT_DATA)
        assert worker.read_reply() == t.PUT_INPUT_SECOND

        submitted = worker.exchange(here(t.SUBMIT[0]))
        bssid = re.fullmatch(rb"TSI_OK\n(\d+)\nENDOFMESSAGE\n", submitted).group(1)
        running = worker.exchange(t.STATUS_REQUEST)
        assert running == b"TSI_OK\nQSTAT\n " + bssid + b" RUNNING NOBATCH R\n\nENDOFMESSAGE\n"
        deadline = time.monotonic() + 15
        while worker.exchange(t.STATUS_REQUEST) != t.STATUS_EMPTY:
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.2)

        assert worker.exchange(here(t.GET_EXIT_CODE[0])) == t.GET_EXIT_CODE[1]
        assert worker.read_data(2) == t.GET_EXIT_CODE_DATA
        assert worker.read_reply() == b"ENDOFMESSAGE\n"

        listing = worker.exchange(here(t.LS_OUT[0])).decode()
        assert re.fullmatch(
            r"TSI_OK\nSTART_LISTING\n  RW O 6 \d+ " + re.escape(job) + r"/out.txt\n"
            r"--rw-r--r-- \S+ \S+\nEND_LISTING\nENDOFMESSAGE\n", listing), listing

        assert worker.exchange(here(t.GET_OUT[0])) == t.GET_OUT[1]
        assert worker.read_data(6) == t.GET_OUT_DATA
        assert worker.read_reply() == b"ENDOFMESSAGE\n"
    finally:
        worker.close()


def test_failures_replayed_against_the_agent(shared_agent):
    worker = RawWorker(shared_agent.port)
    try:
        assert worker.exchange(t.UNKNOWN_COMMAND[0]) == t.UNKNOWN_COMMAND[1]
        assert worker.exchange(t.PING_TRAILING_BLANK[0]) == t.PING_TRAILING_BLANK[1]
        assert worker.exchange(t.EXECUTE_EXIT_3[0]) == t.EXECUTE_EXIT_3[1]
        missing = worker.exchange(request(
            "#TSI_GETFILECHUNK\n#TSI_FILE /nonexistent/nope.txt\n#TSI_START 0\n"
            "#TSI_LENGTH 10\n"))
        assert missing == (b"TSI_FAILED: [Errno 2] No such file or directory: "
                           b"'/nonexistent/nope.txt'\nENDOFMESSAGE\n")
        # no second terminator after a failed chunk: the next exchange is in sync
        assert worker.exchange(t.PING[0]) == t.PING[1]
        assert worker.exchange(request("#TSI_ABORTJOB\n#TSI_BSSID 42\n")).startswith(
            b"TSI_FAILED: No such job: 42")
        assert worker.exchange(request("#TSI_HOLDJOB\n#TSI_BSSID 42\n")).startswith(
            b"TSI_FAILED: ")
        assert worker.exchange(request("#TSI_GET_USER_INFO\n")).startswith(b"TSI_OK\nhome: ")
        df = worker.exchange(request("#TSI_DF\n#TSI_FILE /tmp\n"))
        assert re.fullmatch(rb"TSI_OK\nSTART_DF\nTOTAL \d+\nFREE \d+\nUSER -1\nEND_DF\n"
                            rb"ENDOFMESSAGE\n", df)
        assert worker.exchange(t.PING[0]) == t.PING[1]
    finally:
        worker.close()
