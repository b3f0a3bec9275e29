"""A blocking, byte-exact TSI client for tests: speaks the protocol with bare sockets so the
tests can replay transcripts and misbehave on purpose."""

from __future__ import annotations

import socket
import ssl

from tsi_bridge import protocol


class RawWorker:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None,
                 tls_server: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        listener.settimeout(timeout)
        shepherd = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            shepherd = tls.wrap_socket(shepherd)
        shepherd.sendall(b"newtsiprocess %d\n" % listener.getsockname()[1])
        assert shepherd.recv(16) == b"OK\n"
        shepherd.close()
        sockets = []
        for _ in range(2):
            conn, _address = listener.accept()
            conn.settimeout(timeout)
            if tls_server:
                conn = tls_server.wrap_socket(conn, server_side=True)
            sockets.append(conn)
        listener.close()
        self.command, self.data = sockets
        self.splitter = protocol.MessageSplitter()
        self.queued: list[bytes] = []

    def read_reply(self) -> bytes:
        """The next reply, with its ENDOFMESSAGE line."""
        while not self.queued:
            chunk = self.command.recv(65536)
            if not chunk:
                raise ConnectionError("command channel closed")
            self.queued += self.splitter.feed(chunk)
        return self.queued.pop(0) + protocol.END_LINE

    def exchange(self, request: bytes) -> bytes:
        self.command.sendall(request)
        return self.read_reply()

    def read_data(self, length: int) -> bytes:
        data = b""
        while len(data) < length:
            chunk = self.data.recv(length - len(data))
            if not chunk:
                raise ConnectionError("data channel closed")
            data += chunk
        return data

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        self.command.settimeout(timeout)
        try:
            return self.command.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.command.close()
        self.data.close()


def request(body: str, user: str = "nobody") -> bytes:
    return protocol.build_request(body, user)
