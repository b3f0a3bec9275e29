"""Where the CLI finds its server and credentials: flags, then environment, then config file.

The config file is TOML (``url``, ``user``, ``password``, ``token``, ``insecure``,
``timeout``) at ``$GRIDVM_CONFIG``, else ``$XDG_CONFIG_HOME/gridvm/client.toml`` (default
``~/.config/gridvm/client.toml``).  A file that holds a password or token and can be read by
others is used, with a warning.  Environment: ``GRIDVM_URL``, ``GRIDVM_USER``,
``GRIDVM_PASSWORD``, ``GRIDVM_TOKEN``, ``GRIDVM_INSECURE`` (1/true/yes).
"""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.errors import EXIT_AUTH, EXIT_USAGE, CliError

KEYS = ("url", "user", "password", "token", "insecure", "timeout")
SECRETS = ("password", "token")
ENVIRONMENT = {"url": "GRIDVM_URL", "user": "GRIDVM_USER", "password": "GRIDVM_PASSWORD",
               "token": "GRIDVM_TOKEN", "insecure": "GRIDVM_INSECURE"}
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def config_path() -> Path:
    explicit = os.environ.get("GRIDVM_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gridvm" / "client.toml"


@dataclass
class Settings:
    """The effective connection settings; ``sources`` says where each value came from."""

    url: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    insecure: bool = False
    timeout: float = 60.0
    path: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, source: str) -> None:
        setattr(self, key, value)
        self.sources[key] = source

    def shown(self) -> dict[str, Any]:
        """What ``gridvm config`` prints: secrets only as "set"."""
        doc: dict[str, Any] = {"config_file": str(self.path) if self.path else None}
        for key in KEYS:
            value = getattr(self, key)
            if key in SECRETS:
                value = "(set)" if value else None
            doc[key] = {"value": value, "source": self.sources.get(key, "default")}
        return doc

    def site(self):
        """A :class:`client.api.Site` for these settings (asks for a missing password on a
        terminal)."""
        from client.api import Site

        if not self.url:
            raise CliError("no server URL: use --url, GRIDVM_URL or 'url' in "
                           f"{config_path()}", EXIT_USAGE)
        if self.user and not self.password and not self.token:
            if not sys.stdin.isatty():
                raise CliError(f"no password for {self.user}: use --password-stdin, "
                               "GRIDVM_PASSWORD or a token", EXIT_AUTH)
            self.password = getpass.getpass(f"password for {self.user} at {self.url}: ")
        return Site(self.url, self.user, self.password, token=self.token,
                    verify=not self.insecure, timeout=self.timeout)


def _boolean(key: str, value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise CliError(f"{source}: {key} must be true or false, not {value!r}", EXIT_USAGE)


def _read_file(path: Path, settings: Settings) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            doc = tomllib.load(handle)
            mode = os.fstat(handle.fileno()).st_mode
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise CliError(f"{path}: {err.strerror}", EXIT_USAGE) from None
    except tomllib.TOMLDecodeError as err:
        raise CliError(f"{path}: not valid TOML: {err}", EXIT_USAGE) from None
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise CliError(f"{path}: unknown key {unknown[0]!r} (keys: {', '.join(KEYS)})",
                       EXIT_USAGE)
    for key in ("url", "user", "password", "token"):
        if key in doc and not isinstance(doc[key], str):
            raise CliError(f"{path}: {key} must be a string", EXIT_USAGE)
    if "timeout" in doc and (isinstance(doc["timeout"], bool)
                             or not isinstance(doc["timeout"], int | float)
                             or doc["timeout"] <= 0):
        raise CliError(f"{path}: timeout must be a positive number of seconds", EXIT_USAGE)
    if any(doc.get(k) for k in SECRETS) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        settings.warnings.append(f"{path} holds a secret but has mode "
                                 f"{stat.S_IMODE(mode):04o}; run: chmod 600 {path}")
    return doc


def load_settings(args: argparse.Namespace | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Defaults < config file < environment < command-line flags."""
    env = os.environ if environ is None else environ
    args = args or argparse.Namespace()
    settings = Settings()
    path = Path(getattr(args, "config", None) or config_path()).expanduser()
    settings.path = path
    for key, value in _read_file(path, settings).items():
        if key == "insecure":
            value = _boolean(key, value, str(path))
        settings.set(key, value, f"file {path}")
    for key, name in ENVIRONMENT.items():
        if env.get(name) not in (None, ""):
            value = env[name]
            if key == "insecure":
                value = _boolean(name, value, "environment")
            settings.set(key, value, f"env {name}")
    if getattr(args, "url", None):
        settings.set("url", args.url, "flag --url")
    if getattr(args, "user", None):
        settings.set("user", args.user, "flag --user")
        if settings.sources.get("token", "").startswith(("file", "env")) and \
                not getattr(args, "token", None):
            settings.set("token", None, "flag --user")  # an explicit user wins over a token
    if getattr(args, "password_stdin", False):
        settings.set("password", sys.stdin.readline().rstrip("\r\n"), "flag --password-stdin")
        settings.set("token", None, "flag --password-stdin")
    if getattr(args, "token", None):
        token = args.token
        if token == "-":
            token = sys.stdin.readline().strip()
        settings.set("token", token, "flag --token")
    if getattr(args, "insecure", False):
        settings.set("insecure", True, "flag --insecure")
    return settings


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every command that talks to a server accepts (before or after the command).

    Defaults are suppressed so that a flag given before the sub-command is not reset by
    the sub-command's own parser."""
    group = parser.add_argument_group("connection (override environment and config file)")
    group.add_argument("--url", default=argparse.SUPPRESS, metavar="URL",
                       help="the site's REST base, e.g. https://host:8443/GRIDVM/rest/core")
    group.add_argument("--user", default=argparse.SUPPRESS, metavar="NAME")
    group.add_argument("--password-stdin", action="store_true", default=argparse.SUPPRESS,
                       help="read the password from the first line of stdin")
    group.add_argument("--token", default=argparse.SUPPRESS, metavar="TOKEN",
                       help="a bearer token ('-' reads it from stdin; prefer GRIDVM_TOKEN)")
    group.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS,
                       help="do not verify the server's TLS certificate")
    group.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                       help=f"client config file (default: {_display(config_path())})")


def _display(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + "/") else text


def connect(args: argparse.Namespace):
    """The Site the command line, environment and config file name (warnings on stderr)."""
    settings = load_settings(args)
    for warning in settings.warnings:
        print(f"gridvm: warning: {warning}", file=sys.stderr)
    return settings.site()
