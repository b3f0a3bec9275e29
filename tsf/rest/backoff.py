"""Failed-login backoff: per source address and per user name, exponential with a cap.

Each key (a source address, a user name — known or not, so the answer reveals no names)
counts its failed logins in a row.  The first ``free`` cost nothing; each further one bars
the key for ``base * 2**k`` seconds (k = 0, 1, …), at most ``cap``.  While a key is barred
every login it takes part in is refused before any password is checked.  A successful login
clears the user's and the source's count; a key with no failure for ``cap`` seconds (after
its bar ended) starts over.  The table keeps at most ``size`` keys, dropping the least
recently failed first, so its memory is bounded whatever an attacker sends.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: The largest exponent used, so that ``base * 2**k`` never overflows a float.
_MAX_DOUBLINGS = 62


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0  #: clock time of the latest failure
    until: float = 0.0  #: clock time before which the key is barred

    def quiet_since(self) -> float:
        return max(self.last, self.until)


@dataclass(frozen=True)
class Bar:
    """Why a login is refused now: which key is barred and for how many more seconds."""

    key: str  #: ``source`` or ``user``
    seconds: float

    @property
    def retry_after(self) -> int:
        """Whole seconds for a ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(self.seconds))


class LoginBackoff:
    """Counts failed logins per source and per user name and bars the keys that fail."""

    def __init__(self, free: int = 3, base: float = 1.0, cap: float = 300.0,
                 size: int = 10000, clock: Callable[[], float] = time.monotonic):
        self.free, self.base, self.cap, self.size = free, base, cap, size
        self.clock = clock
        self.failures_total = 0  #: failed logins since the start (for the metrics)
        self._keys: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    @staticmethod
    def _keys_of(source: str | None, user: str | None) -> list[tuple[str, str]]:
        keys = []
        if source is not None:
            keys.append(("source", source))
        if user is not None:
            keys.append(("user", user))
        return keys

    def barred(self, source: str | None, user: str | None) -> Bar | None:
        """The longest bar on ``source`` or ``user`` now, or None when a login may be tried."""
        now = self.clock()
        bars = [Bar(kind, entry.until - now) for kind, name in self._keys_of(source, user)
                if (entry := self._keys.get((kind, name))) is not None and entry.until > now]
        return max(bars, key=lambda bar: bar.seconds, default=None)

    def failed(self, source: str | None, user: str | None) -> None:
        """Count a failed login against both keys (and bar them when over ``free``)."""
        self.failures_total += 1
        if self.base <= 0:
            return
        now = self.clock()
        for key in self._keys_of(source, user):
            entry = self._keys.pop(key, None) or _Failures()
            if entry.count and now - entry.quiet_since() >= self.cap:
                entry = _Failures()  # quiet for long enough: start over
            entry.count += 1
            entry.last = now
            over = entry.count - self.free
            if over > 0:
                entry.until = now + min(self.base * 2.0 ** min(over - 1, _MAX_DOUBLINGS),
                                        self.cap)
            self._keys[key] = entry  # most recently failed last
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def succeeded(self, source: str | None, user: str | None) -> None:
        """A successful login: both keys start over."""
        for key in self._keys_of(source, user):
            self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)
