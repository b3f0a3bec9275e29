"""Who is calling: Basic (users file) or Bearer (tokens this site issued), else anonymous.

UNICORE's rules: no credentials → the anonymous role (the base resource answers, everything
else is refused); wrong credentials → 403.  Tokens are JWTs (HS256, PyJWT) signed with a
site secret kept in the state directory; they name the user, who must still be in the users
file, and each of their three parts must be canonical base64url (no padding, no spare bits),
so a token has exactly one spelling.  Password checks use scrypt in a thread — against a
dummy hash when the user name is unknown, so both failures take as long — and failed logins
are barred per source address and per user name (:mod:`tsf.rest.backoff`, 429).  A
successful check is remembered for a short time (keyed by a hash of the header) so that
clients sending Basic on every request stay fast.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt
from twisted.internet import threads

from base.identity import Caller
from base.reasons import Reason
from tsf.rest.backoff import LoginBackoff
from tsf.rest.http import RestError
from tsf.users import User, UsersFile, dummy_password_hash, verify_password

ANONYMOUS = "anonymous"
#: Characters of a user name the failed-login backoff keys on (users' names are shorter).
_MAX_NAME = 64


@dataclass(frozen=True)
class Principal:
    """An authenticated user (or the anonymous caller) and how they authenticated."""

    user: User | None
    method: str  #: BASIC, BEARER or NONE
    token_renewable: bool = True

    @property
    def anonymous(self) -> bool:
        return self.user is None

    @property
    def role(self) -> str:
        return ANONYMOUS if self.user is None else self.user.role

    @property
    def caller(self) -> Caller:
        if self.user is None:
            raise RestError(401, "authentication required: send Basic or Bearer credentials",
                            Reason.NOT_AUTHORIZED, {"WWW-Authenticate": 'Basic realm="gridvm"'})
        return self.user.caller


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _canonical_base64url(segment: str) -> bool:
    """Whether ``segment`` is the one unpadded base64url spelling of the bytes it stands for
    (a spare ``=`` or changed unused low bits would otherwise decode to the same bytes)."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        return False
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode() == segment


class TokenIssuer:
    """HS256 JWTs: ``sub``, ``iss`` (the site), ``iat``, ``exp``, ``renewable``."""

    def __init__(self, secret: bytes, issuer: str, default_lifetime: int = 3600 * 12,
                 max_lifetime: int = 86400 * 7):
        self.secret, self.issuer = secret, issuer
        self.default_lifetime, self.max_lifetime = default_lifetime, max_lifetime

    @classmethod
    def load_or_create(cls, path: Path, issuer: str, **options) -> TokenIssuer:
        """The secret from ``path``, created (mode 0600) on first use."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        return cls(path.read_bytes(), issuer, **options)

    def issue(self, user: str, lifetime: int | None = None, renewable: bool = False) -> str:
        lifetime = self.default_lifetime if not lifetime or lifetime <= 0 else min(
            lifetime, self.max_lifetime)
        now = int(time.time())
        claims = {"sub": user, "iss": self.issuer, "iat": now, "exp": now + lifetime}
        if renewable:
            claims["renewable"] = True
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> dict:
        """The claims of a valid token; raises ValueError with the reason otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or not all(_canonical_base64url(part) for part in parts):
            raise ValueError("invalid token (three canonical base64url parts expected)")
        try:
            return jwt.decode(token, self.secret, algorithms=["HS256"], issuer=self.issuer,
                              options={"require": ["sub", "iss", "exp"]})
        except jwt.ExpiredSignatureError:
            raise ValueError("token expired") from None
        except jwt.InvalidIssuerError:
            raise ValueError("token issued by another site") from None
        except jwt.InvalidTokenError:
            raise ValueError("invalid token") from None


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal` (or 403, or 429 while
    the caller's source address or user name is barred for failed logins)."""

    def __init__(self, users: UsersFile, tokens: TokenIssuer, cache_seconds: float = 60.0,
                 cache_size: int = 1024, backoff: LoginBackoff | None = None):
        self.users, self.tokens = users, tokens
        self.cache_seconds, self.cache_size = cache_seconds, cache_size
        self.backoff = backoff if backoff is not None else LoginBackoff()
        self._verified: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        dummy_password_hash()  # made now, so that the first unknown name costs no more

    async def authenticate(self, header: bytes | None, source: str | None = None
                           ) -> Principal:
        """``source``: the client's address, for the failed-login backoff."""
        if not header:
            return Principal(None, "NONE")
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            return await self._basic(value, source)
        if scheme.lower() == "bearer":
            return self._bearer(value)
        raise RestError(403, f"unsupported authentication scheme {scheme!r}: use Basic or "
                             "Bearer", Reason.NOT_AUTHORIZED)

    async def _basic(self, value: str, source: str | None) -> Principal:
        denied = RestError(403, "Authentication failed: wrong user name or password",
                           Reason.NOT_AUTHORIZED)
        key = hashlib.sha256(value.encode()).digest()
        cached = self._verified.get(key)
        if cached and cached[0] > time.monotonic():
            user = self.users.get(cached[1])
            if user is not None:
                return Principal(user, "BASIC")
        try:
            name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name = sep = password = None
        counted = None if name is None else name[:_MAX_NAME]  # the backoff's key
        self._check_bar(source, counted)
        user = self.users.get(name) if sep else None
        stored = user.password_hash if user is not None else dummy_password_hash()
        ok = name is not None and await threads.deferToThread(verify_password, password,
                                                              stored)
        if not ok or user is None:
            self.backoff.failed(source, counted)
            raise denied
        self.backoff.succeeded(source, counted)
        self._verified[key] = (time.monotonic() + self.cache_seconds, name)
        while len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return Principal(user, "BASIC")

    def _check_bar(self, source: str | None, name: str | None) -> None:
        bar = self.backoff.barred(source, name)
        if bar is not None:
            whom = "from your address" if bar.key == "source" else "for this user name"
            raise RestError(429, f"too many failed logins {whom}: try again in "
                                 f"{bar.retry_after} s", Reason.NOT_AUTHORIZED,
                            {"Retry-After": str(bar.retry_after)})

    def _bearer(self, value: str) -> Principal:
        try:
            claims = self.tokens.verify(value)
        except ValueError as err:
            raise RestError(403, f"Authentication failed: {err}", Reason.NOT_AUTHORIZED) from None
        user = self.users.get(str(claims.get("sub")))
        if user is None:
            raise RestError(403, "Authentication failed: the token's user no longer exists",
                            Reason.NOT_AUTHORIZED)
        return Principal(user, "BEARER", token_renewable=bool(claims.get("renewable")))
