"""One line to a shepherd port and one line back: ``newtsiprocess`` and the readiness probe.

With TLS the line leaves only after the handshake, and only if the peer's certificate passed
our checks, which run after the handshake (``TLSConfig.checked_after_handshake()``): the
official TSI's daemon dies when a handshake on its shepherd port fails.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from tsi_bridge.channels import set_nodelay
from tsi_bridge.errors import TSIUnreachable
from tsi_bridge.tls import TLSConfig


@implementer(IHandshakeListener)
class _LineRequest(Protocol):
    def __init__(self, line: bytes, tls=None) -> None:
        self.line = line
        self.tls = tls
        self.refused: str | None = None
        self.buffer = b""
        self.result: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        if self.tls is None:
            self.transport.write(self.line)  # one write: the official shepherd reads once

    def handshakeCompleted(self) -> None:
        refusal = (self.tls.refusal(self.transport.getHandle())
                   if isinstance(self.tls, TLSConfig) else None)
        if refusal is None:
            self.transport.write(self.line)
            return
        # report it once the connection is closed: our TLS Finished must reach the peer, or
        # its handshake fails after all
        self.refused = refusal
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return
        self.buffer += data
        if b"\n" in self.buffer and not self.result.called:
            self.result.callback(self.buffer.split(b"\n", 1)[0].decode("utf-8", "replace"))
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.result.called:
            if self.refused is not None:
                self.result.errback(
                    TSIUnreachable(f"refused the TSI's certificate: {self.refused}"))
            elif self.buffer:
                self.result.callback(self.buffer.decode("utf-8", "replace"))
            else:
                why = reason.getErrorMessage() if reason else "closed"
                self.result.errback(TSIUnreachable(
                    f"the TSI closed the connection without a reply ({why}); with TLS this "
                    "usually means it refused our certificate"))


async def exchange_line(reactor, host: str, port: int, line: bytes, tls=None,
                        timeout: float = 10.0) -> str:
    """Connect (TLS if ``tls``, an IOpenSSLClientConnectionCreator), send ``line`` in one
    write, return the first line of the answer.  Errors are TSIUnreachable."""
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isinstance(tls, TLSConfig):
        tls = tls.checked_after_handshake()
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    request = _LineRequest(line, tls)
    try:
        await connectProtocol(endpoint, request)
    except Exception as err:
        raise TSIUnreachable(f"cannot connect to {host}:{port}: {err}") from err
    result = request.result.addTimeout(timeout, reactor)
    try:
        return await result
    except (defer.TimeoutError, defer.CancelledError) as err:
        if request.transport is not None:
            request.transport.abortConnection()
        if isinstance(err, defer.CancelledError):
            raise
        raise TSIUnreachable(f"no answer from {host}:{port} within {timeout:g} s") from None
