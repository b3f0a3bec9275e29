"""``gridvm serve`` as a process: users file, start, answer over HTTP and HTTPS, clean stop."""

from __future__ import annotations

import json
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
    return subprocess.run([sys.executable, "-m", "gridvm", *args], input=stdin,
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
    for text, complaint in (
            ("[http]\nport = 'x'\n", "http.port must be a int"),
            ("[transfers]\nurl_prefixes = 'https://x.org/'\n",
             "transfers.url_prefixes must be a list"),
            ("[transfers]\nurl_prefixes = ['file:///etc/']\n", "not an http(s) URL prefix"),
            ("pools = 3\n", "array of tables"),
            ("[[pools]]\nname = 'atlas'\n", "pool 'atlas' names no image"),
            ("[[pools]]\nname = 'atlas'\nimage = 'w'\nidle = 'two'\n",
             "pools[0].idle must be a int")):
        bad.write_text(text)
        result = gridvm("serve", "-c", str(bad))
        assert result.returncode == 2 and complaint in result.stderr, (text, result.stderr)
    bad.write_text("[transfers]\nurl_prefixes = ['https://data.example.org/']\n"
                   "[[pools]]\nname = 'atlas'\nimage = 'w'\nvos = ['atlas']\n")
    shown = gridvm("serve", "-c", str(bad), "--print-config")
    assert shown.returncode == 0, shown.stderr
    effective = json.loads(shown.stdout)
    assert effective["transfers"]["url_prefixes"] == ["https://data.example.org/"]
    assert effective["pools"] == [{"name": "atlas", "image": "w", "idle": 1, "vcpus": 1,
                                   "memory_mib": 256, "vos": ["atlas"]}]
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
    process = subprocess.Popen([sys.executable, "-m", "gridvm", "serve", "-c", str(config)],
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
