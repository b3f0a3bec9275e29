"""``GET /<SITE>/events``: the caller's job and instance state changes as server-sent events.

Any client may use it: a browser with the dashboard's session cookie, or any HTTP client with
the REST site's Basic or Bearer credentials.  The stream starts with one event per visible job
(``event: job``) and instance (``event: instance``) giving its state now, then one event per
change, each ``data`` a JSON object (``id``, ``state``, ``reason``, ``exitCode`` for jobs).
``?job=ID`` narrows it to one job and its instance.  A comment line every ``heartbeat``
seconds keeps proxies from closing it; it ends after ``lifetime`` seconds (clients
reconnect; ``retry`` says when).
A stream opened with a session ends with the session (logout).
Streams are bounded per user and in total (429 beyond).  Changes come from the registry's
:class:`~tsf.changes.ChangeFeed` as they happen, so a stream shows every state a job or an
instance passed through, however briefly; a snapshot of the factory's
``list_jobs``/``list_instances`` (the listing the REST API answers) every ``interval``
seconds catches what changes without a transition (an exit code set after its state).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass

from twisted.internet import defer, task
from twisted.web import resource, server

from base.reasons import Reason
from tsf.dashboard.sessions import COOKIE, SessionStore
from tsf.rest.app import RestApp, answer_failure
from tsf.rest.auth import Principal
from tsf.rest.http import RestError

log = logging.getLogger(__name__)
RETRY_MS = 1000  #: how long a client waits before it reconnects


@dataclass(frozen=True)
class StreamLimits:
    interval: float = 2.0  #: seconds between two snapshots (changes are pushed at once)
    heartbeat: float = 15.0  #: seconds between two comment lines
    lifetime: float = 3600.0  #: seconds a stream lasts before the site ends it
    per_user: int = 8
    total: int = 256


def job_event(job) -> dict:
    return {"id": job.job_id, "state": job.state.name, "reason": job.lifecycle.reason,
            "exitCode": job.exit_code, "instance": job.instance_id}


def instance_event(target) -> dict:
    return {"id": target.instance_id, "state": target.state.name,
            "reason": target.lifecycle.reason}


def snapshot(factory, caller, job_id: str | None) -> dict[tuple[str, str], dict]:
    """What a stream reports: (kind, id) -> the event's data."""
    state: dict[tuple[str, str], dict] = {}
    jobs = factory.list_jobs(caller)
    for job in jobs:
        if job_id is not None and job.job_id != job_id:
            continue
        state[("job", job.job_id)] = job_event(job)
    wanted = {data["instance"] for data in state.values()}
    for target in factory.list_instances(caller):
        if job_id is None or target.instance_id in wanted:
            state[("instance", target.instance_id)] = instance_event(target)
    return state


def one_event(factory, caller, job_id: str | None, kind: str, object_id: str) -> dict | None:
    """The event data of one changed job or instance, if the stream shows it (else None)."""
    try:
        if kind == "job":
            if job_id is not None and object_id != job_id:
                return None
            return job_event(factory.job(object_id, caller))
        if job_id is not None and factory.job(job_id, caller).instance_id != object_id:
            return None
        return instance_event(factory.instance(object_id, caller))
    except KeyError:  # not the caller's (NotFound), or gone
        return None


class EventStreams(resource.Resource):
    """The leaf ``/<SITE>/events``."""

    isLeaf = True

    def __init__(self, app: RestApp, sessions: SessionStore, reactor,
                 limits: StreamLimits | None = None):
        super().__init__()
        self.app, self.sessions, self.reactor = app, sessions, reactor
        self.limits = limits or StreamLimits()
        self.open: Counter[str] = Counter()

    def render_GET(self, request: server.Request):
        d = defer.Deferred.fromCoroutine(self._principal(request))
        d.addCallback(self._start, request)
        # no WWW-Authenticate: a browser would prompt for Basic
        d.addErrback(answer_failure, request, "event stream", challenge=False)
        return server.NOT_DONE_YET

    async def _principal(self, request: server.Request) -> tuple[Principal, str | None]:
        """The caller, and the id of the dashboard session it came by (None: credentials)."""
        session = self.sessions.get((request.getCookie(COOKIE.encode()) or b"").decode(
            "latin-1"))
        if session is not None:
            user = self.app.authenticator.users.get(session.user)
            if user is not None:
                return Principal(user, "SESSION"), session.session_id
        address = request.getClientAddress()
        principal = await self.app.authenticator.authenticate(
            request.getHeader(b"authorization"), getattr(address, "host", None))
        return principal, None

    def _start(self, found: tuple[Principal, str | None], request: server.Request) -> None:
        principal, session_id = found
        caller = principal.caller  # 401 for the anonymous caller
        user, limits = caller.user, self.limits
        if self.open[user] >= limits.per_user or sum(self.open.values()) >= limits.total:
            raise RestError(429, f"too many event streams open (at most {limits.per_user} "
                                 f"per user, {limits.total} in all): close one",
                            Reason.QUOTA_EXCEEDED, {"Retry-After": "10"})
        job_id = (request.args or {}).get(b"job", [b""])[0].decode("utf-8", "replace") or None
        if job_id is not None:
            factory = self.app.factory
            try:
                factory.job(job_id, caller)
            except KeyError:
                raise RestError(404, f"no job {job_id}", Reason.NOT_FOUND) from None
        self.open[user] += 1
        request.setHeader("content-type", "text/event-stream; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        request.setHeader("x-accel-buffering", "no")
        request.write(f"retry: {RETRY_MS}\n\n".encode())
        Stream(self, request, caller, job_id, session_id).begin()


class Stream:
    """One open stream: a snapshot loop, a heartbeat and an end."""

    def __init__(self, owner: EventStreams, request: server.Request, caller, job_id,
                 session_id: str | None = None):
        self.owner, self.request, self.caller, self.job_id = owner, request, caller, job_id
        self.session_id = session_id  #: the stream ends with this dashboard session
        self.last: dict[tuple[str, str], dict] = {}
        self.quiet = 0.0
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = owner.reactor
        self.ended = False
        self._unsubscribe = lambda: None

    def begin(self) -> None:
        self.deadline = self.owner.reactor.callLater(self.owner.limits.lifetime, self.close)
        self.request.notifyFinish().addBoth(lambda _r: self.stop())
        self.loop.start(self.owner.limits.interval, now=True).addErrback(
            lambda f: (log.error("event stream: %s", f.getTraceback()), self.close()))
        changes = getattr(self.owner.app.factory.registry, "changes", None)
        if changes is not None and not self.ended:
            self._unsubscribe = changes.subscribe(self.changed)

    def _send(self, key: tuple[str, str], data: dict) -> bool:
        if self.last.get(key) == data:
            return False
        self.request.write(f"event: {key[0]}\ndata: {json.dumps(data)}\n\n".encode())
        self.last[key] = data
        return True

    def changed(self, kind: str, object_id: str) -> None:
        """A job or an instance changed state: tell the client now, if the stream shows it."""
        if self.ended or self.request.finished:
            return
        data = one_event(self.owner.app.factory, self.caller, self.job_id, kind, object_id)
        if data is not None and self._send((kind, object_id), data):
            self.quiet = 0.0

    def tick(self) -> None:
        if self.session_id is not None and not self.owner.sessions.alive(self.session_id):
            self.close()  # logged out (or the session expired)
            return
        now = snapshot(self.owner.app.factory, self.caller, self.job_id)
        wrote = False
        for key, data in now.items():
            wrote = self._send(key, data) or wrote
        self.last = now
        self.quiet = 0.0 if wrote else self.quiet + self.owner.limits.interval
        if self.quiet >= self.owner.limits.heartbeat:
            self.request.write(b": keep-alive\n\n")
            self.quiet = 0.0

    def close(self) -> None:
        if not self.ended and not self.request.finished:
            self.stop()
            self.request.finish()

    def stop(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._unsubscribe()
        if self.loop.running:
            self.loop.stop()
        if self.deadline.active():
            self.deadline.cancel()
        self.owner.open[self.caller.user] -= 1
