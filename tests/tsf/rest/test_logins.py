"""Logins that reveal nothing: the failed-login backoff (a core, on a fake clock), the
timing of wrong names and wrong passwords (real scrypt, real users file) and tokens (PyJWT)
with a single spelling."""

from __future__ import annotations

import base64
import statistics
import time

import jwt
import pytest
import pytest_twisted

from tsf.rest.auth import Authenticator, TokenIssuer
from tsf.rest.backoff import LoginBackoff
from tsf.rest.http import RestError
from tsf.users import User, UsersFile, hash_password


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(backoff: LoginBackoff, times: int, source="10.0.0.1", user="alice") -> None:
    for _ in range(times):
        backoff.failed(source, user)


def test_backoff_doubles_after_the_free_failures_up_to_the_cap():
    clock = Clock()
    backoff = LoginBackoff(free=3, base=1.0, cap=8.0, clock=clock)
    fail(backoff, 3)
    assert backoff.barred("10.0.0.1", "alice") is None
    bars = []
    for _ in range(6):
        fail(backoff, 1)
        bars.append(backoff.barred("10.0.0.1", "alice").seconds)
    assert bars == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock.now += 7.5
    bar = backoff.barred("10.0.0.1", "alice")
    assert bar.seconds == pytest.approx(0.5) and bar.retry_after == 1
    clock.now += 0.5
    assert backoff.barred("10.0.0.1", "alice") is None


def test_backoff_bars_the_user_from_anywhere_and_the_source_for_anyone():
    backoff = LoginBackoff(free=0, base=5.0, clock=Clock())
    backoff.failed("10.0.0.1", "alice")
    assert backoff.barred("10.0.0.2", "alice").key == "user"  # another address
    assert backoff.barred("10.0.0.1", "bob").key == "source"  # another name
    assert backoff.barred("10.0.0.2", "bob") is None
    backoff.failed(None, "nobody")  # unknown names count the same
    assert backoff.barred("10.0.0.3", "nobody").key == "user"


def test_backoff_resets_on_success_and_after_a_quiet_cap():
    clock = Clock()
    backoff = LoginBackoff(free=2, base=1.0, cap=10.0, clock=clock)
    fail(backoff, 5)
    assert backoff.barred("10.0.0.1", "alice") is not None
    backoff.succeeded("10.0.0.1", "alice")
    assert backoff.barred("10.0.0.1", "alice") is None
    fail(backoff, 2)
    assert backoff.barred("10.0.0.1", "alice") is None  # the count started over
    fail(backoff, 1)
    assert backoff.barred("10.0.0.1", "alice").seconds == 1.0
    clock.now += 1.0 + 10.0  # its bar ended, then quiet for the cap
    fail(backoff, 1)
    assert backoff.barred("10.0.0.1", "alice") is None


def test_backoff_memory_is_bounded_and_many_failures_do_not_overflow():
    clock = Clock()
    backoff = LoginBackoff(free=0, base=1.0, cap=60.0, size=100, clock=clock)
    for i in range(1000):
        backoff.failed("10.0.0.1", f"user{i}")
    assert len(backoff) == 100
    assert backoff.barred(None, "user999") is not None  # the latest are kept
    assert backoff.barred(None, "user0") is None
    for _ in range(5000):  # 2.0 ** 5000 would overflow a float
        backoff.failed("10.0.0.9", None)
    assert backoff.barred("10.0.0.9", None).seconds == 60.0


def test_backoff_off_when_base_is_zero():
    backoff = LoginBackoff(free=0, base=0.0, clock=Clock())
    fail(backoff, 100)
    assert backoff.barred("10.0.0.1", "alice") is None and len(backoff) == 0


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.fixture
def authenticator(tmp_path):
    users = UsersFile(tmp_path / "users.json")
    users.put(User("alice", hash_password("alice-secret")))
    tokens = TokenIssuer(b"k" * 32, "SITE")
    return Authenticator(users, tokens, backoff=LoginBackoff(base=0.0))


async def refused_in(authenticator: Authenticator, header: bytes) -> float:
    started = time.perf_counter()
    with pytest.raises(RestError) as refused:
        await authenticator.authenticate(header, "127.0.0.1")
    assert refused.value.status == 403
    assert refused.value.message == "Authentication failed: wrong user name or password"
    return time.perf_counter() - started


@pytest_twisted.ensureDeferred
async def test_a_wrong_name_takes_as_long_as_a_wrong_password(authenticator):
    wrong_password, wrong_name = [], []
    for i in range(7):
        wrong_password.append(await refused_in(authenticator, basic("alice", f"guess{i}")))
        wrong_name.append(await refused_in(authenticator, basic(f"nobody{i}", "guess")))
    known, unknown = statistics.median(wrong_password), statistics.median(wrong_name)
    # before: 35.8 ms against 0.9 ms; both now pay one scrypt check
    assert unknown > 0.5 * known and known > 0.5 * unknown, (known, unknown)


@pytest_twisted.ensureDeferred
async def test_the_backoff_answers_429_with_retry_after_before_any_password_check(tmp_path):
    users = UsersFile(tmp_path / "users.json")
    users.put(User("alice", hash_password("alice-secret")))
    clock = Clock()
    authenticator = Authenticator(users, TokenIssuer(b"k" * 32, "SITE"),
                                  backoff=LoginBackoff(free=1, base=30.0, clock=clock))
    for _ in range(2):
        await refused_in(authenticator, basic("alice", "guess"))
    with pytest.raises(RestError) as barred:
        await authenticator.authenticate(basic("alice", "alice-secret"), "127.0.0.2")
    assert barred.value.status == 429 and barred.value.headers == {"Retry-After": "30"}
    assert "for this user name" in barred.value.message
    clock.now += 30
    principal = await authenticator.authenticate(basic("alice", "alice-secret"), "127.0.0.2")
    assert principal.user.name == "alice"
    await refused_in(authenticator, basic("alice", "guess"))  # counting from zero again


def test_tokens_verify_and_every_other_spelling_is_refused():
    issuer = TokenIssuer(b"k" * 32, "SITE")
    token = issuer.issue("alice", 60, renewable=True)
    claims = issuer.verify(token)
    assert claims["sub"] == "alice" and claims["renewable"] is True
    for variant in (token + "=", token + "==", token + ".", " " + token, token + "\n",
                    token.replace(".", "=.", 1)):
        with pytest.raises(ValueError, match="invalid token"):
            issuer.verify(variant)
    with pytest.raises(ValueError, match="another site"):
        TokenIssuer(b"k" * 32, "OTHER").verify(token)
    with pytest.raises(ValueError, match="invalid token"):
        TokenIssuer(b"x" * 32, "SITE").verify(token)
    expired = jwt.encode({"sub": "alice", "iss": "SITE", "exp": int(time.time()) - 5},
                         b"k" * 32, algorithm="HS256")
    with pytest.raises(ValueError, match="expired"):
        issuer.verify(expired)
    unsigned = jwt.encode({"sub": "alice", "iss": "SITE", "exp": int(time.time()) + 60},
                          None, algorithm="none")
    with pytest.raises(ValueError, match="invalid token"):
        issuer.verify(unsigned)
    no_expiry = jwt.encode({"sub": "alice", "iss": "SITE"}, b"k" * 32, algorithm="HS256")
    with pytest.raises(ValueError, match="invalid token"):
        issuer.verify(no_expiry)
