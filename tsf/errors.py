"""The factory's domain errors; the REST app maps them to HTTP (``tsf.rest.app``)."""

from __future__ import annotations

from base.errors import GridvmError
from base.reasons import Reason


class NotFound(GridvmError, KeyError):
    """No such job, instance or site — or not the caller's (the two look the same)."""

    reason = Reason.NOT_FOUND


class InstanceBusy(GridvmError):
    """An instance that still has jobs was asked to end without force."""

    reason = Reason.BAD_REQUEST


class ClusterBusy(GridvmError):
    """A cluster that is starting, scaling or stopping was asked to scale (HTTP 409)."""

    reason = Reason.BAD_REQUEST


class TerminationRefused(GridvmError, ValueError):
    """A termination time the site does not accept (past, or beyond one job lifetime)."""

    reason = Reason.BAD_REQUEST


class ImportRefused(GridvmError):
    """A server-side import this site will not fetch (names no file of a job of the
    caller's); the message starts with the key, ``Imports[i].From``."""

    reason = Reason.BAD_REQUEST
