"""The builder's one way of running host tools: output, and a one-line BuildError otherwise."""

from __future__ import annotations

import pytest

from image_builder.errors import BuildError
from image_builder.tools import run_tool


def test_returns_stdout_and_passes_input():
    assert run_tool(["tr", "a-z", "A-Z"], input="grid\n") == "GRID\n"


def test_a_failure_names_the_step_and_the_last_line_of_its_error():
    with pytest.raises(BuildError) as err:
        run_tool(["sh", "-c", "echo first >&2; echo 'the real cause' >&2; exit 3"],
                 label_words=2)
    assert str(err.value) == "sh -c failed: the real cause"


def test_a_failure_without_output_gives_the_exit_code():
    with pytest.raises(BuildError, match=r"^false failed: 1$"):
        run_tool(["false"])


def test_a_missing_tool_says_how_to_get_it():
    with pytest.raises(BuildError, match="no-such-tool-here not found: install it so"):
        run_tool(["no-such-tool-here"], hint="install it so")


def test_a_tool_that_hangs_is_stopped_at_its_deadline():
    with pytest.raises(BuildError, match=r"sleep did not finish within 0.2 s"):
        run_tool(["sleep", "5"], timeout=0.2)
