"""Errors of the TSI client; each carries a ``reason`` code from architecture.md."""

from __future__ import annotations


class TSIError(Exception):
    """Base class: ``reason`` (an architecture code) and ``message`` (the details)."""

    reason = "TSI_ERROR"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class TSICommandFailed(TSIError):
    """The TSI answered ``TSI_FAILED: <message>``; the worker stays usable."""

    reason = "TSI_ERROR"


class TSIConnectionLost(TSIError):
    """A worker's connection broke, timed out or desynchronised (the worker is discarded)."""

    reason = "TSI_LOST"


class TSIUnreachable(TSIError):
    """No worker could be created: the shepherd did not answer, refused, or never called back."""

    reason = "TSI_UNREACHABLE"
