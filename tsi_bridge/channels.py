"""Twisted protocols for one TSI worker's two sockets, and the worker built on them.

A worker is a command channel (framed messages) plus a data channel (raw bytes).  It serves
one request at a time; any anomaly (timeout, lost connection, unexpected bytes, a reply
that breaks the framing rules) discards the worker, as UNICORE/X does, and is reported as
TSI_LOST.  ``TSI_FAILED`` replies become TSICommandFailed (TSI_ERROR) and keep the worker.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tsi_bridge import protocol
from tsi_bridge.errors import TSICommandFailed, TSIConnectionLost, TSIError


def set_nodelay(transport) -> None:
    with contextlib.suppress(AttributeError, OSError):
        transport.setTcpNoDelay(True)


def tcp_socket(transport) -> socket.socket | None:
    """The TCP socket under ``transport`` (through a TLS wrapper), or None."""
    for _ in range(3):
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
    return None


def quick_ack(sock: socket.socket | None) -> None:
    """Acknowledge what arrived at once instead of after the delayed-ACK timer.

    The official TSI writes a reply in pieces with Nagle on: it holds the rest until the
    first piece is acknowledged, which Linux delays by ~40 ms — 44 ms for every request
    (measured); likewise the second ``ENDOFMESSAGE`` of a file chunk.  Called on every
    read (one cheap system call); a no-op where unsupported.
    """
    if sock is not None and QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


QUICKACK = getattr(socket, "TCP_QUICKACK", None)


@implementer(IHandshakeListener)
class Channel(Protocol):
    """Base: ``ready`` fires once usable (TCP connected, or TLS handshake completed)."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.ready: defer.Deferred = defer.Deferred()
        self.lost_reason: str | None = None
        self.on_lost: Callable[[Channel], None] | None = None
        self.socket: socket.socket | None = None

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        self.socket = tcp_socket(self.transport)
        if not self.tls:
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        if self.tls and not self.ready.called:
            self.ready.callback(self)

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost_reason = reason.getErrorMessage() if reason else "connection lost"
        if not self.ready.called:
            self.ready.errback(TSIConnectionLost(f"callback failed: {self.lost_reason}"))
        if self.on_lost:
            self.on_lost(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


class CommandChannel(Channel):
    def __init__(self, tls: bool) -> None:
        super().__init__(tls)
        self.splitter = protocol.MessageSplitter()
        self.queued: list[bytes] = []
        self._waiter: defer.Deferred | None = None

    def dataReceived(self, data: bytes) -> None:
        try:
            self.queued += self.splitter.feed(data)
        except protocol.ProtocolError as err:
            self._fail(TSIConnectionLost(f"command channel: {err}"))
            self.abort()
            return
        quick_ack(self.socket)
        if self._waiter is not None and self.queued:
            waiter, self._waiter = self._waiter, None
            waiter.callback(self.queued.pop(0))

    def next_message(self) -> defer.Deferred:
        """The next complete message (without its ENDOFMESSAGE line)."""
        if self.queued:
            return defer.succeed(self.queued.pop(0))
        if self.lost_reason is not None:
            return defer.fail(TSIConnectionLost(f"command channel lost: {self.lost_reason}"))

        def cancel(_d: defer.Deferred) -> None:
            self._waiter = None

        self._waiter = defer.Deferred(cancel)
        return self._waiter

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(error)

    def connectionLost(self, reason: Failure = None) -> None:
        super().connectionLost(reason)
        self._fail(TSIConnectionLost(f"command channel lost: {self.lost_reason}"))

    @property
    def quiet(self) -> bool:
        return not self.queued and self.splitter.pending == 0


class DataChannel(Channel):
    #: Bytes buffered before reading pauses (a stream faster than its consumer).
    HIGH_WATER = 16 * 1024 * 1024

    def __init__(self, tls: bool) -> None:
        super().__init__(tls)
        self.buffer = bytearray()
        self._wanted = 0
        self._waiter: defer.Deferred | None = None
        self._paused = False

    def dataReceived(self, data: bytes) -> None:
        quick_ack(self.socket)
        self.buffer += data
        if len(self.buffer) > self.HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pauseProducing()
        self._deliver()

    def _deliver(self) -> None:
        if self._waiter is not None and len(self.buffer) >= self._wanted:
            data = bytes(self.buffer[: self._wanted])
            del self.buffer[: self._wanted]
            waiter, self._waiter = self._waiter, None
            if self._paused and len(self.buffer) <= self.HIGH_WATER // 2:
                self._paused = False
                self.transport.resumeProducing()
            waiter.callback(data)

    def read_exactly(self, length: int) -> defer.Deferred:
        if self.lost_reason is not None and len(self.buffer) < length:
            return defer.fail(TSIConnectionLost(f"data channel lost: {self.lost_reason}"))

        def cancel(_d: defer.Deferred) -> None:
            self._waiter = None

        self._wanted = length
        self._waiter = defer.Deferred(cancel)
        waiter = self._waiter
        self._deliver()
        return waiter

    def connectionLost(self, reason: Failure = None) -> None:
        super().connectionLost(reason)
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(TSIConnectionLost(f"data channel lost: {self.lost_reason}"))

    @property
    def quiet(self) -> bool:
        return not self.buffer


class TSIWorker:
    """One TSI worker process at the other end: sequential requests with deadlines."""

    def __init__(self, reactor, command: CommandChannel, data: DataChannel, name: str) -> None:
        self.reactor, self.command, self.data, self.name = reactor, command, data, name
        self.broken: str | None = None
        self.on_broken: Callable[[TSIWorker], None] | None = None
        command.on_lost = data.on_lost = self._channel_lost

    def _channel_lost(self, channel: Channel) -> None:
        self.discard(f"connection lost: {channel.lost_reason}")

    def discard(self, why: str) -> None:
        """Mark the worker unusable and close both sockets (idempotent)."""
        if self.broken is not None:
            return
        self.broken = why
        self.command.abort()
        self.data.abort()
        if self.on_broken:
            self.on_broken(self)

    def _run(self, what: str, timeout: float,
             operation: Callable[[], Awaitable[object]]) -> defer.Deferred:
        if self.broken is not None:
            return defer.fail(TSIConnectionLost(f"{self.name} is unusable: {self.broken}"))
        if not (self.command.quiet and self.data.quiet):
            self.discard("unexpected bytes between requests")
            return defer.fail(TSIConnectionLost(f"{self.name}: unexpected bytes from the TSI"))

        async def guarded():
            return await operation()

        result = defer.Deferred.fromCoroutine(guarded())
        result.addTimeout(timeout, self.reactor)

        def failed(failure: Failure):
            if failure.check(TSICommandFailed):
                return failure
            if failure.check(defer.TimeoutError, defer.CancelledError):
                self.discard(f"no reply to {what} within {timeout:g} s")
                raise TSIConnectionLost(f"{self.name}: no reply to {what} within {timeout:g} s")
            if failure.check(protocol.ProtocolError):
                self.discard(f"protocol anomaly: {failure.value}")
                raise TSIConnectionLost(f"{self.name}: {what}: {failure.value}")
            self.discard(f"{what}: {failure.getErrorMessage()}")
            if failure.check(TSIError):
                return failure
            raise TSIConnectionLost(f"{self.name}: {what}: {failure.getErrorMessage()}")

        return result.addErrback(failed)

    async def _reply(self, command: str | None = None) -> protocol.Reply:
        reply = protocol.parse_reply(await self.command.next_message(), command)
        if not reply.ok:
            raise TSICommandFailed(reply.error or "TSI_FAILED")
        return reply

    def request(self, message: bytes, what: str, timeout: float) -> defer.Deferred:
        """Send one framed request; fires with its Reply (payload after TSI_OK)."""

        async def operation():
            self.command.transport.write(message)
            return await self._reply(what)

        return self._run(what, timeout, operation)

    def get_chunk(self, message: bytes, timeout: float) -> defer.Deferred:
        """GETFILECHUNK: header on the command channel, bytes on the data channel, then the
        second ENDOFMESSAGE.  Fires with the bytes."""

        async def operation():
            self.command.transport.write(message)
            length = protocol.chunk_length(await self._reply())
            data = await self.data.read_exactly(length)
            if await self.command.next_message() != b"":
                raise protocol.ProtocolError("GETFILECHUNK: no second ENDOFMESSAGE")
            return data

        return self._run("GETFILECHUNK", timeout, operation)

    def put_chunk(self, message: bytes, data: bytes, timeout: float) -> defer.Deferred:
        """PUTFILECHUNK: wait for TSI_OK, only then send exactly the announced bytes, then
        the second ENDOFMESSAGE (or TSI_FAILED if the write failed)."""

        async def operation():
            self.command.transport.write(message)
            ack = await self._reply()
            if ack.payload:
                raise protocol.ProtocolError(f"PUTFILECHUNK: unexpected reply {ack.payload!r}")
            self.data.transport.write(data)
            second = await self.command.next_message()
            if second == b"":
                return None
            reply = protocol.parse_reply(second)
            if not reply.ok:
                raise TSICommandFailed(reply.error or "TSI_FAILED")
            raise protocol.ProtocolError(f"PUTFILECHUNK: unexpected {second[:80]!r}")

        return self._run("PUTFILECHUNK", timeout, operation)

    def get_stream(self, message: bytes, sink: Callable[[bytes], Awaitable[object]],
                   stall: float, timeout: float) -> defer.Deferred:
        """GRIDVM_GETDIRECTORY: ``TSI_OK\\nTSI_STREAM``, frames on the data channel (each
        handed to ``sink``; none may take longer than ``stall``), an empty frame, then the
        final reply.  Fires with the final reply's payload (the report)."""

        async def frame(length: int) -> bytes:
            return await self.data.read_exactly(length).addTimeout(stall, self.reactor)

        async def operation():
            self.command.transport.write(message)
            header = await self._reply()
            if header.payload != protocol.STREAM_HEADER:
                raise protocol.ProtocolError(f"stream: unexpected reply {header.payload!r}")
            while True:
                (length,) = protocol.FRAME.unpack(await frame(protocol.FRAME.size))
                if length == 0:
                    break
                if length > protocol.MAX_FRAME:
                    raise protocol.ProtocolError(f"stream frame of {length} bytes")
                await sink(await frame(length))
            final = await self.command.next_message().addTimeout(stall, self.reactor)
            reply = protocol.parse_reply(final)
            if not reply.ok:
                raise TSICommandFailed(reply.error or "TSI_FAILED")
            return reply.payload

        return self._run("GRIDVM_GETDIRECTORY", timeout, operation)

    def close(self) -> None:
        self.discard("closed")
