"""The site's image exchange: the subscription refresher (a Twisted service) and the key
that signs the image lists the site publishes.

Each ``[[subscriptions]]`` table is refreshed every ``refresh_s`` seconds, the first time
at start: the list is fetched through the site's transfer policy (the same URL prefixes,
size limit and deadline as job imports), accepted (``image_repo.subscriptions.accept``)
and synced; the images it lists are downloaded the same way.  Every step is logged
(``gridvm.subscriptions``), the outcome is kept in the catalogue.  A list that cannot be
fetched or accepted leaves the images as they are, until the expiry of the list accepted
last: from then on they are deleted (not matched).
"""

from __future__ import annotations

import datetime
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from twisted.application import service
from twisted.internet import defer, task, threads

from base.errors import GridvmError
from image_repo import smime
from image_repo.subscriptions import (
    Subscription,
    SyncReport,
    accept,
    expire,
    load_state,
    save_state,
    sync,
)
from image_repo.trust import load_anchors
from target_system.transfers import TransferPolicy, fetch_url
from tsf.config import ConfigError, SiteConfig

log = logging.getLogger("gridvm.subscriptions")
#: seconds between checks whether an accepted list has expired
EXPIRY_CHECK_S = 60.0


@dataclass(frozen=True)
class SubscriptionSpec:
    """One configured subscription with the anchors its signer must chain to."""

    subscription: Subscription
    anchors: tuple[x509.Certificate, ...]
    interval: float


def subscription_specs(config: SiteConfig) -> list[SubscriptionSpec]:
    """The configured subscriptions; ConfigError when an anchors file cannot be read."""
    specs = []
    for i, table in enumerate(config.subscriptions):
        source = table.anchors or config.trust.anchors
        try:
            anchors = tuple(load_anchors(source))
        except GridvmError as err:
            raise ConfigError(f"subscriptions[{i}].anchors: {err.message}") from None
        specs.append(SubscriptionSpec(
            Subscription(table.name, table.url, table.vo or None, table.endorser_dn or None),
            anchors, table.refresh_s))
    return specs


def refresh(repository, spec: SubscriptionSpec, policy: TransferPolicy,
            now: datetime.datetime) -> SyncReport:
    """Blocking: fetch, accept and sync one subscription; on failure record why (and
    delete its images once the list accepted last has expired), then raise."""
    subscription = spec.subscription
    prefix = f"subscription {subscription.name}"
    try:
        with tempfile.TemporaryDirectory(prefix="gridvm-subscription-") as scratch:
            path = Path(scratch) / "list"
            fetch_url(subscription.url, path, TransferPolicy(
                policy.url_prefixes, smime.MAX_MESSAGE, policy.timeout))
            message = path.read_bytes()
        image_list = accept(message, subscription, spec.anchors, now)
    except GridvmError as err:
        save_state(repository, subscription, now, error=str(err))
        expire_due(repository, [spec], now)
        raise
    log.info("%s: list %s version %s by %s accepted, %d image(s), expires %s", prefix,
             image_list.identifier, image_list.version or "-", image_list.endorser.dn,
             len(image_list.images), image_list.expires.isoformat())

    def download(url: str, destination: Path) -> None:
        fetch_url(url, destination, policy)

    report = sync(repository, subscription, image_list, download,
                  lambda line: log.info("%s: %s", prefix, line))
    save_state(repository, subscription, now, image_list=image_list,
               error="; ".join(f"{i}: {why}" for i, why in report.failed) or None)
    log.info("%s: %s", prefix, report.summary())
    return report


def expire_due(repository, specs: list[SubscriptionSpec], now: datetime.datetime) -> None:
    """Blocking: delete the images of every subscription whose accepted list has expired."""
    for spec in specs:
        state = load_state(repository, spec.subscription.name)
        if state is not None and state.expires is not None and state.expires <= now:
            expire(repository, spec.subscription,
                   lambda line, name=spec.subscription.name:
                   log.warning("subscription %s: %s", name, line))


class SubscriptionRefresher(service.Service):
    """Refreshes every subscription on its own interval; one refresh of each at a time."""

    name = "subscriptions"

    def __init__(self, repository, specs: list[SubscriptionSpec], policy: TransferPolicy,
                 reactor, clock=lambda: datetime.datetime.now(datetime.UTC)):
        self.repository, self.specs, self.policy = repository, specs, policy
        self.reactor, self.clock = reactor, clock
        self._loops: list[task.LoopingCall] = []
        self._running: set[defer.Deferred] = set()

    def startService(self) -> None:
        super().startService()
        for spec in self.specs:
            loop = task.LoopingCall(self._tick, spec)
            loop.clock = self.reactor
            loop.start(spec.interval, now=True).addErrback(
                lambda failure: log.error("subscription loop ended: %s",
                                          failure.getTraceback()))
            self._loops.append(loop)
        if self.specs:  # between refreshes, a list may expire
            loop = task.LoopingCall(self._expiry_tick)
            loop.clock = self.reactor
            loop.start(EXPIRY_CHECK_S, now=False)
            self._loops.append(loop)

    def _expiry_tick(self) -> defer.Deferred:
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      expire_due, self.repository, self.specs, self.clock())
        d.addErrback(lambda failure: log.error("expiry check failed:\n%s",
                                               failure.getTraceback()))
        return d

    def _tick(self, spec: SubscriptionSpec) -> defer.Deferred:
        d = self.refresh_now(spec)
        d.addErrback(lambda failure: None)  # logged in refresh_now; the loop goes on
        return d

    def refresh_now(self, spec: SubscriptionSpec) -> defer.Deferred:
        """Refresh one subscription in a thread; fires with the report."""
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), refresh,
                                      self.repository, spec, self.policy, self.clock())
        self._running.add(d)

        def done(result):
            self._running.discard(d)
            return result

        def failed(failure):
            if failure.check(GridvmError):
                log.warning("subscription %s: refresh failed: %s", spec.subscription.name,
                            failure.value)
            else:
                log.error("subscription %s: refresh failed:\n%s", spec.subscription.name,
                          failure.getTraceback())
            return failure

        d.addBoth(done)
        d.addErrback(failed)
        return d

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        running = list(self._running)
        return defer.DeferredList(running, consumeErrors=True) if running else None


# --------------------------------------------------------------------------- signing ---------

@dataclass(frozen=True)
class ListSigner:
    """The certificate and key that sign the site's image lists."""

    certificate: x509.Certificate
    key: object

    @property
    def endorser_dn(self) -> str:
        return smime.slash_dn(self.certificate.subject)

    @property
    def ca_dn(self) -> str:
        return smime.slash_dn(self.certificate.issuer)

    def sign(self, content: bytes) -> bytes:
        return smime.sign(content, self.certificate, self.key)

    @classmethod
    def from_config(cls, config: SiteConfig) -> ListSigner:
        """``exchange.list_certificate``/``list_key``, or a self-signed pair made once in
        the state directory."""
        from cryptography.hazmat.primitives import serialization

        from tsf.service import self_signed_certificate

        exchange = config.exchange
        if exchange.list_certificate:
            cert_path, key_path = Path(exchange.list_certificate), Path(exchange.list_key)
        else:
            cert_path = config.state_dir / "imagelist" / "signer.pem"
            key_path = config.state_dir / "imagelist" / "signer.key"
            if not (cert_path.exists() and key_path.exists()):
                self_signed_certificate(cert_path, key_path)
                log.info("generated a self-signed image-list signing certificate: %s",
                         cert_path)
        try:
            certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except (OSError, ValueError) as err:
            raise ConfigError(f"exchange.list_certificate/list_key: cannot be read: {err}"
                              ) from None
        return cls(certificate, key)
