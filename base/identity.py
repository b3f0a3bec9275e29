"""Who is asking: the caller identity every package passes along."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caller:
    """Who is asking: user name, groups (the first is the primary one), VOs, admin role."""

    user: str
    groups: tuple[str, ...] = ()
    vos: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False

    @classmethod
    def of(cls, user: str, groups: Iterable[str] = (), vos: Iterable[str] = (),
           admin: bool = False) -> Caller:
        return cls(user, tuple(groups), frozenset(vos), admin)

    @property
    def primary_group(self) -> str | None:
        return self.groups[0] if self.groups else None
