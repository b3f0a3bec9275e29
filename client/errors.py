"""Errors the CLI reports in one line, and its documented exit codes."""

from __future__ import annotations

from base.errors import GridvmError
from base.reasons import Reason

EXIT_OK = 0
EXIT_FAILED = 1  #: the operation ran and failed (a job FAILED, a VM did not become ready, ...)
EXIT_USAGE = 2  #: bad command line or bad input file
EXIT_NOT_FOUND = 3  #: unknown job, image, file, ...
EXIT_AUTH = 4  #: wrong credentials or not allowed
EXIT_UNAVAILABLE = 5  #: server, libvirt or another service not reachable
EXIT_TIMEOUT = 6  #: a wait ended before the job finished (the job goes on)
EXIT_INTERRUPTED = 130


#: For ``gridvm --help`` and docs/cli.md.
EXIT_CODES = (
    (EXIT_OK, "success (for submit --wait and wait: the job is SUCCESSFUL)"),
    (EXIT_FAILED, "the operation failed: a job FAILED, the server refused an action"),
    (EXIT_USAGE, "bad command line, bad job file or other bad input"),
    (EXIT_NOT_FOUND, "unknown job, file, instance or image; no image matches"),
    (EXIT_AUTH, "not authenticated or not allowed (wrong password, expired token)"),
    (EXIT_UNAVAILABLE, "server not reachable, not a gridvm REST base, TLS failure"),
    (EXIT_TIMEOUT, "--timeout passed before the job finished (it keeps running)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); a submitted job keeps running"),
)


class CliError(GridvmError):
    """A failure shown to the user as ``gridvm: <message>`` with a given exit code.

    ``reason`` is one of the failure codes of architecture.md when one applies.
    """

    reason: Reason | None = None  # type: ignore[assignment]  # a usage error has none

    def __init__(self, message: str, exit_code: int = EXIT_FAILED,
                 reason: Reason | str | None = None):
        super().__init__(message, reason=reason)
        self.exit_code = exit_code

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{self.reason}: {text}" if self.reason else text
