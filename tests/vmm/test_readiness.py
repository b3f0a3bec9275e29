"""Readiness probing: a line must come back, and a silent early attempt must not delay it.

Real sockets on 127.0.0.1 stand in for slirp's behaviour before the guest's network is up:
the connection is accepted and then nothing happens.
"""

import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.protocols.basic import LineReceiver

from vmm.readiness import ProbeFailed, ProbeRace, line_probe


class _Agent(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        if self.factory.answering:
            self.sendLine(b"OK agent 1.0")
        # else: like a connection slirp accepted for a guest that is not up yet: silence


class _AgentFactory(protocol.Factory):
    protocol = _Agent

    def __init__(self):
        self.answering = False
        self.connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return super().buildProtocol(addr)


@pytest.fixture
def agent():
    factory = _AgentFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield factory, port.getHost().port
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_line_probe_wants_the_expected_answer(agent):
    factory, port = agent
    factory.answering = True
    assert await line_probe(reactor)("127.0.0.1", port) == "OK agent 1.0"
    with pytest.raises(ProbeFailed, match="unexpected answer"):
        await line_probe(reactor, expect=b"NEVER")("127.0.0.1", port)


@pytest_twisted.ensureDeferred
async def test_race_answers_soon_after_the_agent_does_despite_silent_attempts(agent):
    factory, port = agent
    reactor.callLater(0.5, setattr, factory, "answering", True)
    race = ProbeRace(reactor, line_probe(reactor, timeout=5.0), "127.0.0.1", port,
                     interval=0.05)
    started = time.monotonic()
    assert await race.run() == "OK agent 1.0"
    elapsed = time.monotonic() - started
    # One attempt at a time would have waited for the first silent one's 5 s timeout.
    assert elapsed < 2.0, elapsed
    assert race.attempts > 2 and factory.connections >= race.attempts - 1


def test_race_stops_when_check_raises_and_cancels_pending_attempts():
    clock = task.Clock()
    pending: list[defer.Deferred] = []

    def silent_probe(host, port):
        attempt = defer.Deferred()
        pending.append(attempt)
        return attempt

    race = ProbeRace(clock, silent_probe, "127.0.0.1", 1, interval=0.1, limit=3)

    async def deadline():
        if clock.seconds() >= 1.0:
            raise TimeoutError("deadline")

    result = defer.Deferred.fromCoroutine(race.run(deadline))
    failures = []
    result.addErrback(failures.append)
    clock.pump([0.1] * 5)
    assert len(pending) == 3  # the limit: no more than three attempts wait at once
    clock.pump([0.1] * 6)
    assert failures and failures[0].check(TimeoutError)
    assert all(attempt.called for attempt in pending)  # cancelled, nothing left waiting


def test_race_takes_a_later_attempt_while_an_earlier_one_still_waits():
    clock = task.Clock()
    pending: list[defer.Deferred] = []
    race = ProbeRace(clock, lambda h, p: pending.append(defer.Deferred()) or pending[-1],
                     "127.0.0.1", 1, interval=0.1)
    result = defer.Deferred.fromCoroutine(race.run())
    clock.advance(0.1)
    clock.advance(0.1)
    assert len(pending) == 3
    pending[1].errback(ProbeFailed("closed without an answer"))
    pending[2].callback("OK")
    assert result.called and result.result == "OK"
    assert race.last_failure == "closed without an answer"
    assert pending[0].called  # the first, still silent, was cancelled
    clock.advance(1.0)
    assert len(pending) == 3
