"""The reply listener of one TSI endpoint: where the TSI calls back to create a worker.

Callbacks carry no request id, and an isolated guest reaches only the one host port reserved
for its instance, so each endpoint has its own listener and creates workers one at a time:
the first connection accepted after ``newtsiprocess`` is the command channel, the second the
data channel.  Connections that arrive when no worker is being created are refused.  With
TLS, the listener is the TLS server; each callback's handshake runs as soon as it is
accepted, so the official TSI (which handshakes callback #1 before it dials #2) never waits.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from tsi_bridge.channels import CommandChannel, DataChannel
from tsi_bridge.errors import TSIUnreachable
from tsi_bridge.tls import TLSConfig


class _Refuse(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _PendingWorker:
    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.channels: list = []
        self.result: defer.Deferred = defer.Deferred(lambda _d: self.abort())

    def add(self):
        kind = CommandChannel if not self.channels else DataChannel
        channel = kind(self.tls)
        self.channels.append(channel)
        channel.ready.addCallbacks(self._ready, self._failed)
        return channel

    def _ready(self, _channel) -> None:
        if len(self.channels) == 2 and all(c.ready.called for c in self.channels) \
                and not self.result.called:
            self.result.callback(tuple(self.channels))

    def _failed(self, failure) -> None:
        if not self.result.called:
            self.result.errback(TSIUnreachable(f"callback failed: {failure.getErrorMessage()}"))

    def abort(self) -> None:
        for channel in self.channels:
            channel.abort()


class _CallbackFactory(Factory):
    def __init__(self, listener: CallbackListener) -> None:
        self.listener = listener

    def buildProtocol(self, addr):
        pending = self.listener.pending
        if pending is None or len(pending.channels) >= 2 or pending.result.called:
            return _Refuse()
        return pending.add()


class CallbackListener:
    """Listens on ``host:port`` (port 0 picks a free one) for one endpoint's callbacks."""

    def __init__(self, reactor, host: str = "127.0.0.1", port: int = 0,
                 tls: TLSConfig | None = None) -> None:
        self.reactor, self.host, self.requested_port, self.tls = reactor, host, port, tls
        self.pending: _PendingWorker | None = None
        self._port = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the callback listener is not listening")
        return self._port.getHost().port

    def start(self) -> int:
        """Start listening (idempotent); returns the port."""
        if self._port is None:
            factory = _CallbackFactory(self)
            if self.tls is not None:
                factory = TLSMemoryBIOFactory(self.tls, False, factory)
            self._port = self.reactor.listenTCP(self.requested_port, factory,
                                                interface=self.host)
        return self.port

    def expect_worker(self, timeout: float) -> defer.Deferred:
        """Fires with ``(command, data)`` channels once both callbacks arrived (and finished
        their TLS handshakes), or errbacks with TSIUnreachable after ``timeout``."""
        if self.pending is not None and not self.pending.result.called:
            raise RuntimeError("worker creation must be serialised per endpoint")
        pending = self.pending = _PendingWorker(self.tls is not None)

        def timed_out(failure):
            failure.trap(defer.TimeoutError, defer.CancelledError)
            pending.abort()
            got = len(pending.channels)
            raise TSIUnreachable(f"the TSI did not call back to {self.host}:{self.port} "
                                 f"within {timeout:g} s ({got} of 2 callbacks)")

        def done(result):
            if self.pending is pending:
                self.pending = None
            return result

        return pending.result.addTimeout(timeout, self.reactor).addErrback(timed_out) \
            .addBoth(done)

    def stop(self) -> defer.Deferred:
        if self.pending is not None:
            self.pending.result.cancel()
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
