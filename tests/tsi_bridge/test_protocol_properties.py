"""Property: whatever bytes a TSI answers, the reply and listing parsers of
``tsi_bridge.protocol`` give a typed result or a ProtocolError (never another exception)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsi_bridge import protocol
from tsi_bridge.protocol import FileInfo, ProtocolError, Reply

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
#: Lines made of the protocol's own words, numbers and junk, so that parsers get far.
WORDS = st.sampled_from(["TSI_OK", "TSI_FAILED", "TSI_FAILED: no", "QSTAT", "START_LISTING",
                         "END_LISTING", "START_DF", "END_DF", "TOTAL", "FREE", "USER",
                         "TSI_LENGTH", "RUNNING", "QUEUED", "-", "--rwx", " DRWXO", " ",
                         "home:", "Attribute:", "status:", "Accepted key", "=", ":"])
TOKENS = WORDS | st.integers(-(1 << 70), 1 << 70).map(str) | st.text(max_size=8)
LINES = st.lists(TOKENS, max_size=5).map(" ".join)
PAYLOADS = st.lists(LINES, max_size=8).map("\n".join) | st.text()
MESSAGES = PAYLOADS.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary()
COMMANDS = st.none() | st.sampled_from([*sorted(protocol.UNTAGGED_REPLIES), "PING", "GET"])


@PROPERTY
@given(MESSAGES, COMMANDS)
def test_replies(message, command):
    try:
        reply = protocol.parse_reply(message, command)
    except ProtocolError:
        return
    assert isinstance(reply, Reply) and isinstance(reply.payload, str)
    with contextlib.suppress(ProtocolError):
        assert protocol.chunk_length(reply) >= 0


@PROPERTY
@given(PAYLOADS, st.sampled_from(["status", "ls", "df", "user"]), st.booleans())
def test_listings(payload, kind, framed):
    if framed:  # the frame of the listing, so that its entries are read
        payload = {"status": f"QSTAT\n{payload}", "ls": f"START_LISTING\n{payload}\nEND_LISTING",
                   "df": f"START_DF\nTOTAL 1\nFREE 1\n{payload}"}.get(kind, payload)
    try:
        if kind == "status":
            listing = protocol.parse_status_listing(payload)
            assert all(isinstance(v, tuple) and len(v) == 3 for v in listing.values())
        elif kind == "ls":
            assert all(isinstance(e, FileInfo) for e in protocol.parse_ls(payload))
        elif kind == "df":
            assert set(protocol.parse_df(payload)) == {"TOTAL", "FREE", "USER"}
        else:
            assert isinstance(protocol.parse_user_info(payload)["keys"], list)
    except ProtocolError:
        pass


@PROPERTY
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_the_splitter_on_any_stream(chunks):
    splitter = protocol.MessageSplitter(max_size=256)
    try:
        for chunk in chunks:
            assert all(isinstance(m, bytes) for m in splitter.feed(chunk))
    except ProtocolError:
        assert splitter.pending > 256


@pytest.mark.parametrize("line", [" DRWXO x 1 a", " DRWXO 1", " -R--- 12 noon a b"])
def test_a_malformed_listing_entry_is_a_protocol_error(line):
    with pytest.raises(ProtocolError, match="LS entry"):
        protocol.parse_ls(f"START_LISTING\n{line}\nEND_LISTING")


def test_digits_of_other_scripts_in_a_listing_entry_are_a_protocol_error():
    with pytest.raises(ProtocolError, match="LS entry"):
        protocol.parse_ls("START_LISTING\n DRWXO ² 1 a\nEND_LISTING")
