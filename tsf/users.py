"""The site's users file: hashed passwords, groups, VOs and a role per user.

JSON, so that ``gridvm serve --add-user`` can rewrite it::

    {"users": {"alice": {"password": "scrypt$16384$8$1$<salt>$<hash>",
                          "groups": ["users"], "vos": ["demo"], "role": "user"}}}

Roles: ``user`` (own jobs, instances and files), ``creator`` (a user who may also register
and change images, within the images' permissions) and ``admin`` (everything).  Passwords are
hashed with scrypt from the standard library; verification takes constant time.  The file is
re-read when it changes, so users can be added while the server runs.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import GridvmError
from base.identity import Caller
from base.reasons import Reason

ROLES = ("user", "creator", "admin")
USER_KEYS = {"password", "groups", "vos", "role", "dn"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


class UsersFileError(GridvmError, ValueError):
    """A users file that cannot be used; the message names the user and the key."""

    reason = Reason.BAD_REQUEST


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


@functools.cache
def dummy_password_hash() -> str:
    """The hash of a random password, checked against when a user name is unknown: a wrong
    name then costs the same scrypt work as a wrong password, so timing reveals no names."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    groups: tuple[str, ...] = ()
    vos: tuple[str, ...] = ()
    role: str = "user"
    dn: str | None = None

    @property
    def caller(self) -> Caller:
        return Caller.of(self.name, self.groups, self.vos, admin=self.role == "admin")

    @property
    def distinguished_name(self) -> str:
        return self.dn or f"CN={self.name},O=gridvm"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"password": self.password_hash, "groups": list(self.groups),
                               "vos": list(self.vos), "role": self.role}
        if self.dn:
            doc["dn"] = self.dn
        return doc


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsersFileError(f"user {name}: {key} must be a list of non-empty strings")
    return tuple(value)


def parse_user(name: str, doc: Any) -> User:
    if not _NAME.match(name):
        raise UsersFileError(f"user name {name!r} is not valid (letters, digits, _.@-)")
    if not isinstance(doc, dict):
        raise UsersFileError(f"user {name}: expected an object")
    unknown = sorted(set(doc) - USER_KEYS)
    if unknown:
        raise UsersFileError(f"user {name}: unknown key {unknown[0]!r}")
    password = doc.get("password")
    if not isinstance(password, str) or not password.startswith("scrypt$"):
        raise UsersFileError(f"user {name}: password must be a scrypt hash "
                             "(use gridvm serve --add-user)")
    role = doc.get("role", "user")
    if role not in ROLES:
        raise UsersFileError(f"user {name}: role must be one of {', '.join(ROLES)}")
    dn = doc.get("dn")
    if dn is not None and not isinstance(dn, str):
        raise UsersFileError(f"user {name}: dn must be a string")
    return User(name, password, _strings(name, "groups", doc.get("groups", [])),
                _strings(name, "vos", doc.get("vos", [])), role, dn)


def parse_users(doc: Any) -> dict[str, User]:
    if not isinstance(doc, dict) or set(doc) - {"users"}:
        raise UsersFileError('a users file is {"users": {name: {...}}}')
    users = doc.get("users", {})
    if not isinstance(users, dict):
        raise UsersFileError('"users" must be an object')
    return {name: parse_user(name, entry) for name, entry in users.items()}


@dataclass
class UsersFile:
    """The users of a site, from a JSON file that is re-read when it changes."""

    path: Path
    _users: dict[str, User] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.reload()

    def reload(self) -> None:
        """Read the file now (a missing file means no users); raises UsersFileError."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._users, self._stamp = {}, None
                return
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                raise UsersFileError(f"{self.path}: {err}") from None
            self._users, self._stamp = parse_users(doc), stamp

    def get(self, name: str) -> User | None:
        with contextlib.suppress(UsersFileError):  # keep the last good version meanwhile
            self.reload()
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)

    def names(self) -> list[str]:
        return sorted(self._users)

    def put(self, user: User) -> None:
        """Add or replace a user and write the file atomically (mode 0600)."""
        self.reload()
        users = {**self._users, user.name: user}
        self._write(users)

    def remove(self, name: str) -> bool:
        self.reload()
        if name not in self._users:
            return False
        self._write({k: v for k, v in self._users.items() if k != name})
        return True

    def _write(self, users: dict[str, User]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"users": {k: v.to_dict() for k, v in sorted(users.items())}}, handle,
                      indent=2)
            handle.write("\n")
        os.replace(temporary, self.path)
        self._stamp = None
        self.reload()
