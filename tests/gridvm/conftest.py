"""Fixtures of the entry package's tests: the catalogue commands run against the catalogue
fixtures of tests/image_repo (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.image_repo.conftest import build_dir, database_url, pki  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def catalogue(database_url, tmp_path):  # noqa: F811  (the fixture imported above)
    """Run ``gridvm catalogue …`` in a subprocess against this test's catalogue and a private
    GRIDVM_HOME; ``stdin`` is the command's input.  PYTHONPATH pins the code to this tree
    (the virtualenv's editable install may point at another checkout)."""
    env = {**os.environ, "GRIDVM_HOME": str(tmp_path / "home"), "GRIDVM_DB_URL": database_url,
           "PYTHONPATH": str(ROOT)}

    def run(*args: str, cwd: Path = tmp_path,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "gridvm", "catalogue", *args],
                                capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
                                input=stdin, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode != 0:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result

    run.env = env
    return run
