"""The CLI's contract: help works, bad usage exits 2 with a one-line reason."""

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_help_lists_command_groups():
    result = run("--help")
    assert result.returncode == 0
    assert "image" in result.stdout


def test_unknown_command_exits_2():
    result = run("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr
