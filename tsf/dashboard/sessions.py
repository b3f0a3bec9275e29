"""Dashboard sessions: a random id in an HttpOnly, SameSite=Strict cookie, and a CSRF token.

A session names a user of the site's users file and nothing more: every request looks the
user up again, so a user removed from the file is logged out at once.  At most ``capacity``
sessions live (the oldest go first), each for ``lifetime`` seconds after its last use.  With a
:class:`~target_system.store.StateStore` they are kept in the database too, so a site restart
logs nobody out: the table holds the SHA-256 of each cookie value, never the value, and a
renewal is written only once its expiry has moved by ``write_every`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from base.db import session_factory, session_scope
from tsf.models import DashboardSessionRow

if TYPE_CHECKING:
    from target_system.store import StateStore

COOKIE = "gridvm_session"
#: The cookie of a login form: its value is the form's CSRF token (double submit).
LOGIN_COOKIE = "gridvm_login"


@dataclass
class Session:
    session_id: str
    user: str
    csrf: str  #: the token every state-changing form of this session carries
    expires: float  #: epoch seconds

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Sessions by id, bounded in number, each expiring ``lifetime`` s after its last use;
    kept in ``store``'s database when one is given."""

    def __init__(self, lifetime: float = 8 * 3600.0, capacity: int = 10000,
                 clock: Callable[[], float] = time.time, store: StateStore | None = None,
                 write_every: float = 300.0):
        self.lifetime, self.capacity, self.clock = lifetime, capacity, clock
        self.store, self.write_every = store, write_every
        self._sessions: OrderedDict[str, Session] = OrderedDict()  #: by key (hash of the id)
        self._written: dict[str, float] = {}  #: key -> the expiry the database holds
        if store is not None:
            self._load(store)

    def __len__(self) -> int:
        return len(self._sessions)

    def _load(self, store: StateStore) -> None:
        """Take in the live sessions of the database (the newest ``capacity``); drop the
        expired ones there."""
        now = self.clock()
        with session_scope(session_factory(store.engine)) as db:
            db.execute(delete(DashboardSessionRow).where(DashboardSessionRow.expires <= now))
            rows = list(db.scalars(select(DashboardSessionRow)
                                   .order_by(DashboardSessionRow.expires.desc())
                                   .limit(self.capacity)))
        for row in reversed(rows):  # oldest first, as the order of eviction wants
            self._sessions[row.id] = Session("", row.owner, row.csrf, row.expires)
            self._written[row.id] = row.expires

    def _save(self, key: str, session: Session) -> None:
        self._written[key] = session.expires
        if self.store is not None:
            self.store.save(DashboardSessionRow, {"id": key, "owner": session.user,
                                                  "csrf": session.csrf,
                                                  "expires": session.expires})

    def _forget(self, key: str) -> None:
        self._sessions.pop(key, None)
        if self._written.pop(key, None) is not None and self.store is not None:
            self.store.delete(DashboardSessionRow, key)

    def create(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32),
                          self.clock() + self.lifetime)
        key = _key(session.session_id)
        self._sessions[key] = session
        self._save(key, session)
        while len(self._sessions) > self.capacity:
            self._forget(next(iter(self._sessions)))
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (its lifetime renewed), else None."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if session.expires <= now:
            self._forget(key)
            return None
        session.session_id = session_id  # a session loaded from the database learns its id
        session.expires = now + self.lifetime
        self._sessions.move_to_end(key)
        if session.expires - self._written.get(key, 0.0) >= self.write_every:
            self._save(key, session)
        return session

    def alive(self, session_id: str) -> bool:
        """Whether the session exists and has not expired (its lifetime not renewed)."""
        session = self._sessions.get(_key(session_id))
        return session is not None and session.expires > self.clock()

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._forget(_key(session_id))


def cookie(name: str, value: str, path: str, secure: bool, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)
