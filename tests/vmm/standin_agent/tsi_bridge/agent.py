"""Stand-in guest agent for vmm tests: answers the readiness line and nothing else.

vmm's tests are about booting and readiness, not the TSI; the TSI bridge's own tests run
the real agent.
"""

import socket
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(10)
        if conn.recv(1024).startswith(b"ping gridvm"):
            conn.sendall(b"OK gridvm-tsi stand-in\n")


def main() -> None:
    server = socket.create_server(("0.0.0.0", 4433), reuse_port=True)
    print("stand-in agent listening on 4433", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
