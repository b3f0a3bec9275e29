"""Who wants to hear of job and instance state changes as they happen (the event streams).

The registry publishes ``(kind, id)`` at every transition of a job's or an instance's
lifecycle, synchronously, so a subscriber sees every state, however briefly it lasted.  A
subscriber's failure is logged and never reaches the lifecycle that published.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Subscriber = Callable[[str, str], None]  #: called with ("job" | "instance", id)


class ChangeFeed:
    def __init__(self) -> None:
        self._subscribers: dict[int, Subscriber] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` at every change from now on; returns the unsubscribe call."""
        key, self._next = self._next, self._next + 1
        self._subscribers[key] = subscriber
        return lambda: self._subscribers.pop(key, None)

    def publish(self, kind: str, object_id: str) -> None:
        for subscriber in list(self._subscribers.values()):
            try:
                subscriber(kind, object_id)
            except Exception:  # a stream's bug must not break a job's lifecycle
                log.exception("change subscriber failed on %s %s", kind, object_id)
