"""The readiness probe of our agent: ``ping gridvm`` -> ``OK gridvm-tsi <version>``.

It tells "the agent answered" from slirp merely accepting a TCP connect.  In TLS mode the
probe happens after a full mutual-TLS handshake.  An official TSI rejects the line: for it,
:func:`first_ping_probe` waits for the first answered PING instead.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from tsi_bridge import protocol
from tsi_bridge.errors import TSIUnreachable
from tsi_bridge.line_exchange import exchange_line


def probe_agent(reactor, host: str, port: int, tls_context=None,
                timeout: float = 5.0) -> defer.Deferred:
    """Fires with the agent's version; errbacks with TSIUnreachable otherwise.
    ``tls_context``: a TLSConfig (or any IOpenSSLClientConnectionCreator) for mutual TLS."""

    async def probe() -> str:
        line = await exchange_line(reactor, host, port, protocol.READINESS_REQUEST,
                                   tls_context, timeout)
        if not line.startswith(protocol.READINESS_REPLY_PREFIX):
            raise TSIUnreachable(f"{host}:{port} is not a gridvm TSI agent: {line[:80]!r}")
        return line[len(protocol.READINESS_REPLY_PREFIX):].strip()

    return defer.Deferred.fromCoroutine(probe())


def first_ping_probe(reactor, ping: Callable[[], defer.Deferred],
                     timeout: float = 10.0) -> Callable[[str, int], defer.Deferred]:
    """Readiness of a TSI that answers no readiness line (the official UNICORE TSI): its
    first answered PING, through a whole ``newtsiprocess`` handshake and both callbacks.

    One attempt at a time, each within ``timeout``: a probe asked for while one is under way
    shares its outcome (cancelling a share leaves the attempt running).  ``host``/``port``
    are ignored: ``ping`` is a TSI link's, which knows its endpoint.
    """
    waiting: list[defer.Deferred] = []
    running: list[defer.Deferred] = []

    def settle(result):
        running.clear()
        shares = list(waiting)
        waiting.clear()
        for share in shares:
            if share.called:  # cancelled by an earlier share's callback (the race is won)
                continue
            if isinstance(result, Failure):
                share.errback(result)
            else:
                share.callback(result)

    def probe(_host: str, _port: int) -> defer.Deferred:
        share: defer.Deferred = defer.Deferred(
            lambda d: waiting.remove(d) if d in waiting else None)
        waiting.append(share)
        if not running:
            attempt = defer.maybeDeferred(ping).addTimeout(timeout, reactor)
            running.append(attempt)
            attempt.addBoth(settle)
        return share

    return probe
