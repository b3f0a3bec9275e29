"""The agent's configuration: a JSON file (see docs/tsi-bridge.md) plus command-line flags.

Unknown keys are errors that name the key; relative TLS file paths are relative to the config
file's directory.
"""

from __future__ import annotations

import json
import os

TIMEOUT_DEFAULTS = {
    "handshake": 10.0,        # TLS handshake + first line on the shepherd port
    "idle": 3600.0,           # an idle worker (no request) is closed after this
    "request": 60.0,          # a started request must be complete within this
    "transfer": 60.0,         # a data-channel stall during a file chunk ends the worker
    "callback_connect": 10.0,  # connecting back to the server
    "script": 600.0,          # EXECUTESCRIPT run time
    "abort_grace": 5.0,       # SIGTERM -> SIGKILL for aborted and over-time jobs
}

DEFAULTS: dict[str, object] = {
    "listen_address": "0.0.0.0",
    "listen_port": 4433,
    "callback_host": None,     # None: call back to the peer address (like the official TSI)
    "callback_port": None,     # None: the port named in "newtsiprocess <port>"
    "allowed_peers": [],       # empty: any peer (TLS does the authentication)
    "tls": None,               # {"cert", "key", "ca", "peer_cert"}
    "switch_uid": True,        # only effective when the agent runs as root
    "job_user": None,          # privileged: run every request as this user (None: the identity)
    "job_group": None,
    "user_helpers": True,      # privileged: file work as the user in kept helpers, not forks
    "workdir_root": "/tmp",
    "confine_paths": False,    # refuse file paths outside workdir_root
    "state_dir": "/var/lib/gridvm-tsi",
    "timeouts": TIMEOUT_DEFAULTS,
    "max_connections": 64,
    "max_chunk": 64 * 1024 * 1024,
    "job_nice": 10,
    "shell": None,             # None: /bin/bash if present, else /bin/sh
    "environment": {},         # extra environment for jobs and scripts
    "record_ttl": 7 * 24 * 3600.0,
    "port_file": None,         # write the bound port here (handy with listen_port 0)
    "log_level": "info",
}

TLS_KEYS = ("cert", "key", "ca", "peer_cert")


class ConfigError(ValueError):
    """The configuration is unusable; the message names the offending key."""


class Config:
    """Validated settings, read as attributes (``config.listen_port``, ``config.timeouts``)."""

    def __init__(self, values: dict[str, object], base_dir: str = ".") -> None:
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown configuration key: {unknown[0]}")
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in values.items() if v is not None or k == "tls"})
        timeouts = dict(TIMEOUT_DEFAULTS)
        given = merged["timeouts"] or {}
        if not isinstance(given, dict):
            raise ConfigError("timeouts must be an object")
        for key, value in given.items():
            if key not in TIMEOUT_DEFAULTS:
                raise ConfigError(f"unknown configuration key: timeouts.{key}")
            timeouts[key] = _number(f"timeouts.{key}", value, positive=True)
        merged["timeouts"] = timeouts
        for key in ("listen_port", "max_connections", "max_chunk", "job_nice"):
            merged[key] = int(_number(key, merged[key]))
        if merged["callback_port"] is not None:
            merged["callback_port"] = int(_number("callback_port", merged["callback_port"]))
        if not 0 <= merged["listen_port"] <= 65535:
            raise ConfigError("listen_port must be between 0 and 65535")
        if merged["log_level"] not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")
        if not isinstance(merged["allowed_peers"], list):
            raise ConfigError("allowed_peers must be a list of IP addresses")
        if not isinstance(merged["environment"], dict):
            raise ConfigError("environment must be an object")
        merged["tls"] = _tls(merged["tls"], base_dir)
        if not merged["shell"]:
            merged["shell"] = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        merged["workdir_root"] = os.path.abspath(str(merged["workdir_root"]))
        merged["state_dir"] = os.path.abspath(os.path.join(base_dir, str(merged["state_dir"])))
        self.__dict__.update(merged)

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, object]) -> Config:
        values: dict[str, object] = {}
        base_dir = os.getcwd()
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    values = json.load(handle)
            except OSError as err:
                raise ConfigError(f"cannot read {path}: {err.strerror}") from err
            except ValueError as err:
                raise ConfigError(f"{path} is not valid JSON: {err}") from err
            if not isinstance(values, dict):
                raise ConfigError(f"{path} must hold a JSON object")
            base_dir = os.path.dirname(os.path.abspath(path))
        for key, value in overrides.items():
            if key.startswith("timeouts."):
                values.setdefault("timeouts", {})
                values["timeouts"][key.split(".", 1)[1]] = value  # type: ignore[index]
            elif key.startswith("tls."):
                values["tls"] = dict(values.get("tls") or {})
                values["tls"][key.split(".", 1)[1]] = value  # type: ignore[index]
            else:
                values[key] = value
        return cls(values, base_dir)


def _number(key: str, value: object, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key} must be a number")
    try:
        number = float(value)
    except ValueError as err:
        raise ConfigError(f"{key} must be a number, not {value!r}") from err
    if positive and number <= 0:
        raise ConfigError(f"{key} must be positive")
    return number


def _tls(value: object, base_dir: str) -> dict[str, str] | None:
    if not value:
        return None
    if not isinstance(value, dict):
        raise ConfigError("tls must be an object with cert, key, ca and optionally peer_cert")
    unknown = sorted(set(value) - set(TLS_KEYS))
    if unknown:
        raise ConfigError(f"unknown configuration key: tls.{unknown[0]}")
    tls = {}
    for key in TLS_KEYS:
        path = value.get(key)
        if not path:
            if key == "peer_cert":
                continue
            raise ConfigError(f"tls.{key} is required when TLS is configured")
        path = os.path.join(base_dir, str(path))
        if not os.path.isfile(path):
            raise ConfigError(f"tls.{key}: no such file {path}")
        tls[key] = path
    return tls
