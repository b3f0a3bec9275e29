"""The agent started exactly as the official UNICORE TSI is: ``--properties tsi.properties``
as the site writes it for an image's own TSI (official keys, TLS from keystore/certificate/
truststore, the allowed DN), answering no readiness line."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from tsi_bridge.client import TSIClient
from tsi_bridge.context import unicore_tsi_files
from tsi_bridge.errors import TSIUnreachable
from tsi_bridge.readiness import first_ping_probe, probe_agent
from vmm.ports import free_port


def write_medium(pki, directory, callback_port: int):
    files = unicore_tsi_files(
        agent_cert_pem=pki.instance.cert_pem, agent_key_pem=pki.instance.key_pem,
        ca_pem=pki.ca.cert_pem, server_cert_pem=pki.server.cert_pem,
        callback_port=callback_port, listen_port=4433,
        start_command=["/usr/bin/python3", "-m", "tsi_bridge.agent", "--properties"],
        mount=str(directory))
    for rel, data in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    return files


def test_the_medium_says_it_in_the_official_keys(pki, tmp_path):
    files = write_medium(pki, tmp_path, 40123)
    props = files["tsi/tsi.properties"].decode()
    for line in ("tsi.my_port=4433", "tsi.unicorex_machine=10.0.2.2",
                 "tsi.unicorex_port=40123", f"tsi.keystore={tmp_path}/tsi/tsi.key",
                 f"tsi.certificate={tmp_path}/tsi/tsi-cert.pem",
                 f"tsi.truststore={tmp_path}/tsi/truststore.pem",
                 "tsi.allowed_dn.1=O=gridvm,CN=gridvm-server"):
        assert line in props.splitlines(), line
    start = files["tsi/start"].decode()
    assert start.splitlines()[-1] == (f"exec /usr/bin/python3 -m tsi_bridge.agent "
                                      f"--properties {tmp_path}/tsi/tsi.properties")
    assert "export GRIDVM_TSI_CALLBACK_HOST=10.0.2.100" in start
    assert "--dport 40123 -j DNAT --to-destination 10.0.2.100:40123" in start


@pytest.fixture
def properties_agent(start_agent, pki, tmp_path):
    """The agent on the site's tsi.properties (only the address made local for the test)."""
    callback_port = free_port()
    write_medium(pki, tmp_path, callback_port)
    path = tmp_path / "tsi" / "tsi.properties"
    text = path.read_text().replace("tsi.my_addr=\n", "tsi.my_addr=127.0.0.1\n")
    path.write_text(text.replace("tsi.my_port=4433", "tsi.my_port=0").replace(
        "tsi.unicorex_machine=10.0.2.2", "tsi.unicorex_machine=127.0.0.1"))
    return start_agent("--properties", str(path), name="properties-agent"), callback_port


@pytest_twisted.ensureDeferred
async def test_an_agent_on_tsi_properties_answers_the_first_ping_and_no_readiness_line(
        properties_agent, pki):
    agent, callback_port = properties_agent
    with pytest.raises(TSIUnreachable):  # like the official TSI: no line probe
        await probe_agent(reactor, "127.0.0.1", agent.port, pki.client_tls(), timeout=3)
    client = TSIClient(reactor, "127.0.0.1", agent.port, tls=pki.client_tls(),
                       callback_port=callback_port, user="nobody")
    try:
        probe = first_ping_probe(reactor, client.ping, timeout=10)
        first, shared = probe("127.0.0.1", agent.port), probe("127.0.0.1", agent.port)
        version = await first
        assert version and await shared == version  # one attempt, shared
        assert await client.execute_script("echo properties") == "properties\n"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_an_agent_on_tsi_properties_refuses_a_peer_without_the_allowed_dn(
        properties_agent, pki):
    agent, callback_port = properties_agent
    client = TSIClient(reactor, "127.0.0.1", agent.port, tls=pki.impostor_tls(),
                       callback_port=callback_port, callback_timeout=3)
    try:
        with pytest.raises(TSIUnreachable):
            await client.ping()
    finally:
        await client.close()


def test_first_ping_probe_runs_one_attempt_at_a_time_within_its_timeout():
    from twisted.internet import defer
    from twisted.internet.task import Clock

    clock, pings = Clock(), []

    def ping():
        pings.append(defer.Deferred())
        return pings[-1]

    probe = first_ping_probe(clock, ping, timeout=10)
    first, second = probe("h", 1), probe("h", 1)
    assert len(pings) == 1  # the second shares the attempt under way
    second.cancel()  # a cancelled share leaves the attempt running
    failures = []
    second.addErrback(failures.append)
    assert not pings[0].called
    clock.advance(10)  # the attempt times out: its sharers fail, the next probe starts anew
    first.addErrback(failures.append)
    assert len(failures) == 2 and failures[1].check(defer.TimeoutError)
    third = probe("h", 1)
    assert len(pings) == 2
    pings[1].callback("10.1.0")
    assert third.result == "10.1.0"


def test_first_ping_probe_tolerates_a_share_cancelled_by_the_winner():
    """ProbeRace cancels the other attempts from within the first answer's callback."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    attempt = defer.Deferred()
    probe = first_ping_probe(Clock(), lambda: attempt, timeout=10)
    first, second = probe("h", 1), probe("h", 1)
    first.addCallback(lambda _version: second.cancel())
    cancelled = []
    second.addErrback(lambda failure: cancelled.append(failure.check(defer.CancelledError)))
    attempt.callback("10.1.0")
    assert first.result is None and cancelled == [defer.CancelledError]
    assert attempt.result is None  # settled without an error (no AlreadyCalledError)
