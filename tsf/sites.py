"""UNICORE sites (target system services): per-user handles that accept jobs.

A site is created on demand when a user submits to ``/jobs``, or explicitly; it is kept in
the state store when there is one, so that its URL outlives a server restart.  A site past
its termination time is removed — not its jobs, as in UNICORE.  Which site a job went to is
the job's own ``site_id``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from base.identity import Caller
from target_system.store import StateStore
from tsf.errors import NotFound


@dataclass
class Site:
    site_id: str
    owner: str
    created: float = field(default_factory=time.time)
    termination: float | None = None  #: epoch seconds after which the site is removed


class SiteRegistry:
    """The sites of every user, by id."""

    def __init__(self, store: StateStore | None = None,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self.sites: dict[str, Site] = {}

    async def load(self) -> int:
        """Read the sites saved by an earlier run; returns how many."""
        if self.store is not None:
            for row in await self.store.load_sites():
                self.sites[row["id"]] = Site(row["id"], row["owner"], row["created"],
                                             row["termination"])
        return len(self.sites)

    def create(self, owner: str, termination: float | None = None) -> Site:
        site = Site(uuid.uuid4().hex[:12], owner, termination=termination)
        self.sites[site.site_id] = site
        if self.store is not None:
            self.store.save_site(site.site_id, owner, site.created, termination)
        return site

    def remove(self, site_id: str) -> None:
        if self.sites.pop(site_id, None) is not None and self.store is not None:
            self.store.delete_site(site_id)

    def expire(self) -> list[str]:
        """Remove the sites past their termination time; returns their ids."""
        now = self.clock()
        due = [s.site_id for s in self.sites.values()
               if s.termination is not None and s.termination <= now]
        for site_id in due:
            self.remove(site_id)
        return due

    def of(self, caller: Caller) -> list[Site]:
        self.expire()
        return sorted((s for s in self.sites.values() if caller.admin or s.owner == caller.user),
                      key=lambda s: s.created)

    def get(self, site_id: str, caller: Caller) -> Site:
        """The caller's site (an administrator's: any), else NotFound."""
        self.expire()
        site = self.sites.get(site_id)
        if site is None or not (caller.admin or site.owner == caller.user):
            raise NotFound(f"no site {site_id}")
        return site

    def default_for(self, caller: Caller) -> Site:
        mine = [s for s in self.of(caller) if s.owner == caller.user]
        return mine[0] if mine else self.create(caller.user)
