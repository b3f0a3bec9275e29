"""Warm pools for batch operators: instances of an image booted ahead of demand, so a job
starts without waiting for a boot.

A pool keeps ``idle`` booted instances that belong to nobody yet (owner ``pool:<name>``).
When a job of a user the pool serves (its VOs; any user who may use the image when it names
none) needs an instance of that image and size and has none with room, the factory hands
it a pool instance: from then on the instance is that user's alone, like one booted for
them (one owner per VM is kept), and the pool boots a replacement.  Pool instances are
never ended for being idle (their lease still applies); they count against the site's
total quota, and against a user's once taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from base.identity import Caller

OWNER_PREFIX = "pool:"


@dataclass(frozen=True)
class PoolSpec:
    """One pool: ``idle`` instances of ``image`` (a name, name:version or id) with
    ``vcpus`` and ``memory_mib``, for users of ``vos`` (empty: anyone)."""

    name: str
    image: str
    idle: int = 1
    vcpus: int = 1
    memory_mib: int = 256
    vos: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        """The owner of the pool's instances until a job takes one."""
        return OWNER_PREFIX + self.name

    def serves(self, caller: Caller) -> bool:
        return not self.vos or bool(set(self.vos) & set(caller.vos))


def pool_name(owner: str) -> str | None:
    """The pool an instance belongs to (by its owner), or None once a user has it."""
    return owner[len(OWNER_PREFIX):] if owner.startswith(OWNER_PREFIX) else None


def check_specs(specs: Iterable[PoolSpec]) -> list[PoolSpec]:
    """The specs, or ValueError naming the first problem (names unique, sizes positive)."""
    seen: set[str] = set()
    result = []
    for spec in specs:
        if not spec.name or not spec.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"pool name must be letters, digits, - and _: {spec.name!r}")
        if spec.name in seen:
            raise ValueError(f"pool {spec.name!r} is defined twice")
        if not spec.image:
            raise ValueError(f"pool {spec.name!r} names no image")
        if spec.idle < 0 or spec.vcpus < 1 or spec.memory_mib < 64:
            raise ValueError(f"pool {spec.name!r}: idle >= 0, vcpus >= 1 and memory_mib >= 64")
        seen.add(spec.name)
        result.append(spec)
    return result
