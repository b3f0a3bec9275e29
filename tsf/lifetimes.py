"""Lifetimes, UNICORE style: how long jobs and UNICORE sites are kept.

Every job gets a termination time (``terminationTime``) of its submission plus the site's
job lifetime; its owner may move it into the future, at most one lifetime from now.  A
sweep every ``interval`` seconds destroys the jobs past it as DELETE does (abort if running,
then forget the record and remove the files), so site storage cannot grow without bound,
and removes the UNICORE sites past their own termination time (not their jobs).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from twisted.application import service
from twisted.internet import task

from target_system.jobs import Job
from tsf.errors import TerminationRefused

if TYPE_CHECKING:
    from tsf.factory import TargetSystemFactory

log = logging.getLogger(__name__)

#: How long a job (its record and its files in site storage) is kept after submission,
#: unless its owner sets another termination time (UNICORE's ``terminationTime``).
DEFAULT_JOB_LIFETIME = 30 * 86400.0
#: Seconds between two sweeps for jobs past their termination time.
EXPIRY_INTERVAL = 60.0


class Lifetimes(service.Service):
    """Termination times of the factory's jobs, and the sweep that enforces them."""

    name = "lifetimes"

    def __init__(self, factory: TargetSystemFactory, reactor,
                 job_lifetime: float | None = DEFAULT_JOB_LIFETIME,
                 interval: float = EXPIRY_INTERVAL):
        self.factory, self.reactor = factory, reactor
        #: seconds a job is kept after submission (None: until deleted) and at most from now
        self.job_lifetime = job_lifetime
        self.interval = interval
        self._loop = task.LoopingCall(self.expire)
        self._loop.clock = reactor
        self._expiring: set[str] = set()  #: jobs being destroyed by :meth:`expire`

    @property
    def sweeping(self) -> bool:
        """Whether the periodic sweep runs."""
        return self._loop.running

    def termination(self, submitted: float) -> float | None:
        """The termination time of a job submitted at ``submitted`` (None: kept)."""
        return submitted + self.job_lifetime if self.job_lifetime else None

    def move(self, job: Job, when: float) -> None:
        """Move the job's termination time: it must lie in the future and, when the site
        limits job lifetimes, within one lifetime from now (else TerminationRefused)."""
        now = self.reactor.seconds()
        if when <= now:
            raise TerminationRefused("terminationTime must lie in the future")
        if self.job_lifetime and when > now + self.job_lifetime:
            raise TerminationRefused(f"terminationTime may lie at most "
                                     f"{self.job_lifetime / 86400:g} days ahead on this site")
        job.termination = when
        job.note(f"termination time set to {utc(when)}")

    def expire(self) -> list[str]:
        """Destroy the jobs past their termination time, and remove the sites past theirs;
        returns the ids of the jobs."""
        factory = self.factory
        now = self.reactor.seconds()
        due = [job for job in factory.jobs.values()
               if job.termination is not None and job.termination <= now
               and job.job_id not in self._expiring]
        for job in due:
            log.info("job %s of %s reached its termination time %s: destroying it",
                     job.job_id, job.owner, utc(job.termination))
            job.note("termination time reached: destroying the job")
            self._expiring.add(job.job_id)
            d = factory.delete(job.job_id, factory.caller_of(job.job_id))
            d.addBoth(lambda result, job_id=job.job_id: (self._expiring.discard(job_id),
                                                          result)[1])
        factory.sites.expire()
        return [job.job_id for job in due]

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.error("job expiry stopped: %s", f.getTraceback()))

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()


def utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
