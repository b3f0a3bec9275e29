"""``GET /<SITE>/metrics``: the site's state for monitoring, in the Prometheus text format.

Served to administrators (Basic or Bearer) or to whoever sends ``Authorization: Bearer
<metrics.token>`` when the configuration sets one.  Every value is read from the factory at
scrape time (prometheus_client's custom-collector API), so nothing is counted twice and a
restarted site reports what it took back:

- ``gridvm_instances{state}`` and ``gridvm_jobs{state,reason}``: gauges over what the factory
  keeps;
- ``gridvm_boots_total{outcome}`` and ``gridvm_boot_seconds`` (a histogram of REQUESTED to
  READY) over the instances the factory keeps;
- ``gridvm_tsi_round_trip_seconds{instance}``: the last health ping of each live instance;
- ``gridvm_store_bytes`` (image blobs) and ``gridvm_site_storage_bytes`` (job files), walked
  in a thread at most every ``DISK_INTERVAL`` seconds;
- ``gridvm_failed_logins_total``: from the REST site's failed-login backoff;
- ``gridvm_host_up{host,state}`` (1 for the host's state: UP, DRAINING or DOWN) and
  ``gridvm_host_used_vcpus{host}``: the hypervisor hosts.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer, threads
from twisted.web import resource, server

from base.identity import Caller
from base.reasons import Reason
from tsf.rest.app import RestApp, answer_failure
from tsf.rest.http import RestError

log = logging.getLogger(__name__)

SITE = Caller.of("gridvm-metrics", admin=True)
BOOT_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0)
#: Seconds between two walks of the image store and the site storage.
DISK_INTERVAL = 30.0


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files below ``root`` (0 if it does not exist)."""
    total = 0
    for parent, _dirs, names in os.walk(root):
        for name in names:
            try:
                stat = os.lstat(os.path.join(parent, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(parent, name)):
                total += stat.st_size
    return total


@dataclass
class DiskUse:
    store: int = 0
    storage: int = 0
    measured: float = 0.0  #: time.monotonic() of the last walk, 0 = never


class SiteCollector:
    """Reads the factory (and the login backoff) at each scrape."""

    def __init__(self, factory, backoff, disk: DiskUse):
        self.factory, self.backoff, self.disk = factory, backoff, disk

    def collect(self):
        instances = self.factory.list_instances(SITE)
        by_state = GaugeMetricFamily("gridvm_instances", "Instances by state", labels=["state"])
        counts: dict[str, int] = {}
        for target in instances:
            counts[target.state.name] = counts.get(target.state.name, 0) + 1
        for state, count in sorted(counts.items()):
            by_state.add_metric([state], count)
        yield by_state

        boots = CounterMetricFamily("gridvm_boots", "Instances that booted (READY) or failed "
                                    "before READY", labels=["outcome"])
        seconds = []
        failed = 0
        for target in instances:
            entered = target.lifecycle.entered
            if "READY" in entered:
                seconds.append(entered["READY"] - entered.get("REQUESTED", entered["READY"]))
            elif target.state.terminal and "BOOTING" in entered:
                failed += 1
        boots.add_metric(["ready"], len(seconds))
        boots.add_metric(["failed"], failed)
        yield boots
        buckets, below = [], 0
        for bound in BOOT_BUCKETS:
            below = sum(s <= bound for s in seconds)
            buckets.append((repr(bound), below))
        buckets.append(("+Inf", len(seconds)))
        histogram = HistogramMetricFamily("gridvm_boot_seconds", "Seconds from REQUESTED to "
                                          "READY")
        histogram.add_metric([], buckets, sum_value=sum(seconds))
        yield histogram

        rtt = GaugeMetricFamily("gridvm_tsi_round_trip_seconds", "The last TSI health ping's "
                                "round trip per live instance", labels=["instance"])
        for target in instances:
            value = target.describe()["health"].get("roundTripSeconds")
            if value is not None and not target.state.terminal:
                rtt.add_metric([target.instance_id], value)
        yield rtt

        jobs = GaugeMetricFamily("gridvm_jobs", "Jobs by state and reason",
                                 labels=["state", "reason"])
        job_counts: dict[tuple[str, str], int] = {}
        for job in self.factory.list_jobs(SITE):
            key = (job.state.name, str(job.lifecycle.reason or ""))
            job_counts[key] = job_counts.get(key, 0) + 1
        for key, count in sorted(job_counts.items()):
            jobs.add_metric(list(key), count)
        yield jobs

        yield GaugeMetricFamily("gridvm_store_bytes", "Bytes of image blobs in the store",
                                value=self.disk.store)
        yield GaugeMetricFamily("gridvm_site_storage_bytes", "Bytes of job files in site "
                                "storage", value=self.disk.storage)
        yield CounterMetricFamily("gridvm_failed_logins", "Failed logins since the start",
                                  value=getattr(self.backoff, "failures_total", 0))
        yield from self._hosts()

    def _hosts(self):
        if self.factory.hosts is None:
            return
        state = GaugeMetricFamily("gridvm_host_up", "1 for each hypervisor host's state",
                                  labels=["host", "state"])
        used = GaugeMetricFamily("gridvm_host_used_vcpus", "vCPUs gridvm's live instances "
                                 "hold per hypervisor host", labels=["host"])
        usage = self.factory.registry.host_usage()
        for view in self.factory.hosts.views():
            state.add_metric([view.name, str(view.state)], 1)
            held = usage.get(view.name)
            used.add_metric([view.name], held.vcpus if held else 0)
        yield state
        yield used


class MetricsResource(resource.Resource):
    """The leaf ``/<SITE>/metrics``."""

    isLeaf = True

    def __init__(self, app: RestApp, token: str = ""):
        super().__init__()
        self.app, self.token = app, token
        factory = app.factory
        self.disk = DiskUse()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SiteCollector(factory, app.authenticator.backoff, self.disk))
        self._walking = False

    def render_GET(self, request: server.Request):
        d = defer.Deferred.fromCoroutine(self._answer(request))
        d.addErrback(answer_failure, request, "metrics")
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request) -> None:
        header = request.getHeader(b"authorization") or b""
        if not (self.token and hmac.compare_digest(header, b"Bearer " + self.token.encode())):
            address = request.getClientAddress()
            principal = await self.app.authenticator.authenticate(
                header or None, getattr(address, "host", None))
            if not principal.caller.admin:
                raise RestError(403, "the metrics are for administrators (or the configured "
                                     "metrics token)", Reason.NOT_AUTHORIZED)
        await self._measure_disk()
        body = generate_latest(self.registry)
        if not request.finished:
            request.setHeader("content-type", CONTENT_TYPE_LATEST)
            request.write(body)
            request.finish()

    async def _measure_disk(self) -> None:
        """Walk the store and the storage again when the last walk is old (a scrape while
        another walks answers the older figures)."""
        if self._walking or (self.disk.measured and
                             time.monotonic() - self.disk.measured < DISK_INTERVAL):
            return
        factory = self.app.factory
        store, storage = Path(factory.repository.store.root), Path(factory.storage_root)
        self._walking = True
        try:
            self.disk.store, self.disk.storage = await threads.deferToThread(
                lambda: (tree_bytes(store), tree_bytes(storage)))
            self.disk.measured = time.monotonic()
        finally:
            self._walking = False
