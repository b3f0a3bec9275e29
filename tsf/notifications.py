"""UNICORE's ``Notification``: the site POSTs a job's status to the job's URL at its changes.

A job description may name ``Notification`` (an http(s) URL; it must lie under one of the
site's ``transfers.url_prefixes``, else the submission is a 400) and ``NotificationSettings``
(``status``: the states to notify of; by default RUNNING, SUCCESSFUL and FAILED).  The
:class:`Notifier` hears of every job transition from the registry's change feed (and looks at
all jobs every ``interval`` seconds for what it had to leave) and, for each job that entered
a state to notify of, POSTs ``{"href", "status", "statusMessage", "exitCode", "name",
"jobId"}`` (JSON), as UNICORE does; a job's notifications go one after the other, in order.
A POST that fails is retried (1 s, 2 s, 4 s, …) until ``deadline`` seconds after the change;
then it is given up and logged.  At most ``max_pending`` notifications are under way at a
time (the others wait for the next look).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, task, threads

from base.errors import GridvmError
from base.identity import Caller
from base.reasons import Reason
from target_system.jobdesc import JobDescription
from target_system.transfers import TransferPolicy

log = logging.getLogger(__name__)

SITE = Caller.of("gridvm-notifier", admin=True)


class NotificationRefused(GridvmError):
    """A Notification URL the site may not send to."""

    reason = Reason.BAD_REQUEST


def check_notification(desc: JobDescription, policy: TransferPolicy) -> None:
    """Raises :class:`NotificationRefused` for a URL outside ``transfers.url_prefixes``."""
    if desc.notification and not policy.allows(desc.notification):
        raise NotificationRefused(
            f"Notification: this site does not send to {desc.notification} (allowed: "
            f"{', '.join(policy.url_prefixes) or 'no URLs'})")


@dataclass(frozen=True)
class NotifyLimits:
    interval: float = 5.0  #: seconds between two looks at all jobs (changes come at once)
    deadline: float = 60.0  #: seconds after a change its notification is given up
    timeout: float = 10.0  #: seconds of one POST
    max_pending: int = 64


def post_json(url: str, doc: dict, timeout: float) -> int:
    """Blocking: POST ``doc`` as JSON (redirects not followed); the HTTP status."""
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "gridvm-notifications"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.status


class Notifier(service.Service):
    """Watches the factory's jobs and POSTs their status changes to their Notification URL."""

    name = "notifier"

    def __init__(self, factory, reactor, job_url: Callable[[str], str] | None = None,
                 limits: NotifyLimits | None = None, send=post_json):
        self.factory, self.reactor, self.job_url = factory, reactor, job_url
        self.limits = limits or NotifyLimits()
        self.send = send
        self.sent: dict[str, str] = {}  #: job id -> last state notified of (or seen)
        self.pending = 0
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = reactor
        self._unsubscribe: Callable[[], None] = lambda: None
        #: one lock per job: its notifications are posted one after the other, in order
        self._in_order: dict[str, defer.DeferredLock] = {}

    def startService(self):
        super().startService()
        for job in self.factory.list_jobs(SITE):  # what happened before a restart is old
            self.sent[job.job_id] = job.state.name
        changes = getattr(getattr(self.factory, "registry", None), "changes", None)
        if changes is not None:
            self._unsubscribe = changes.subscribe(self.changed)
        self._loop.start(self.limits.interval, now=False)

    def stopService(self):
        super().stopService()
        self._unsubscribe()
        if self._loop.running:
            self._loop.stop()

    def changed(self, kind: str, object_id: str) -> None:
        """A job changed state: notify now (a state passed quicker than a look is not lost)."""
        if kind == "job" and (job := self.factory.jobs.get(object_id)) is not None:
            self._consider(job)

    def tick(self) -> None:
        live = set()
        for job in self.factory.list_jobs(SITE):
            live.add(job.job_id)
            if not self._consider(job):
                return
        for gone in set(self.sent) - live:
            del self.sent[gone]
        for gone in set(self._in_order) - live:
            if not self._in_order[gone].locked:
                del self._in_order[gone]

    def _consider(self, job) -> bool:
        """Notify of ``job``'s state if it is new and notified of; False when too many
        notifications are under way (the next look at all jobs takes it up)."""
        desc, state = job.description, job.state.name
        if not desc.notification or self.sent.get(job.job_id) == state:
            return True
        if self.pending >= self.limits.max_pending:
            return False
        self.sent[job.job_id] = state
        if state in desc.notify_states:
            self.pending += 1
            doc = {"href": self.job_url(job.job_id) if self.job_url else None,
                   "jobId": job.job_id, "status": state,
                   "statusMessage": job.lifecycle.message, "name": desc.name,
                   "exitCode": None if job.exit_code is None else str(job.exit_code)}
            lock = self._in_order.setdefault(job.job_id, defer.DeferredLock())
            d = lock.run(lambda: defer.Deferred.fromCoroutine(
                self._deliver(desc.notification, doc)))
            d.addBoth(self._done)
        return True

    def _done(self, _result) -> None:
        self.pending -= 1

    async def _deliver(self, url: str, doc: dict) -> bool:
        """POST with retries until the deadline; whether it was delivered."""
        policy = self.factory.transfers
        if not policy.allows(url):  # the site's prefixes changed since the submission
            log.warning("job %s: notification to %s refused by transfers.url_prefixes",
                        doc["jobId"], url)
            return False
        give_up = self.reactor.seconds() + self.limits.deadline
        delay = 1.0
        while True:
            try:
                status = await threads.deferToThread(self.send, url, doc, self.limits.timeout)
                if status < 300:
                    return True
                problem = f"HTTP {status}"
            except Exception as err:  # any failure of one attempt: retried
                problem = str(err)
            if self.reactor.seconds() + delay >= give_up:
                log.warning("job %s: notification %s to %s given up after %g s: %s",
                            doc["jobId"], doc["status"], url, self.limits.deadline, problem)
                return False
            await task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, 10.0)
