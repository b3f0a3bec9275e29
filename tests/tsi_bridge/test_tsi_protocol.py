"""The protocol module against the transcripts captured from the official TSI."""

import pytest
import tsi_transcripts as t

from tsi_bridge import protocol as p


def split_one(data: bytes) -> bytes:
    messages = p.MessageSplitter().feed(data)
    assert len(messages) == 1
    return messages[0]


def test_requests_we_build_are_byte_identical_to_unicorex():
    assert p.build_request(p.ping_body(), "nobody") == t.PING[0]
    assert p.build_request(p.status_listing_body(), "nobody") == t.STATUS_REQUEST
    assert p.build_request(p.ls_body(f"{t.JOB}/out.txt", "A"), "nobody") == t.LS_OUT[0]
    assert p.build_request(p.get_chunk_body(f"{t.JOB}/out.txt", 0, 6), "nobody") == t.GET_OUT[0]
    assert (p.build_request(p.put_chunk_body(f"{t.JOB}/input.txt", 13, 0o644), "nobody")
            == t.PUT_INPUT[0])
    script = (f"mkdir -p {t.JOB} && echo created {t.JOB}\n")
    assert p.build_request(p.execute_script_body(script), "nobody") == t.MKDIR[0]


def test_submit_built_like_unicorex():
    params = {"OUTCOME_DIR": t.JOB, "USPACE_DIR": t.JOB, "STDOUT": "stdout",
              "STDERR": "stderr", "JOBNAME": "probe", "EMAIL": "NONE", "TIME": 60,
              "NODES": -1, "PROCESSORS_PER_NODE": -1, "TOTAL_PROCESSORS": -1, "QUEUE": "NONE"}
    body = t.SUBMIT[0].decode().split("#TSI_SCRIPT\n", 1)[1].split("\n#TSI_IDENTITY")[0]
    assert p.build_request(p.submit_body(body, params), "nobody") == t.SUBMIT[0]


@pytest.mark.parametrize("request_bytes, command", [
    (t.PING[0], "PING"), (t.MKDIR[0], "EXECUTESCRIPT"), (t.PUT_INPUT[0], "PUTFILECHUNK"),
    (t.SUBMIT[0], "SUBMIT"), (t.STATUS_REQUEST, "GETSTATUSLISTING"),
    (t.GET_EXIT_CODE[0], "GETFILECHUNK"), (t.LS_OUT[0], "LS"),
    (t.UNKNOWN_COMMAND[0], None), (t.PING_TRAILING_BLANK[0], None),
])
def test_agent_side_finds_the_command(request_bytes, command):
    message = split_one(request_bytes).decode()
    assert p.find_command(message) == command
    assert p.get_identity(message) == ("nobody", "NONE")


def test_parameters_first_occurrence_and_empty_and_numbers():
    message = split_one(t.SUBMIT[0]).decode()
    assert p.get_param(message, "OUTCOME_DIR") == t.JOB
    assert p.get_param(message, "STDOUT") == "stdout"
    assert p.get_number(message, "TIME") == 60
    assert p.get_number(message, "NODES") == -1
    assert p.get_number(message, "MEMORY", default=0) == 0
    assert p.get_param("#TSI_X first\n#TSI_X second\n", "X") == "first"
    assert p.get_param("#TSI_X \n#TSI_X second\n", "X") is None
    assert p.get_number("#TSI_T 2.9\n", "T") == 2
    assert p.get_number("#TSI_T soon\n", "T") == -1
    put = split_one(t.PUT_INPUT[0]).decode()
    assert p.get_param(put, "FILE") == f"{t.JOB}/input.txt 644"
    assert p.get_param(put, "FILESACTION") == "0"


def test_identity_rules():
    assert p.get_identity("#TSI_IDENTITY alice a:b:DEFAULT_GID\n") == ("alice", "a:b:DEFAULT_GID")
    assert p.get_identity("#TSI_IDENTITY alice NONE \n") is None  # trailing blank
    assert p.get_identity("#TSI_IDENTITY alice\n") is None
    assert p.get_identity("#TSI_PING\n") is None


def test_building_refuses_injection():
    with pytest.raises(ValueError):
        p.build_request("echo hi\nENDOFMESSAGE\necho owned\n", "nobody")
    with pytest.raises(ValueError):
        p.build_request("#TSI_IDENTITY root NONE\n", "nobody")
    with pytest.raises(ValueError):
        p.build_request("#TSI_PING\n", "two words")
    with pytest.raises(ValueError):
        p.ls_body("/tmp/a\nb")


def test_replies_from_the_transcripts():
    assert p.parse_reply(split_one(t.PING[1])).payload == "11.2.1"
    assert p.parse_reply(split_one(t.MKDIR[1])).payload == f"created {t.JOB}\n"
    ack = p.parse_reply(split_one(t.PUT_INPUT[1]))
    assert ack.ok and ack.payload == ""
    assert p.parse_reply(split_one(t.SUBMIT[1])).payload == "1768916720988"
    running = p.parse_status_listing(p.parse_reply(split_one(t.STATUS_RUNNING)).payload)
    assert running == {"1768916720988": ("RUNNING", "NOBATCH", "S")}
    assert p.parse_status_listing(p.parse_reply(split_one(t.STATUS_EMPTY)).payload) == {}
    assert p.chunk_length(p.parse_reply(split_one(t.GET_EXIT_CODE[1]))) == 2
    [entry] = p.parse_ls(p.parse_reply(split_one(t.LS_OUT[1])).payload)
    assert (entry.path, entry.size, entry.mtime) == (f"{t.JOB}/out.txt", 6, 1795316721)
    assert not entry.is_dir and entry.readable and entry.writable and entry.owned
    assert not entry.executable
    assert (entry.permissions, entry.owner, entry.group) == ("-rw-r--r--", "nobody", "nogroup")
    df = p.parse_df(p.parse_reply(split_one(t.DF_REPLY)).payload)
    assert df == {"TOTAL": 270553174016, "FREE": 85240963072, "USER": -1}
    info = p.parse_user_info(p.parse_reply(split_one(t.USER_INFO_REPLY)).payload)
    assert info["home"] == "/nonexistent" and info["status"].startswith("keyfile")
    assert p.parse_reply(split_one(t.HOLD_REPLY)).ok
    assert p.parse_reply(split_one(t.ABORT_RUNNING_REPLY)).payload == ""


def test_failed_replies_carry_the_message():
    failed = p.parse_reply(split_one(t.UNKNOWN_COMMAND[1]))
    assert not failed.ok and failed.error == "Unknown #TSI_* command"
    missing = p.parse_reply(split_one(t.GET_MISSING_REPLY))
    assert missing.error.startswith("[Errno 2] No such file or directory")
    late = p.parse_reply(b"TSI_OK\nSTART_LISTING\nTSI_FAILED: boom\n")
    assert not late.ok and late.error == "boom"
    with pytest.raises(p.ProtocolError):
        p.parse_reply(b"garbage\n")


def test_reply_builders_match_the_official_bytes():
    assert p.ok_reply("11.2.1") == t.PING[1]
    assert p.ok_reply() == t.PUT_INPUT[1]
    assert p.ok_reply("") == t.ABORT_RUNNING_REPLY
    assert p.ok_reply(p.format_status_listing([("1768916720988", "RUNNING", "NOBATCH", "S")])) \
        == t.STATUS_RUNNING
    assert p.ok_reply(p.format_status_listing([])) == t.STATUS_EMPTY
    assert p.failed_reply("Unknown #TSI_* command") == t.UNKNOWN_COMMAND[1]
    assert p.failed_reply("line1\nline2") == b"TSI_FAILED: line1:line2\nENDOFMESSAGE\n"
    entry = p.FileInfo(f"{t.JOB}/out.txt", False, True, True, False, True, 6, 1795316721,
                       "-rw-r--r--", "nobody", "nogroup")
    listing = "START_LISTING\n" + p.format_ls_entry(entry) + "\nEND_LISTING"
    assert p.ok_reply(listing) == t.LS_OUT[1]
    df = p.format_df(270553174016, 85240963072)
    assert p.ok_reply(df) == t.DF_REPLY


def test_splitter_handles_any_segmentation_and_payload_lookalikes():
    stream = b"".join(reply for _, reply in t.CONVERSATION)
    for size in (1, 2, 7, 13, len(stream)):
        splitter = p.MessageSplitter()
        messages = []
        for i in range(0, len(stream), size):
            messages += splitter.feed(stream[i:i + size])
        assert len(messages) == len(t.CONVERSATION)
        assert splitter.pending == 0
    # ENDOFMESSAGE inside a line is payload, not a terminator
    assert p.MessageSplitter().feed(b"TSI_OK\nxENDOFMESSAGE\n") == []
    # the second terminator of a chunk transfer is an empty message
    assert p.MessageSplitter().feed(b"ENDOFMESSAGE\n") == [b""]


def test_splitter_bounds_its_buffer():
    splitter = p.MessageSplitter(max_size=100)
    with pytest.raises(p.ProtocolError):
        splitter.feed(b"x" * 101)


def test_the_command_and_parameters_come_from_the_header_only():
    script = "#TSI_PING\n#TSI_TIME 1\n#TSI_IDENTITY root root\necho #TSI_LS\n"
    message = split_one(p.build_request(p.submit_body("true\n", {"USPACE_DIR": "/j"}), "nobody")
                        ).decode().replace("true\n", script)
    assert p.find_command(message) == "SUBMIT"
    assert p.get_param(message, "USPACE_DIR") == "/j"
    assert p.get_param(message, "TIME") is None  # only in the script
    assert p.get_identity(message) == ("nobody", "NONE")  # the trailer, not the script's
    assert p.find_command("#!/bin/bash\n#TSI_EXECUTESCRIPT\n#TSI_SCRIPT\n#TSI_PING\n") == (
        "EXECUTESCRIPT")
    assert p.find_command("echo x #TSI_PING\n") is None  # a tag is a whole line
    assert p.find_command("#TSI_GRIDVM_GETDIRECTORY\n#TSI_FILE /j\n") == "GRIDVM_GETDIRECTORY"


def test_building_refuses_scripts_the_official_tsi_would_misread():
    for line in ("#TSI_PING", "echo x #TSI_LS", "#TSI_ABORTJOB"):
        with pytest.raises(ValueError, match="official TSI"):
            p.build_request(p.execute_script_body(f"echo a\n{line}\necho b\n"), "nobody")
        with pytest.raises(ValueError, match="official TSI"):
            p.build_request(p.submit_body(f"echo a\n{line}", {}), "nobody")
    assert p.official_command("echo '#TSI_PING'\n") is None
    assert p.build_request(p.execute_script_body("echo '#TSI_PING' #TSI_PING2\n"), "nobody")


def test_stream_report_names_are_escaped_byte_exact():
    assert p.escape_name(b"a\nb\rc\\d\xff\xc3\xbc e\t") == "a\\x0ab\\x0dc\\\\d\\xff\xfc e\\x09"
    line = p.format_report_line("SKIPPED", b"new\nline", "special file (FIFO)\nx")
    assert line == "SKIPPED\tnew\\x0aline\tspecial file (FIFO) x"
    entries, files, size = p.parse_report(f"{line}\nTOTAL 3 10")
    assert entries == [("SKIPPED", "new\\x0aline", "special file (FIFO) x")]
    assert (files, size) == (3, 10)
    with pytest.raises(p.ProtocolError):
        p.parse_report(line)
