"""Run the gridvm TSI agent as a local subprocess on 127.0.0.1 (tests, benchmarks, dev).

The agent runs with ``python -S`` (no site-packages), so every run proves it needs nothing
beyond the standard library.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the directory holding tsi_bridge/


class AgentProcess:
    """One agent subprocess; ``port`` is its shepherd port."""

    def __init__(self, base: Path, *args: str, config: Path | None = None,
                 privileged: bool = False) -> None:
        self.base = base
        self.workdir = base / "work"
        self.state_dir = base / "state"
        self.log_path = base / "agent.log"
        self.port_file = base / "agent.port"
        self.args = list(args)
        self.config = config
        self.privileged = privileged or "--job-user" in args
        self.process: subprocess.Popen | None = None
        self.port = 0

    def command(self) -> list[str]:
        argv = [sys.executable, "-S", "-m", "tsi_bridge.agent"]
        if self.config:
            argv += ["--config", str(self.config)]
        argv += ["--listen-address", "127.0.0.1", "--port", str(self.port or 0),
                 "--port-file", str(self.port_file), "--state-dir", str(self.state_dir),
                 "--workdir-root", str(self.workdir), "--log-level", "debug", *self.args]
        if not self.privileged:
            argv.append("--no-switch-uid")
        return argv

    def start(self, timeout: float = 15.0) -> AgentProcess:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.port_file.exists():
            self.port_file.unlink()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
               "HOME": os.environ.get("HOME", "/root"), "USER": "tester"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env,
                                        cwd=str(self.base))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"agent did not start: {self.log_path.read_text()[-2000:]}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
