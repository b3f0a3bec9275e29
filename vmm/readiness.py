"""Telling that the agent in a guest answers, not merely that slirp accepted a connect.

QEMU's user-mode networking accepts every connection to a forwarded port, even when
nothing listens in the guest (it resets it a moment later), so "ready" is "a line came
back": the probe sends a request line and waits for a reply line with the expected prefix.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.protocols.basic import LineOnlyReceiver

#: probe(host, port) fires with the agent's greeting, or fails.
Probe = Callable[[str, int], defer.Deferred]


class ProbeFailed(Exception):
    pass


class _LineProbe(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self, request: bytes, expect: bytes, result: defer.Deferred):
        self.request, self.expect, self.result = request, expect, result

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def lineReceived(self, line: bytes) -> None:
        if not self.result.called:
            if line.startswith(self.expect):
                self.result.callback(line.decode(errors="replace").strip())
            else:
                self.result.errback(ProbeFailed(f"unexpected answer {line[:80]!r}"))
        self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        if not self.result.called:
            self.result.errback(ProbeFailed("closed without an answer"))


def line_probe(reactor, request: bytes = b"ping gridvm\n", expect: bytes = b"OK",
               timeout: float = 2.0) -> Probe:
    """A probe that sends ``request`` and wants a line starting with ``expect``."""

    def probe(host: str, port: int) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()
        factory = protocol.Factory.forProtocol(lambda: _LineProbe(request, expect, result))
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        connecting = endpoint.connect(factory)
        connected: list = []

        def connect_failed(failure) -> None:
            if not result.called:
                result.errback(failure)

        connecting.addCallbacks(connected.append, connect_failed)

        def give_up() -> None:
            if not result.called:
                connecting.cancel()
                if not result.called:
                    result.errback(ProbeFailed(f"no answer within {timeout:g} s"))

        timer = reactor.callLater(timeout, give_up)

        def done(value):
            if timer.active():
                timer.cancel()
            for proto in connected:
                proto.transport.loseConnection()
            return value

        return result.addBoth(done)

    return probe
