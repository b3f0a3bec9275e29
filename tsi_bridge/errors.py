"""Errors of the TSI client; each carries a ``reason`` code from architecture.md."""

from __future__ import annotations

from base.errors import GridvmError
from base.reasons import Reason


class TSIError(GridvmError):
    """Base class: ``reason`` (an architecture code) and ``message`` (the details)."""

    reason = Reason.TSI_ERROR

    def __init__(self, message: str, reason: Reason | str | None = None) -> None:
        super().__init__(message, reason=reason or None)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class TSICommandFailed(TSIError):
    """The TSI answered ``TSI_FAILED: <message>``; the worker stays usable."""

    reason = Reason.TSI_ERROR


class TSIConnectionLost(TSIError):
    """A worker's connection broke, timed out or desynchronised (the worker is discarded)."""

    reason = Reason.TSI_LOST


class TSIUnreachable(TSIError):
    """No worker could be created: the shepherd did not answer, refused, or never called back."""

    reason = Reason.TSI_UNREACHABLE
