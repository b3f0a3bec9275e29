"""The readiness probe of our agent: ``ping gridvm`` -> ``OK gridvm-tsi <version>``.

It tells "the agent answered" from slirp merely accepting a TCP connect.  In TLS mode the
probe happens after a full mutual-TLS handshake.  An official TSI rejects the line.
"""

from __future__ import annotations

from twisted.internet import defer

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
