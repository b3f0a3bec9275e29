"""The builder's error type."""

from __future__ import annotations


class BuildError(Exception):
    """An image build failed; ``bad_input`` tells a usage error from a host problem."""

    reason = "IMAGE_UNAVAILABLE"

    def __init__(self, message: str, *, bad_input: bool = False):
        super().__init__(message)
        self.bad_input = bad_input
