"""The shepherd: accepts connections, answers the readiness probe, and turns each
``newtsiprocess <port>`` into a worker by calling back twice (command, then data).

Unlike the official TSI, every connection is handled in its own thread with deadlines, so a
silent client, a failed TLS handshake or a plain-TCP connection to the TLS port never blocks
or kills the agent; there is no 1 s sleep before the callbacks (the client listens before it
asks); TCP_NODELAY is set on every socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from tsi_bridge import protocol
from tsi_bridge.agent import log
from tsi_bridge.agent.config import Config
from tsi_bridge.agent.helpers import HelperPool
from tsi_bridge.agent.identity import IdentityResolver, use_helpers
from tsi_bridge.agent.jobs import JobTable
from tsi_bridge.agent.launcher import HAVE_PIDFD, LauncherPool
from tsi_bridge.agent.worker import Worker


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def read_line(sock: socket.socket, limit: int = 1024) -> bytes:
    """One line (up to ``limit`` bytes) within the socket's timeout."""
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


class Agent:
    """The whole agent: shepherd socket, job table, supervisor thread, workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.identities = IdentityResolver(config.switch_uid, config.job_user, config.job_group)
        problem = self.identities.check()
        if problem:
            log.error(f"job user problem, requests will fail: {problem}")
        self.tls = None
        if config.tls:
            from tsi_bridge.agent.tls import AgentTLS
            self.tls = AgentTLS(**config.tls, allowed_dns=config.allowed_dns)
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        self._prepare_workdir_root()
        #: the root's real path, resolved once (``os.path.realpath`` is an lstat per part)
        self.workdir_real = os.path.realpath(config.workdir_root)
        #: long-lived per-user processes for file work as the user (no fork per request)
        self.helpers = HelperPool() if self.identities.privileged and config.user_helpers \
            else None
        use_helpers(self.helpers)
        #: and for starting the user's jobs (no fork of the agent per job)
        self.launchers = LauncherPool() if self.helpers is not None and HAVE_PIDFD else None
        self.jobs = JobTable(config.state_dir, shell=config.shell, nice=config.job_nice,
                             abort_grace=config.timeouts["abort_grace"],
                             record_ttl=config.record_ttl, environment=config.environment,
                             launchers=self.launchers)
        self.stop = threading.Event()
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._counter = 0
        self.listener: socket.socket | None = None

    def _prepare_workdir_root(self) -> None:
        root = self.config.workdir_root
        if os.path.isdir(root):
            return
        os.makedirs(root, mode=0o755, exist_ok=True)
        if self.identities.job_user and not self.identities.check():
            runas = self.identities.resolve(None)
            os.chown(root, runas.uid, runas.gid)

    def bind(self) -> int:
        config = self.config
        family = socket.AF_INET6 if ":" in config.listen_address else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((config.listen_address, config.listen_port))
        listener.listen(64)
        self.listener = listener
        port = listener.getsockname()[1]
        if config.port_file:
            temporary = f"{config.port_file}.tmp"
            with open(temporary, "w", encoding="ascii") as handle:
                handle.write(f"{port}\n")
            os.replace(temporary, config.port_file)
        mode = "mutual TLS" if self.tls else "plain TCP"
        log.info(f"gridvm TSI agent {protocol.AGENT_VERSION} listening on "
                 f"{config.listen_address}:{port} ({mode}, {self.identities.mode})")
        return port

    def serve_forever(self) -> None:
        if self.listener is None:
            self.bind()
        supervisor = threading.Thread(target=self.jobs.supervise, args=(self.stop,),
                                      name="supervisor", daemon=True)
        supervisor.start()
        self.listener.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn, address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self.stop.is_set():
                    break
                log.warning(f"accept failed: {err}")
                continue
            if not self._slots.acquire(blocking=False):
                log.warning(f"refusing {address[0]}: {self.config.max_connections} "
                            "connections in use")
                conn.close()
                continue
            self._counter += 1
            name = f"connection-{self._counter}"
            threading.Thread(target=self._serve_connection, args=(conn, address, name),
                             name=name, daemon=True).start()
        self.listener.close()
        if self.helpers is not None:
            self.helpers.close()
        if self.launchers is not None:
            self.launchers.close()

    def _serve_connection(self, conn: socket.socket, address: tuple, name: str) -> None:
        try:
            self._shepherd(conn, address, name)
        except Exception as err:  # one connection's trouble never stops the agent
            log.warning(f"{name} from {address[0]}: {type(err).__name__}: {err}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()

    def _shepherd(self, conn: socket.socket, address: tuple, name: str) -> None:
        config = self.config
        peer = address[0]
        if config.allowed_peers and peer not in config.allowed_peers:
            log.warning(f"{name}: peer {peer} is not allowed")
            return
        tune(conn)
        conn.settimeout(config.timeouts["handshake"])
        if self.tls:
            try:
                conn = self.tls.wrap_server(conn)
            except (OSError, ValueError, Exception) as err:
                log.warning(f"{name}: TLS handshake with {peer} failed: {err}")
                return
        try:
            line = read_line(conn).decode("utf-8", "replace").strip()
        except TimeoutError:
            log.warning(f"{name}: {peer} sent no request within "
                        f"{config.timeouts['handshake']:g} s")
            conn.close()
            return
        words = line.split()
        if line == protocol.READINESS_REQUEST.decode().strip() and config.readiness_line:
            conn.sendall(f"{protocol.READINESS_REPLY_PREFIX}{protocol.AGENT_VERSION}\n".encode())
            conn.close()
            return
        if len(words) != 2 or words[0] != "newtsiprocess" or not words[1].isdigit() \
                or not 0 < int(words[1]) < 65536:
            log.warning(f"{name}: request from {peer} not understood: {line[:80]!r}")
            conn.close()
            return
        conn.sendall(b"OK\n")
        conn.close()
        host = config.callback_host or peer
        port = config.callback_port or int(words[1])
        command = self._call_back(host, port)
        try:
            data = self._call_back(host, port)
        except BaseException:
            command.close()
            raise
        Worker(self, command, data, f"worker-{self._counter}({peer})").run()

    def _call_back(self, host: str, port: int) -> socket.socket:
        sock = socket.create_connection((host, port),
                                        timeout=self.config.timeouts["callback_connect"])
        try:
            tune(sock)
            if self.tls:
                sock = self.tls.wrap_client(sock)  # handshake now, before the next connect
        except BaseException:
            sock.close()
            raise
        return sock
