"""Telling that the agent in a guest answers, not merely that slirp accepted a connect.

QEMU's user-mode networking accepts every connection to a forwarded port, even when
nothing listens in the guest (it resets it a moment later), so "ready" is "a line came
back": the probe sends a request line and waits for a reply line with the expected prefix.

While the guest's network is not up yet, slirp accepts the connection and then nothing
happens until the probe's own timeout: a connection made then never completes, even once
the guest listens (measured: every attempt before the NIC is up waits its full timeout).
Probing one attempt at a time therefore detects readiness up to a whole timeout late, so
:class:`ProbeRace` starts a new attempt every interval while earlier ones still wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.protocols.basic import LineOnlyReceiver

from base.errors import GridvmError
from base.reasons import Reason

#: probe(host, port) fires with the agent's greeting, or fails.
Probe = Callable[[str, int], defer.Deferred]


class ProbeFailed(GridvmError):
    """The agent did not answer the readiness probe."""

    reason = Reason.BOOT_TIMEOUT


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
        result: defer.Deferred = defer.Deferred(lambda _d: give_up(cancelled=True))
        factory = protocol.Factory.forProtocol(lambda: _LineProbe(request, expect, result))
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        connecting = endpoint.connect(factory)
        connected: list = []

        def connect_failed(failure) -> None:
            if not result.called:
                result.errback(failure)

        connecting.addCallbacks(connected.append, connect_failed)

        def give_up(cancelled: bool = False) -> None:
            if not result.called or cancelled:
                connecting.cancel()
                for proto in connected:
                    proto.transport.abortConnection()
                if not result.called and not cancelled:
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


class ProbeRace:
    """Probe attempts started every ``interval`` seconds without waiting for the earlier
    ones to give up (at most ``limit`` at once); the first answer wins and the rest are
    cancelled."""

    def __init__(self, reactor, probe: Probe, host: str, port: int, *,
                 interval: float = 0.1, limit: int = 64):
        self.reactor, self.probe, self.host, self.port = reactor, probe, host, port
        self.interval, self.limit = interval, limit
        self.answer: str | None = None
        self.attempts = 0
        self.last_failure = "no answer yet"
        self._pending: set[defer.Deferred] = set()
        self._wake: defer.Deferred | None = None

    async def run(self, check: Callable[[], Awaitable[None]] | None = None) -> str:
        """The first answer.  ``check`` runs between attempts and raises to stop the race
        (a deadline passed, the guest died); pending attempts are cancelled either way."""
        try:
            while self.answer is None:
                if len(self._pending) < self.limit:
                    self._launch()
                await self._sleep()
                if self.answer is None and check is not None:
                    await check()
            return self.answer
        finally:
            for attempt in list(self._pending):
                attempt.cancel()

    def _launch(self) -> None:
        self.attempts += 1
        attempt = self.probe(self.host, self.port)
        self._pending.add(attempt)

        def answered(value) -> None:
            self._pending.discard(attempt)
            if self.answer is None:
                self.answer = value
                self._wake_up()

        def failed(failure) -> None:
            self._pending.discard(attempt)
            if not failure.check(defer.CancelledError):
                self.last_failure = str(failure.value) or failure.type.__name__

        attempt.addCallbacks(answered, failed)

    def _sleep(self) -> defer.Deferred:
        self._wake = defer.Deferred()
        timer = self.reactor.callLater(self.interval, self._wake_up)
        return self._wake.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)
