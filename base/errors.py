"""The error base of gridvm: every package's errors derive from :class:`GridvmError`."""

from __future__ import annotations

from base.reasons import Reason


class GridvmError(Exception):
    """A failure with a :class:`Reason` and a one-line human ``message``.

    Subclasses set a class-level default ``reason``; an instance may carry another one.
    ``str(err)`` is the message (subclasses may prefix it, e.g. with the offending key).
    """

    reason: Reason = Reason.INTERNAL_ERROR

    def __init__(self, message: str = "", *, reason: Reason | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = Reason(reason)

    def __str__(self) -> str:
        return self.message
