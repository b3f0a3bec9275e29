"""Admission of jobs: the site's size limits and what one user may keep, checked at submit.

A job that asks for more than the site offers (``[limits]`` max_cpus, max_memory_mib,
max_runtime_s, max_disk_gib: the sizing resources the site publishes) is refused before
anything is booted, with a :class:`~target_system.jobdesc.JobDescriptionError` naming the
key and the site's range.  A user at one of the per-user limits (jobs kept, unfinished
jobs, bytes of job descriptions kept, bytes of site storage) is refused with
:class:`UserLimitReached`, which names the limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from base.errors import GridvmError
from base.reasons import Reason
from image_repo.requirements import Requirements
from target_system.jobdesc import (
    REQUIREMENT_SOURCES,
    JobDescription,
    JobDescriptionError,
    requirement_sources,
)
from target_system.jobs import Job


@dataclass(frozen=True)
class SiteLimits:
    """The most one job may ask for on this site."""

    cpus: int = 4
    memory_mib: int = 8192
    runtime_s: int = 86400
    disk_gib: int = 64
    nodes: int = 4  #: VMs of one multi-node job

    def check(self, requirements: Requirements, sources: dict[str, str] | None = None) -> None:
        """Raise JobDescriptionError naming the first requirement above its site limit;
        ``sources`` maps a requirement to the key the client gave (UNICORE's by default)."""
        sources = REQUIREMENT_SOURCES if sources is None else sources
        for name, unit in (("cpus", ""), ("memory_mib", " MiB"), ("runtime_s", " s"),
                           ("disk_gib", " GiB")):
            wanted, limit = getattr(requirements, name), getattr(self, name)
            if wanted is not None and wanted > limit:
                raise JobDescriptionError(
                    sources.get(name, name),
                    f"{wanted}{unit} is outside this site's limit: 1 to {limit}{unit}")


@dataclass(frozen=True)
class UserLimits:
    """What one user may keep on this site (0: no limit)."""

    jobs: int = 1000  #: jobs kept, finished or not
    unfinished_jobs: int = 100  #: jobs not yet finished
    description_bytes: int = 16 << 20  #: JSON bytes of the job descriptions kept
    storage_bytes: int = 10 << 30  #: bytes in the site storage of the user's jobs


class UserLimitReached(GridvmError):
    """A user at one of their :class:`UserLimits`; ``limit`` names it."""

    reason = Reason.QUOTA_EXCEEDED

    def __init__(self, limit: str, message: str):
        super().__init__(f"per-user limit {limit}: {message}")
        self.limit = limit


def description_bytes(description: JobDescription) -> int:
    """The size of a description as the site keeps it (compact JSON, UTF-8)."""
    return len(json.dumps(description.raw, separators=(",", ":")).encode())


def storage_bytes(directories: Iterable[Path]) -> int:
    """Bytes of the regular files below ``directories`` (missing ones count 0)."""
    total = 0
    for top in directories:
        for root, _dirs, files in os.walk(top):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    continue
    return total


@dataclass(frozen=True)
class Admission:
    """Checks a new job against the site's limits and its owner's."""

    site: SiteLimits = SiteLimits()
    users: UserLimits = UserLimits()

    def check(self, description: JobDescription, owned: list[Job]) -> None:
        """Raise for a job the site cannot take from an owner who keeps ``owned``."""
        self.site.check(description.requirements, requirement_sources(description))
        nodes = description.nodes or 1
        if nodes > self.site.nodes:
            raise JobDescriptionError("Resources.Nodes", f"{nodes} is outside this site's "
                                                         f"limit: 1 to {self.site.nodes}")
        self.check_owner(owned, description_bytes(description))

    def check_owner(self, owned: list[Job], new_bytes: int = 0) -> None:
        """Raise UserLimitReached when an owner who keeps ``owned`` may not add a job
        of ``new_bytes`` (0: check storage only, as before an upload)."""
        limits = self.users
        if new_bytes and limits.jobs and len(owned) >= limits.jobs:
            raise UserLimitReached("jobs", f"you keep {len(owned)} jobs, the limit per user "
                                           f"is {limits.jobs}: delete some first")
        unfinished = sum(not job.state.terminal for job in owned)
        if new_bytes and limits.unfinished_jobs and unfinished >= limits.unfinished_jobs:
            raise UserLimitReached("unfinished_jobs", f"you have {unfinished} unfinished jobs, "
                                   f"the limit per user is {limits.unfinished_jobs}")
        kept = sum(description_bytes(job.description) for job in owned)
        if new_bytes and limits.description_bytes and (
                kept + new_bytes > limits.description_bytes):
            raise UserLimitReached("description_bytes", f"your job descriptions would take "
                                   f"{kept + new_bytes} bytes, the limit per user is "
                                   f"{limits.description_bytes}")
        if limits.storage_bytes:
            used = storage_bytes(d for job in owned for d in (job.storage, job.inputs_dir))
            if used >= limits.storage_bytes:
                raise UserLimitReached("storage_bytes", f"your jobs' files take {used} bytes "
                                       f"of site storage, the limit per user is "
                                       f"{limits.storage_bytes}: delete jobs first")
