"""The builder's error type."""

from __future__ import annotations

from base.errors import GridvmError
from base.reasons import Reason


class BuildError(GridvmError):
    """An image build failed; ``bad_input`` tells a usage error from a host problem."""

    reason = Reason.IMAGE_UNAVAILABLE

    def __init__(self, message: str, *, bad_input: bool = False):
        super().__init__(message, reason=Reason.BAD_REQUEST if bad_input else None)
        self.bad_input = bad_input
