"""A stand-in for the official TSI that answers with captured replies: it does the shepherd
handshake (``OK``, then two callbacks) and answers each request with the reply recorded for
its command, byte for byte."""

from __future__ import annotations

import socket
import threading

from tsi_bridge import protocol


class ReplayTSI:
    def __init__(self, replies: dict[str, bytes]) -> None:
        self.replies = replies
        self.requests: list[str] = []
        self.workers = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _address = self.server.accept()
            except OSError:
                return
            with conn:
                port = int(conn.recv(1024).split()[1])
                conn.sendall(b"OK\n")
            command = socket.create_connection(("127.0.0.1", port))
            data = socket.create_connection(("127.0.0.1", port))
            self._sockets += [command, data]
            self.workers += 1
            threading.Thread(target=self._work, args=(command,), daemon=True).start()

    def _work(self, command: socket.socket) -> None:
        splitter = protocol.MessageSplitter()
        while True:
            try:
                chunk = command.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            for message in splitter.feed(chunk):
                text = message.decode()
                self.requests.append(text)
                command.sendall(self.replies[protocol.find_command(text)])

    def close(self) -> None:
        self.server.close()
        for sock in self._sockets:
            sock.close()
