"""The README's main job (``make demo``): a real VM, a job over REST, its output printed."""

import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_ROOT

pytestmark = pytest.mark.vm


def test_demo_runs_the_main_job_end_to_end():
    home = TEST_ROOT / "demo-home"
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "gridvm", "demo"],
                            env={**os.environ, "GRIDVM_HOME": str(home)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[job]  SUCCESSFUL" in out
    assert "Hello from gridvm running Linux" in out
    assert "input says: hello from the submitting host" in out
    assert "as user gridvm" in out
    assert "vm  booting" in out and "total" in out
    assert "Traceback" not in result.stderr
