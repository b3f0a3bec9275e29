"""``gridvm serve`` as a process: users file, start, answer over HTTP and HTTPS, clean stop."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import TEST_ROOT


def gridvm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def state():
    root = TEST_ROOT / f"serve-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    config = root / "site.toml"
    config.write_text(f'[site]\nname = "SERVED"\nstate_dir = "{root}"\n'
                      f'domain_prefix = "gridvm-test-serve-{root.name[-8:]}-"\n'
                      "[http]\nport = 0\n[https]\nport = 0\n")
    yield root, config
    shutil.rmtree(root, ignore_errors=True)


def test_bad_configuration_and_users_are_one_line_errors(state, tmp_path):
    root, config = state
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nprot = 8080\n")
    result = gridvm("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "unknown key http.prot" in result.stderr and "Traceback" not in result.stderr
    bad.write_text("[http]\nport = 'x'\n")
    assert "http.port must be a int" in gridvm("serve", "-c", str(bad)).stderr
    bad.write_text("[transfers]\nurl_prefixes = 'https://x.org/'\n")
    assert "transfers.url_prefixes must be a list" in gridvm("serve", "-c", str(bad)).stderr
    bad.write_text("[transfers]\nurl_prefixes = ['file:///etc/']\n")
    assert "not an http(s) URL prefix" in gridvm("serve", "-c", str(bad)).stderr
    bad.write_text("[transfers]\nurl_prefixes = ['https://data.example.org/']\n")
    shown = gridvm("serve", "-c", str(bad), "--print-config")
    assert shown.returncode == 0 and "https://data.example.org/" in shown.stdout, shown.stderr
    result = gridvm("serve", "-c", str(config), "--add-user", "../x", "--password-stdin",
                    stdin="long enough\n")
    assert result.returncode == 2 and "not valid" in result.stderr
    result = gridvm("serve", "-c", str(config), "--add-user", "carol", "--password-stdin",
                    stdin="short\n")
    assert result.returncode == 2 and "at least 8" in result.stderr
    assert not (root / "users.json").exists()


@pytest.mark.vm
def test_serve_answers_and_shuts_down_cleanly(state):
    root, config = state
    added = gridvm("serve", "-c", str(config), "--add-user", "carol", "--vo", "demo",
                   "--password-stdin", stdin="carol-password\n")
    assert added.returncode == 0, added.stderr
    assert (root / "users.json").stat().st_mode & 0o077 == 0
    process = subprocess.Popen([sys.executable, "-m", "client.cli", "serve", "-c", str(config)],
                               stderr=subprocess.PIPE, text=True)
    try:
        lines, bases = [], []
        deadline = time.monotonic() + 60
        while len(bases) < 2 and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            bases += re.findall(r"REST site listening: (\S+)", line)
        assert len(bases) == 2, "".join(lines)
        for base in bases:
            with httpx.Client(verify=False, timeout=20) as client:
                anonymous = client.get(base).json()
                assert anonymous["client"]["role"]["selected"] == "anonymous"
                mine = client.get(base, auth=("carol", "carol-password")).json()
                assert mine["client"]["xlogin"]["UID"] == "carol"
                assert client.get(base, auth=("carol", "wrong")).status_code == 403
        log = "".join(lines)
        for phase in ("catalogue", "users file", "hypervisor", "factory ready"):
            assert phase in log, log
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[1]
    assert process.returncode == 0, rest
    assert "shut down cleanly" in rest and "Traceback" not in rest
