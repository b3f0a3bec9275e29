"""Who is calling: Basic (users file) or Bearer (tokens this site issued), else anonymous.

UNICORE's rules: no credentials → the anonymous role (the base resource answers, everything
else is refused); wrong credentials → 403.  Tokens are JWTs (HS256) signed with a site secret
kept in the state directory; they name the user, who must still be in the users file.
Password checks use scrypt in a thread; a successful check is remembered for a short time
(keyed by a hash of the header) so that clients sending Basic on every request stay fast.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import threads

from base.identity import Caller
from base.reasons import Reason
from tsf.rest.http import RestError
from tsf.users import User, UsersFile, verify_password

ANONYMOUS = "anonymous"


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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": user, "iss": self.issuer, "iat": now, "exp": now + lifetime}
        if renewable:
            claims["renewable"] = True
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{_b64url(signature.digest())}"

    def verify(self, token: str) -> dict:
        """The claims of a valid token; raises ValueError with the reason otherwise."""
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256)
            if not hmac.compare_digest(_unb64url(signature), expected.digest()):
                raise ValueError("bad signature")
            if json.loads(_unb64url(header)).get("alg") != "HS256":
                raise ValueError("unsupported algorithm")
            claims = json.loads(_unb64url(payload))
        except (ValueError, binascii.Error, UnicodeDecodeError) as err:
            raise ValueError(f"invalid token ({err})") from None
        if claims.get("iss") != self.issuer:
            raise ValueError("token issued by another site")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise ValueError("token expired")
        return claims


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal` (or 403)."""

    def __init__(self, users: UsersFile, tokens: TokenIssuer, cache_seconds: float = 60.0,
                 cache_size: int = 1024):
        self.users, self.tokens = users, tokens
        self.cache_seconds, self.cache_size = cache_seconds, cache_size
        self._verified: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    async def authenticate(self, header: bytes | None) -> Principal:
        if not header:
            return Principal(None, "NONE")
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            return await self._basic(value)
        if scheme.lower() == "bearer":
            return self._bearer(value)
        raise RestError(403, f"unsupported authentication scheme {scheme!r}: use Basic or "
                             "Bearer", Reason.NOT_AUTHORIZED)

    async def _basic(self, value: str) -> Principal:
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
            raise denied from None
        user = self.users.get(name) if sep else None
        if user is None:
            raise denied
        ok = await threads.deferToThread(verify_password, password, user.password_hash)
        if not ok:
            raise denied
        self._verified[key] = (time.monotonic() + self.cache_seconds, name)
        while len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return Principal(user, "BASIC")

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
