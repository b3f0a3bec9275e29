"""The CLI against a whole REST site in-process (the site of tests/tsf/rest, one VM boot).

The CLI runs as a subprocess (``gridvm …``) in a thread, so that the reactor keeps serving
the in-process site meanwhile.  Each call gets a clean environment: GRIDVM_URL (HTTPS,
self-signed, hence GRIDVM_INSECURE=1), GRIDVM_USER/GRIDVM_PASSWORD and no config file.
"""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
from pathlib import Path

from twisted.internet import threads

from tests.tsf.rest.conftest import PASSWORDS, rest_site  # noqa: F401  (the module's site)

#: the ``gridvm`` command of this tree (the console script runs ``gridvm.cli:main`` too)
GRIDVM = [sys.executable, "-m", "gridvm"]
#: the tree these tests belong to: the virtualenv's editable install may point elsewhere
ROOT = Path(__file__).resolve().parents[2]


def cli_env(base: str | None, user: str | None = "alice", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDVM_")}
    env["GRIDVM_CONFIG"] = "/nonexistent/gridvm-client.toml"
    env["PYTHONPATH"] = str(ROOT)
    if base:
        env["GRIDVM_URL"] = base
        env["GRIDVM_INSECURE"] = "1"
    if user:
        env["GRIDVM_USER"] = user
        env["GRIDVM_PASSWORD"] = PASSWORDS[user]
    env.update(extra)
    return env


def run_cli(args, env: dict[str, str], cwd=None, stdin: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*GRIDVM, *args], env=env, cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def run_on_terminal(args, env: dict[str, str], timeout: float = 180) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    main, terminal = pty.openpty()
    try:
        done = subprocess.run([*GRIDVM, *args], env=env, stdout=subprocess.PIPE,
                              stderr=terminal, text=True, timeout=timeout)
        os.close(terminal)
        terminal = -1
        screen = b""
        with contextlib.suppress(OSError):  # EIO once everything is read
            while chunk := os.read(main, 65536):
                screen += chunk
    finally:
        os.close(main)
        if terminal >= 0:
            os.close(terminal)
    return done.returncode, done.stdout, screen.decode(errors="replace")


class Cli:
    """``await cli("jobs", "--json")`` → CompletedProcess; the site's HTTPS BASE by default."""

    def __init__(self, base: str):
        self.base = base

    def __call__(self, *args: str, user: str | None = "alice", base: str | None = None,
                 cwd=None, stdin: str | None = None, **extra: str):
        env = cli_env(base or self.base, user, **extra)
        return threads.deferToThread(run_cli, list(args), env, cwd, stdin)


def one_line_error(result: subprocess.CompletedProcess, only: bool = True) -> str:
    """The error of a failed command: a last stderr line ``gridvm: …`` (with ``only``, the
    only line), never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith("gridvm: "), result.stderr
    if only:
        assert len(lines) == 1, result.stderr
    return lines[-1]
