"""What needs no server: configuration precedence and secrets, completion, help, the
requirement mapping and the phase of a job."""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from client.errors import EXIT_USAGE
from client.progress import Progress, phase_of
from client.requirements import apply_requirements
from tests.client.conftest import cli_env, one_line_error, run_cli


def test_config_precedence_flag_env_file_and_no_secrets(tmp_path):
    config = tmp_path / "client.toml"
    config.write_text('url = "https://file.example/S/rest/core"\nuser = "carol"\n'
                      'password = "file-secret"\ntimeout = 5\n')
    config.chmod(0o644)
    env = cli_env(None, None, GRIDVM_CONFIG=str(config), GRIDVM_USER="dave",
                  GRIDVM_TOKEN="env-token-secret")
    result = run_cli(["config", "--json", "--url", "http://127.0.0.1:1/F/rest/core"], env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["url"] == {"value": "http://127.0.0.1:1/F/rest/core", "source": "flag --url"}
    assert shown["user"] == {"value": "dave", "source": "env GRIDVM_USER"}
    assert shown["password"]["value"] == "(set)" and shown["token"]["value"] == "(set)"
    assert shown["timeout"] == {"value": 5, "source": f"file {config}"}
    assert "secret" not in result.stdout
    assert "chmod 600" in result.stderr  # the file holds a password and others may read it

    config.chmod(0o600)
    quiet = run_cli(["config"], env)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "secret" not in quiet.stdout and "(env GRIDVM_USER)" in quiet.stdout

    config.write_text('url = "x"\ncolour = "blue"\n')
    bad = run_cli(["config"], env)
    assert bad.returncode == EXIT_USAGE and "colour" in one_line_error(bad)


def test_password_stdin_and_missing_password(tmp_path):
    env = cli_env(None, None, GRIDVM_URL="http://127.0.0.1:1/F/rest/core", GRIDVM_USER="eve")
    shown = run_cli(["config", "--json", "--password-stdin"], env, stdin="typed secret\n")
    assert json.loads(shown.stdout)["password"] == {"value": "(set)",
                                                   "source": "flag --password-stdin"}
    nopass = run_cli(["jobs"], env, stdin="")
    assert nopass.returncode == 4 and "no password for eve" in one_line_error(nopass)


def test_help_documents_exit_codes():
    result = run_cli(["--help"], cli_env(None, None))
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "  3   unknown job" in result.stdout


def complete(script: str, words: list[str]) -> list[str]:
    line = " ".join(words)
    program = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               '_gridvm; printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.split()


@pytest.mark.parametrize(("words", "expected"), [
    (["gridvm", "su"], ["submit"]),
    (["gridvm", "image", "se"], ["search"]),
    (["gridvm", "submit", "--wa"], ["--wait"]),
    (["gridvm", "image", "search", "--req"], ["--require"]),
    (["gridvm", "image", ""], ["list", "search", "register", "new-version", "app", "deprecate",
                              "activate", "delete", "endorse", "export", "import",
                              "withdraw"]),
    (["gridvm", "cat"], ["catalogue"]),
    (["gridvm", "catalogue", "build", "--kind", "q"], ["qcow2"]),
    (["gridvm", "completion", ""], ["bash"]),
    (["gridvm", "catalogue", "end"], ["endorse"]),
    (["gridvm", "catalogue", "w"], ["withdraw"]),
    (["gridvm", "catalogue", "verify", "--an"], ["--anchors"]),
    (["gridvm", "catalogue", "match", "--require-e"], ["--require-endorsement"]),
    (["gridvm", "catalogue", "endorse", "--ke"], ["--key", "--key-password-stdin"]),
])
def test_bash_completion(words, expected):
    result = run_cli(["completion", "bash"], cli_env(None, None))
    assert result.returncode == 0
    check = subprocess.run(["bash", "-n"], input=result.stdout, text=True)
    assert check.returncode == 0
    assert complete(result.stdout, words) == expected


def test_requirement_keys_map_to_the_job_description():
    doc = apply_requirements(
        {"Executable": "x", "Resources": {"TotalCPUs": 4, "MemoryPerNode": "1G"}},
        ["os=debian", "os_version=>=12", "arch=x86_64", "cpus=2", "memory=512M",
         "runtime=10min", "image=img:2", "vo=demo", "app=python3:3.11", "disk=2G"])
    assert doc == {"Executable": "x", "ApplicationName": "python3",
                   "ApplicationVersion": "3.11",
                   "Resources": {"OperatingSystem": "debian", "OperatingSystemVersion": ">=12",
                                 "CPUArchitecture": "x86_64", "CPUs": 2, "Memory": "512M",
                                 "Runtime": "10min", "Image": "img:2", "VO": "demo",
                                 "Disk": "2G"}}


def test_phase_of_a_job():
    instance = {"gridvm": {"instance": "abc"}}
    assert phase_of({"status": "READY", "gridvm": {}}, None) == "matching"
    booting = {"status": "READY", "gridvm": {"instance": None},
               "log": ["2026-01-01T00:00:00 booting instance 0123456789ab (1 vCPU, 512 MiB)"]}
    assert phase_of(booting, {"state": "STAGING"}) == "staging"
    assert phase_of({"status": "READY", **instance}, {"state": "BOOTING"}) == "booting"
    assert phase_of({"status": "READY", **instance}, {"state": "CONNECTING"}) == "connecting"
    assert phase_of({"status": "RUNNING", **instance}, {"state": "BUSY"}) == "running"
    assert phase_of({"status": "FAILED", **instance}, None) == "failed"


class _JobHandle:
    """What Progress asks of a job handle: its id and its instance's properties."""

    id = "j1"

    def __init__(self, instance: dict):
        self._instance = instance

    def instance(self) -> dict:
        return self._instance


def test_progress_shows_matching_even_when_the_first_poll_sees_the_instance():
    stream = io.StringIO()
    progress = Progress(_JobHandle({"state": "BOOTING", "image": "img",
                                    "phases": {"STAGING": 0.2}}),
                        stream, tty=False, clock=lambda: 0.0)
    progress.update({"status": "READY", "gridvm": {"instance": "abc"}})
    progress.update({"status": "RUNNING", "gridvm": {"instance": "abc"}})
    progress.finish({"status": "SUCCESSFUL", "exitCode": "0"})
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == ["matching", "instance abc (img), BOOTING", "staging (matching took 0.0s)",
                     "booting (staging took 0.2s)", "running (booting took 0.0s)",
                     "job j1 SUCCESSFUL (exit code 0): matching 0.0s, staging 0.2s, "
                     "booting 0.0s, running 0.0s"]


def test_progress_shows_a_stage_out_passed_between_two_polls_with_the_servers_time():
    stream = io.StringIO()
    progress = Progress(_JobHandle({"state": "BUSY", "image": "img", "phases": {}}),
                        stream, tty=False, clock=lambda: 0.0)
    progress.update({"status": "RUNNING", "gridvm": {"instance": "abc"}})
    done = {"status": "SUCCESSFUL", "exitCode": "0", "gridvm": {"instance": "abc"},
            "consumedTime": {"RUNNING": 1.25, "STAGINGOUT": 0.3}}
    progress.update(done)
    progress.finish(done)
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert "stage-out (running took 1.2s)" in lines, lines
    assert lines[-1].endswith("running 1.2s, stage-out 0.3s"), lines
    assert not any(line.startswith("queued") for line in lines)  # no time: not shown
