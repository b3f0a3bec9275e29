"""A tiny logger to stderr (the ``logging`` package costs start-up time in an emulated guest)."""

from __future__ import annotations

import sys
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_threshold = LEVELS["info"]


def set_level(name: str) -> None:
    global _threshold
    _threshold = LEVELS[name]


def debugging() -> bool:
    return _threshold <= LEVELS["debug"]


def log(level: str, message: str) -> None:
    if LEVELS[level] >= _threshold:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f"{stamp} gridvm-tsi {level.upper()} {message}\n")
        sys.stderr.flush()


def debug(message: str) -> None:
    log("debug", message)


def info(message: str) -> None:
    log("info", message)


def warning(message: str) -> None:
    log("warning", message)


def error(message: str) -> None:
    log("error", message)
