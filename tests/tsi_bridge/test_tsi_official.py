"""Replies captured from the official TSI's own code (tsi_transcripts.OFFICIAL_*), replayed
against the parser and the Twisted client."""

from __future__ import annotations

import queue
import socket
import ssl
import threading

import pytest
import pytest_twisted
import tsi_transcripts as t
from tsi_replay import ReplayTSI
from twisted.internet import reactor

from tsi_bridge import protocol as p
from tsi_bridge.client import JobStatus, TSIClient
from tsi_bridge.errors import TSIUnreachable
from tsi_bridge.line_exchange import exchange_line


def split_one(data: bytes) -> bytes:
    [message] = p.MessageSplitter().feed(data)
    return message


def test_untagged_replies_are_accepted_for_their_command_only():
    submit = p.parse_reply(split_one(t.OFFICIAL_SUBMIT[1]), "SUBMIT")
    assert submit.ok and submit.payload == "1514595816099"
    running = p.parse_reply(split_one(t.OFFICIAL_STATUS_RUNNING), "GETSTATUSLISTING")
    assert p.parse_status_listing(running.payload) == {
        "1514595816099": ("RUNNING", "NOBATCH", "S")}
    empty = p.parse_reply(split_one(t.OFFICIAL_STATUS_EMPTY), "GETSTATUSLISTING")
    assert p.parse_status_listing(empty.payload) == {}
    [entry] = p.parse_ls(p.parse_reply(split_one(t.OFFICIAL_LS[1]), "LS").payload)
    assert (entry.path, entry.size, entry.permissions) == (
        f"{t.OFFICIAL_JOB}/in.txt", 6, "-rw-r--r--")
    assert p.parse_ls(p.parse_reply(split_one(t.OFFICIAL_LS_MISSING), "LS").payload) == []
    df = p.parse_df(p.parse_reply(split_one(t.OFFICIAL_DF), "DF").payload)
    assert df == {"TOTAL": 270553174016, "FREE": 84550356992, "USER": -1}
    # the tagged form (TSI 11.2.1) is unchanged
    assert p.parse_reply(split_one(t.SUBMIT[1]), "SUBMIT").payload == "1768916720988"
    assert p.parse_reply(split_one(t.LS_OUT[1]), "LS").payload.startswith("START_LISTING\n")


@pytest.mark.parametrize("reply, command", [
    (t.OFFICIAL_SUBMIT[1], None),                 # only for the command it belongs to
    (t.OFFICIAL_SUBMIT[1], "EXECUTESCRIPT"),
    (t.OFFICIAL_LS[1], "DF"),
    (t.OFFICIAL_DF, "GETSTATUSLISTING"),
    (b"1514595816099 1514595816100\nENDOFMESSAGE\n", "SUBMIT"),
    (b"\n1514595816099\nENDOFMESSAGE\n", "SUBMIT"),
    (b"garbage\nmore\nENDOFMESSAGE\n", "SUBMIT"),
    (b" QSTAT\nENDOFMESSAGE\n", "GETSTATUSLISTING"),
])
def test_anything_else_is_still_an_anomaly(reply, command):
    with pytest.raises(p.ProtocolError):
        p.parse_reply(split_one(reply), command)


def test_a_failure_inside_an_untagged_reply_is_a_failure():
    late = p.parse_reply(b"START_LISTING\nTSI_FAILED: [Errno 13] Permission denied\n", "LS")
    assert not late.ok and late.error == "[Errno 13] Permission denied"


@pytest_twisted.ensureDeferred
async def test_client_keeps_its_worker_through_the_official_replies():
    tsi = ReplayTSI({"PING": t.OFFICIAL_PING, "SUBMIT": t.OFFICIAL_SUBMIT[1],
                     "GETSTATUSLISTING": t.OFFICIAL_STATUS_RUNNING, "LS": t.OFFICIAL_LS[1],
                     "DF": t.OFFICIAL_DF, "GETJOBDETAILS": t.OFFICIAL_DETAILS})
    client = TSIClient(reactor, "127.0.0.1", tsi.port, pool_size=1, callback_timeout=5)
    try:
        assert await client.ping() == "11.0.2"
        bssid = await client.submit("sleep 3\necho $? > UNICORE_SCRIPT_EXIT_CODE\n",
                                    uspace_dir=t.OFFICIAL_JOB, job_name="capture", runtime=60)
        assert bssid == "1514595816099"
        assert await client.get_status_listing() == {
            bssid: JobStatus("RUNNING", "NOBATCH", "S")}
        [entry] = await client.ls(f"{t.OFFICIAL_JOB}/in.txt")
        assert entry.size == 6 and entry.owner == "nobody"
        assert (await client.df(t.OFFICIAL_JOB))["TOTAL"] == 270553174016
        assert "No info available" in await client.job_details(bssid)
        assert tsi.workers == 1 and client.idle_workers == 1  # no anomaly, no new worker
        assert tsi.requests[1].encode() + b"ENDOFMESSAGE\n" == t.OFFICIAL_SUBMIT[0]
    finally:
        await client.close()
        tsi.close()


class OfficialTLSShepherd:
    """The official shepherd's TLS accept as in its lib/SSL.py and lib/Server.py: the listening
    socket is wrapped, so a handshake that fails raises from accept(), and the official TSI's
    main() then dies.  Records what each accept() ended with."""

    def __init__(self, directory, issued, ca_pem: bytes) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        issued.write(directory / "tsi.pem", directory / "tsi.key")
        (directory / "tsi-ca.pem").write_bytes(ca_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(directory / "tsi.pem", directory / "tsi.key")
        context.load_verify_locations(directory / "tsi-ca.pem")
        self.server = context.wrap_socket(socket.create_server(("127.0.0.1", 0)),
                                          server_side=True)
        self.port = self.server.getsockname()[1]
        self.outcomes: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _address = self.server.accept()
            except OSError as err:
                if self.server.fileno() < 0:
                    return
                self.outcomes.put(f"accept failed: {err}")  # the official TSI would be dead
                continue
            with conn:
                conn.settimeout(5)
                line = conn.recv(1024)
                if line:
                    conn.sendall(b"OK\n")
                self.outcomes.put(line)

    def close(self) -> None:
        self.server.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_tsi_certificate_does_not_fail_the_shepherds_handshake(pki, tmp_path):
    shepherd = OfficialTLSShepherd(tmp_path / "pinned", pki.instance, pki.ca.cert_pem)
    stranger = OfficialTLSShepherd(tmp_path / "stranger", pki.stranger, pki.ca.cert_pem)
    try:
        wrong_pin = pki.client_tls().pinned_to(pki.other_instance.cert_pem)
        with pytest.raises(TSIUnreachable, match="refused the TSI's certificate: not the pinned"):
            await exchange_line(reactor, "127.0.0.1", shepherd.port, b"newtsiprocess 1\n",
                                wrong_pin)
        assert shepherd.outcomes.get(timeout=5) == b""  # a clean close, nothing sent
        with pytest.raises(TSIUnreachable, match="certificate not trusted"):
            await exchange_line(reactor, "127.0.0.1", stranger.port, b"newtsiprocess 1\n",
                                pki.client_tls())
        assert stranger.outcomes.get(timeout=5) == b""
        assert await exchange_line(reactor, "127.0.0.1", shepherd.port, b"newtsiprocess 1\n",
                                   pki.client_tls()) == "OK"
        assert shepherd.outcomes.get(timeout=5) == b"newtsiprocess 1\n"
    finally:
        shepherd.close()
        stranger.close()
