"""Dashboard sessions: lifetime, bounds, and (with a state store) surviving a site restart."""

from __future__ import annotations

import pytest_twisted
from sqlalchemy import text
from twisted.internet import reactor

from base.db import make_engine
from target_system.store import StateStore
from tests.image_repo.conftest import database_url  # noqa: F401  (fixture)
from tsf.dashboard.sessions import SessionStore


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_lifetime_seconds_after_its_last_use():
    clock = Clock()
    sessions = SessionStore(lifetime=100, clock=clock)
    session = sessions.create("alice")
    clock.now += 90
    assert sessions.get(session.session_id).user == "alice"  # renewed
    clock.now += 90
    assert sessions.alive(session.session_id) and sessions.get(session.session_id)
    clock.now += 101
    assert not sessions.alive(session.session_id)
    assert sessions.get(session.session_id) is None and len(sessions) == 0
    assert sessions.get(None) is None and sessions.get("") is None


def test_the_number_of_sessions_is_bounded_and_the_oldest_go_first():
    sessions = SessionStore(capacity=3, clock=Clock())
    first, second, *_ = [sessions.create(f"user{i}") for i in range(4)]
    assert len(sessions) == 3
    assert sessions.get(first.session_id) is None and sessions.get(second.session_id)


@pytest_twisted.ensureDeferred
async def test_sessions_survive_a_restart_and_the_database_holds_no_cookie_value(
        database_url):  # noqa: F811
    clock = Clock()
    store = StateStore(make_engine(database_url), reactor)
    try:
        sessions = SessionStore(lifetime=100, clock=clock, store=store, write_every=30)
        alice, bob, carol = (sessions.create(u) for u in ("alice", "bob", "carol"))
        sessions.end(bob.session_id)
        clock.now += 50
        sessions.get(alice.session_id)  # renewed by 50 s: written again
        await store.flush()
        with store.engine.connect() as connection:
            rows = connection.execute(text("SELECT id, owner FROM dashboard_sessions"))
            stored = {row[0]: row[1] for row in rows}
        assert sorted(stored.values()) == ["alice", "carol"]
        assert not {alice.session_id, carol.session_id} & set(stored)  # hashes only

        clock.now += 80  # carol's session expired meanwhile, alice's renewal counts
        restarted = SessionStore(lifetime=100, clock=clock, store=store)
        again = restarted.get(alice.session_id)
        assert again is not None and again.user == "alice"
        assert again.session_id == alice.session_id and again.csrf_ok(alice.csrf)
        assert restarted.get(carol.session_id) is None
        assert restarted.get(bob.session_id) is None
        with store.engine.connect() as connection:  # the expired row is gone on load
            count = connection.execute(text("SELECT count(*) FROM dashboard_sessions"))
            assert count.scalar_one() == 1

        restarted.end(alice.session_id)
        await store.flush()
        assert SessionStore(clock=clock, store=store).get(alice.session_id) is None
    finally:
        store.close()
