"""Dashboard sessions: a random id in an HttpOnly, SameSite=Strict cookie, and a CSRF token.

A session names a user of the site's users file and nothing more: every request looks the
user up again, so a user removed from the file is logged out at once.  Sessions live in
memory (a site restart logs everyone out), at most ``capacity`` of them (the oldest go first),
each for ``lifetime`` seconds after its last use.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "gridvm_session"
#: The cookie of a login form: its value is the form's CSRF token (double submit).
LOGIN_COOKIE = "gridvm_login"


@dataclass
class Session:
    session_id: str
    user: str
    csrf: str  #: the token every state-changing form of this session carries
    expires: float

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by id, bounded in number, each expiring ``lifetime`` s after its last use."""

    def __init__(self, lifetime: float = 8 * 3600.0, capacity: int = 10000,
                 clock: Callable[[], float] = time.monotonic):
        self.lifetime, self.capacity, self.clock = lifetime, capacity, clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32),
                          self.clock() + self.lifetime)
        self._sessions[session.session_id] = session
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (its lifetime renewed), else None."""
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = self.clock()
        if session.expires <= now:
            del self._sessions[session.session_id]
            return None
        session.expires = now + self.lifetime
        self._sessions.move_to_end(session.session_id)
        return session

    def alive(self, session_id: str) -> bool:
        """Whether the session exists and has not expired (its lifetime not renewed)."""
        session = self._sessions.get(session_id)
        return session is not None and session.expires > self.clock()

    def end(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)


def cookie(name: str, value: str, path: str, secure: bool, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)
