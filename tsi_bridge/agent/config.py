"""The agent's configuration: a JSON file (see docs/tsi-bridge.md) plus command-line flags,
or the official UNICORE TSI's ``tsi.properties`` (:func:`properties_values`).

Unknown keys are errors that name the key; relative TLS file paths are relative to the config
file's directory.
"""

from __future__ import annotations

import json
import os
import re
import socket

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
    "readiness_line": True,    # answer "ping gridvm" (the official TSI does not)
    "allowed_dns": [],         # subjects the TLS peer may have (empty: any the CA issued)
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
        if not isinstance(merged["allowed_dns"], list):
            raise ConfigError("allowed_dns must be a list of distinguished names")
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


PROPERTY_LINE = re.compile(r"\s*([a-zA-Z0-9.\-_/]+)\s*=\s*(.*)$")  # as the official TSI
#: where a site that starts the agent like the official TSI says where to call back
CALLBACK_HOST_VARIABLE = "GRIDVM_TSI_CALLBACK_HOST"


def read_properties(path: str) -> dict[str, str]:
    """``key=value`` lines of a properties file, read the way the official TSI reads them."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    found = {}
    for line in lines:
        match = PROPERTY_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def properties_values(props: dict[str, str], environ: dict[str, str]) -> dict[str, object]:
    """Agent settings from the official TSI's keys: ``tsi.my_addr``/``tsi.my_port`` to
    listen on, ``tsi.unicorex_machine`` (the hosts allowed to connect), ``tsi.unicorex_port``,
    ``tsi.keystore``/``tsi.certificate``/``tsi.truststore`` (mutual TLS when a keystore is
    set), ``tsi.allowed_dn.N``, ``tsi.debug``.  Other keys are ignored, as the official TSI
    keeps them unused.  Like the official TSI it calls back to the peer's address unless
    ``GRIDVM_TSI_CALLBACK_HOST`` names another, and answers no readiness line."""
    values: dict[str, object] = {
        "listen_address": props.get("tsi.my_addr") or "0.0.0.0",
        "listen_port": props.get("tsi.my_port") or 4433,
        "callback_port": props.get("tsi.unicorex_port") or None,
        "callback_host": environ.get(CALLBACK_HOST_VARIABLE) or None,
        "allowed_peers": _addresses(props.get("tsi.unicorex_machine", "")),
        "allowed_dns": [v for k, v in sorted(props.items()) if k.startswith("tsi.allowed_dn.")],
        "readiness_line": False,
        "log_level": "debug" if props.get("tsi.debug", "0").lower() in ("1", "true") else "info",
    }
    if props.get("tsi.keystore"):
        values["tls"] = {"key": props["tsi.keystore"], "cert": props.get("tsi.certificate"),
                         "ca": props.get("tsi.truststore")}
    return values


def _addresses(machines: str) -> list[str]:
    found: list[str] = []
    for machine in (m.strip() for m in machines.split(",")):
        if not machine:
            continue
        try:
            infos = socket.getaddrinfo(machine, 0, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as err:
            raise ConfigError(f"tsi.unicorex_machine: cannot resolve {machine!r}") from err
        found += [info[4][0] for info in infos if info[4][0] not in found]
    return found


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
