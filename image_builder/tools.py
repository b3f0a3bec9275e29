"""Running the build host's tools: one way to start them, time them out and report failures."""

from __future__ import annotations

import subprocess

from image_builder.errors import BuildError

SETUP_HINT = "scripts/setup-host.sh installs it"


def run_tool(cmd: list[str], *, timeout: float = 600, hint: str = SETUP_HINT,
             label_words: int = 1, **kwargs) -> str:
    """Run ``cmd`` and return its stdout; any failure is a :class:`BuildError` in one line.

    ``hint`` says how to get a missing tool; ``label_words`` is how much of the command line
    names the step in the message (``apt-get -s -q failed: …``); ``kwargs`` go to
    :func:`subprocess.run` (``cwd``, ``input``).
    """
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError as err:
        raise BuildError(f"{cmd[0]} not found: {hint}") from err
    except subprocess.TimeoutExpired as err:
        raise BuildError(f"{cmd[0]} did not finish within {timeout:g} s") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        label = " ".join(cmd[:label_words])
        raise BuildError(f"{label} failed: {detail[-1] if detail else result.returncode}")
    return result.stdout
