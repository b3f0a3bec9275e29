"""GuestFiles' path checks, run by a real shell as the guest's TSI would run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from target_system.jobfiles import FileMissing, GuestFiles, PathError


class ShellTSI:
    """What GuestFiles asks of a TSI link, with scripts run by the local bash."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}

    async def execute_script(self, script: str) -> str:
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              env=self.env, timeout=30)
        return done.stdout + done.stderr

    async def ls(self, path: str, mode: str):
        return []


def _remove_during_check(tmp_path: Path, workdir: Path) -> dict[str, str]:
    """A ``readlink`` on PATH that removes the job directory first: the runner's tidy-up
    after stage-out landing between the script's ``cd`` and its check."""
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "readlink"
    real = subprocess.run(["bash", "-c", "command -v readlink"], capture_output=True,
                          text=True, check=True).stdout.strip()
    shim.write_text(f'#!/bin/sh\nrm -rf "{workdir}"\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{shims}:{os.environ['PATH']}"}


@pytest_twisted.ensureDeferred
async def test_a_symlink_out_of_the_job_directory_is_refused(tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "outside").symlink_to("/etc")
    with pytest.raises(PathError, match="leads outside the job directory"):
        await GuestFiles(ShellTSI(), str(workdir)).stat("outside/passwd")


@pytest_twisted.ensureDeferred
async def test_a_directory_removed_while_checked_is_missing_not_outside(tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "stdout").write_text("started\n")
    files = GuestFiles(ShellTSI(_remove_during_check(tmp_path, workdir)), str(workdir))
    with pytest.raises(FileMissing):  # the REST layer then reads site storage instead
        await files.stat("stdout")
