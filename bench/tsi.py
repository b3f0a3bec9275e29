"""Benchmark of the TSI link: our Twisted client against our agent on 127.0.0.1.

    .venv/bin/python bench/tsi.py [--quick]

Measures, plain TCP and mutual TLS side by side: worker handshake (newtsiprocess + two
callbacks), PING round trip (median, p95), EXECUTESCRIPT scripts/s on one worker, small-job
submit->done throughput with 1 and 8 concurrent workers, file transfer MB/s both ways.
Baselines measured in the same run: a raw loopback TCP echo round trip and a raw loopback
copy rate.  Goals (tsi-protocol.md §8): handshake <= 50 ms, PING <= 1 ms, >= 200 small
scripts/s per worker (the official TSI 11.2.1: 1.005 s, 44 ms, 22.7/s).  Ends with one JSON
line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task

from tests.support.local_agent import AgentProcess
from tsi_bridge.ca import CertificateAuthority
from tsi_bridge.client import TSIClient
from tsi_bridge.tls import TLSConfig

OFFICIAL = {"handshake_ms": 1005.0, "ping_ms": 44.0, "scripts_per_s": 22.7}
GOALS = {"handshake_ms": 50.0, "ping_ms": 1.0, "scripts_per_s": 200.0}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ------------------------------------------------------------------------------ baselines


def raw_echo_rtt_ms(rounds: int) -> float:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo():
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    client = socket.create_connection(server.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        client.sendall(b"#TSI_PING\n\nENDOFMESSAGE\n")
        client.recv(65536)
        samples.append((time.perf_counter() - started) * 1000)
    client.close()
    thread.join(5)
    server.close()
    return statistics.median(samples)


def raw_copy_mb_per_s(total: int) -> float:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    received = []

    def sink():
        conn, _ = server.accept()
        count = 0
        while data := conn.recv(1 << 20):
            count += len(data)
        received.append(count)
        conn.close()

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    client = socket.create_connection(server.getsockname())
    block = os.urandom(1 << 20)
    started = time.perf_counter()
    for _ in range(total >> 20):
        client.sendall(block)
    client.close()
    thread.join(30)
    server.close()
    return received[0] / (time.perf_counter() - started) / 1e6


# ------------------------------------------------------------------------------ TSI figures


async def measure(reactor, agent: AgentProcess, tls: TLSConfig | None, sizes: dict) -> dict:
    figures: dict[str, float] = {}
    client = TSIClient(reactor, "127.0.0.1", agent.port, tls=tls, pool_size=8,
                       request_timeout=120)
    try:
        handshakes = []
        for _ in range(sizes["handshakes"]):
            started = time.perf_counter()
            worker = await client.new_worker()
            handshakes.append((time.perf_counter() - started) * 1000)
            worker.close()
        figures["handshake_ms"] = statistics.median(handshakes)

        await client.ping()  # one pooled worker from here on
        pings = []
        for _ in range(sizes["pings"]):
            started = time.perf_counter()
            await client.ping()
            pings.append((time.perf_counter() - started) * 1000)
        figures["ping_ms"] = statistics.median(pings)
        figures["ping_p95_ms"] = percentile(pings, 0.95)

        started = time.perf_counter()
        for _ in range(sizes["scripts"]):
            await client.execute_script("true")
        figures["scripts_per_s"] = sizes["scripts"] / (time.perf_counter() - started)

        jobdir = str(agent.workdir / "bench-jobs")
        await client.execute_script(f"mkdir -p {jobdir}")

        async def jobs(count: int) -> None:
            for _ in range(count):
                bssid = await client.submit("true\n", uspace_dir=jobdir)
                while bssid in await client.get_status_listing():
                    await task.deferLater(reactor, 0.002, lambda: None)
                client.forget(bssid)

        for workers in (1, 8):
            per_worker = sizes["jobs"] // workers if workers > 1 else sizes["jobs"] // 2
            started = time.perf_counter()
            await defer.gatherResults([defer.Deferred.fromCoroutine(jobs(per_worker))
                                       for _ in range(workers)])
            elapsed = time.perf_counter() - started
            figures[f"jobs_per_s_{workers}w"] = per_worker * workers / elapsed

        with tempfile.TemporaryDirectory() as scratch:
            source, back = Path(scratch) / "up.bin", Path(scratch) / "down.bin"
            source.write_bytes(os.urandom(sizes["file"]))
            remote = str(agent.workdir / "bench.bin")
            started = time.perf_counter()
            await client.upload(str(source), remote)
            figures["upload_mb_s"] = sizes["file"] / (time.perf_counter() - started) / 1e6
            started = time.perf_counter()
            await client.download(remote, str(back))
            figures["download_mb_s"] = sizes["file"] / (time.perf_counter() - started) / 1e6
            assert back.read_bytes() == source.read_bytes(), "transfer corrupted the file"
    finally:
        await client.close()
    return figures


async def run(reactor, quick: bool) -> dict:
    sizes = ({"handshakes": 5, "pings": 100, "scripts": 30, "jobs": 40, "file": 16 << 20}
             if quick else
             {"handshakes": 20, "pings": 1000, "scripts": 200, "jobs": 200, "file": 64 << 20})
    results: dict[str, object] = {"baseline_raw_rtt_ms": raw_echo_rtt_ms(sizes["pings"]),
                                  "baseline_raw_copy_mb_s": raw_copy_mb_per_s(sizes["file"])}
    with tempfile.TemporaryDirectory(prefix="gridvm-bench-tsi-") as base:
        base = Path(base)
        ca = CertificateAuthority.create()
        server, instance = ca.issue_server(), ca.issue_instance("bench")
        (base / "ca.pem").write_bytes(ca.cert_pem)
        server.write(base / "server.pem", base / "server.key")
        instance.write(base / "agent.pem", base / "agent.key")
        tls_flags = ["--tls-cert", str(base / "agent.pem"), "--tls-key", str(base / "agent.key"),
                     "--tls-ca", str(base / "ca.pem"), "--tls-peer-cert",
                     str(base / "server.pem"), "--log-level", "warning"]
        modes = {"plain": ([], None),
                 "tls": (tls_flags, TLSConfig(server.cert_pem, server.key_pem, ca.cert_pem,
                                              instance.cert_pem))}
        for mode, (flags, tls) in modes.items():
            agent = AgentProcess(base / mode, *flags, "--log-level", "warning").start()
            try:
                results[mode] = await measure(reactor, agent, tls, sizes)
            finally:
                agent.stop()
    return results


def report(results: dict) -> dict:
    plain, tls = results["plain"], results["tls"]
    print(f"baseline: raw loopback echo {results['baseline_raw_rtt_ms']:.3f} ms, "
          f"raw loopback copy {results['baseline_raw_copy_mb_s']:.0f} MB/s")
    print(f"{'figure':<18}{'plain':>12}{'tls':>12}{'tls/plain':>11}{'goal':>10}"
          f"{'official':>10}")
    for key in plain:
        goal = GOALS.get(key.replace("_p95", ""), "")
        official = OFFICIAL.get(key, "")
        ratio = tls[key] / plain[key] if plain[key] else float("nan")
        print(f"{key:<18}{plain[key]:>12.3f}{tls[key]:>12.3f}{ratio:>11.2f}{goal!s:>10}"
              f"{official!s:>10}")
    ratios = {
        "ping_vs_raw_rtt": plain["ping_ms"] / results["baseline_raw_rtt_ms"],
        "upload_vs_raw_copy": plain["upload_mb_s"] / results["baseline_raw_copy_mb_s"],
        "download_vs_raw_copy": plain["download_mb_s"] / results["baseline_raw_copy_mb_s"],
        "ping_speedup_vs_official": OFFICIAL["ping_ms"] / plain["ping_ms"],
        "handshake_speedup_vs_official": OFFICIAL["handshake_ms"] / plain["handshake_ms"],
        "scripts_speedup_vs_official": plain["scripts_per_s"] / OFFICIAL["scripts_per_s"],
    }
    goals_met = {
        mode: {"handshake": figures["handshake_ms"] <= GOALS["handshake_ms"],
               "ping": figures["ping_ms"] <= GOALS["ping_ms"],
               "scripts": figures["scripts_per_s"] >= GOALS["scripts_per_s"]}
        for mode, figures in (("plain", plain), ("tls", tls))}
    for name, value in ratios.items():
        print(f"{name:<32}{value:>10.2f}")
    print(f"goals met: {goals_met}")
    return {"benchmark": "tsi", **results, "ratios": ratios, "goals_met": goals_met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    args = parser.parse_args()
    figures: dict = {}

    async def go(reactor):
        figures.update(report(await run(reactor, args.quick)))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit as exit_:
        if exit_.code:
            raise
    print(json.dumps(figures, sort_keys=True, default=lambda v: round(v, 3)))


if __name__ == "__main__":
    main()
