"""The site's service tree: VM manager, factory and the REST servers in one MultiService.

``start_site(config)`` starts the whole tree in-process and returns the running
:class:`SiteService` (``http_base`` / ``https_base`` are the BASE URLs);
``stopService()`` shuts it down in reverse order: web servers, factory (every instance
terminated), VM manager (hypervisor connection closed), catalogue.  Each phase is logged.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from pathlib import Path

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer, threads
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from base.db import make_engine
from image_repo.repository import ImageRepository
from image_repo.uploads import Uploads
from target_system.instance import Deadlines, HealthPolicy, SiteCredentials
from target_system.store import StateStore
from target_system.transfers import TransferPolicy
from tsf.config import SiteConfig
from tsf.exchange import ListSigner, SubscriptionRefresher, subscription_specs
from tsf.factory import Quotas, TargetSystemFactory
from tsf.notifications import Notifier
from tsf.rest import build_app, build_site
from tsf.rest.app import Limits, Sizing
from tsf.rest.auth import Authenticator, TokenIssuer
from tsf.rest.backoff import LoginBackoff
from tsf.users import UsersFile
from vmm.hosts import HostPool, build_hosts

log = logging.getLogger("gridvm.site")


def self_signed_certificate(cert_path: Path, key_path: Path, hosts=("localhost",
                                                                    "127.0.0.1")) -> None:
    """Write a self-signed server certificate (EC P-256, 2 years) for ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridvm REST site"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridvm")])
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=730))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The HTTPS context: the server certificate (chain) and key, TLS 1.2 or newer."""

    def __init__(self, cert_pem: bytes, key_pem: bytes):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        chain = x509.load_pem_x509_certificates(cert_pem)
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(serialization.load_pem_private_key(key_pem, None))
        context.check_privatekey()
        self._context = context

    def serverConnectionForTLS(self, tls_protocol):
        from OpenSSL import SSL

        return SSL.Connection(self._context, None)


class ListeningService(service.Service):
    """Listens with a web site on a TCP (or TLS) port; ``port`` is the bound one."""

    def __init__(self, name: str, reactor, site, host: str, port: int, tls=None):
        self.setName(name)
        self.reactor, self.site, self.host, self.wanted, self.tls = reactor, site, host, port, tls
        self.listening = None

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    def startService(self):
        super().startService()
        if self.tls is None:
            self.listening = self.reactor.listenTCP(self.wanted, self.site, interface=self.host)
        else:
            self.listening = self.reactor.listenSSL(self.wanted, self.site, self.tls,
                                                    interface=self.host)

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            return self.listening.stopListening()
        return None


class SiteService(service.MultiService):
    """VM manager + factory + REST servers; build with :func:`start_site`."""

    def __init__(self, config: SiteConfig, reactor):
        super().__init__()
        self.config, self.reactor = config, reactor
        self.repository: ImageRepository | None = None
        self.vmm: HostPool | None = None
        self.factory: TargetSystemFactory | None = None
        self.subscriptions: SubscriptionRefresher | None = None
        self.users: UsersFile | None = None
        self.app = None
        self.notifier: Notifier | None = None
        self.http: ListeningService | None = None
        self.https: ListeningService | None = None

    def _base(self, listener: ListeningService | None, scheme: str) -> str | None:
        if listener is None or listener.listening is None:
            return None
        return f"{scheme}://127.0.0.1:{listener.port}/{self.config.site.name}/rest/core"

    @property
    def http_base(self) -> str | None:
        return self._base(self.http, "http")

    @property
    def https_base(self) -> str | None:
        return self._base(self.https, "https")

    async def start(self) -> SiteService:
        config, reactor = self.config, self.reactor
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        log.info("state directory %s", state)
        trust = config.trust_policy()
        self.repository = ImageRepository(config.database_url, config.image_store)
        images = len(self.repository.list(_admin()))
        log.info("catalogue %s: %d image(s)", _safe_url(config.database_url), images)
        self.users = UsersFile(config.users_file)
        log.info("users file %s: %d user(s)", config.users_file, len(self.users))
        specs = config.host_specs()
        self.vmm = HostPool(build_hosts(specs, state / "vmm", reactor,
                                        prefix=config.site.domain_prefix,
                                        restore=config.fast_start.restore),
                            reactor, grace=config.host_grace(),
                            drained_file=state / "vmm" / "drained.json")
        adopted = await self.vmm.start()
        log.info("%d hypervisor host(s) (%s); %d domain(s) of an earlier run found",
                 len(specs), ", ".join(f"{s.name} {s.uri}" for s in specs), len(adopted))
        self.vmm.setServiceParent(self)
        credentials = SiteCredentials.load_or_create(state / "ca")
        h, d = config.health, config.deadlines
        self.factory = TargetSystemFactory(
            self.repository, self.vmm, credentials, config.storage, reactor,
            quotas=Quotas(config.quotas.per_user, config.quotas.total),
            deadlines=Deadlines(staging=d.staging, booting=d.booting, connecting=d.connecting),
            health=HealthPolicy(interval=h.interval, missed_budget=h.missed_budget,
                                idle_timeout=h.idle_timeout or None, lease=h.lease or None),
            store=StateStore(make_engine(config.database_url), reactor),
            job_lifetime=config.limits.job_lifetime_days * 86400 or None,
            transfers=TransferPolicy(tuple(config.transfers.url_prefixes),
                                 config.transfers.max_mib << 20, config.transfers.timeout_s),
            pools=config.pool_specs(), trust=trust, admission=config.admission(),
            hosts=self.vmm, host_policy=config.host_policy())
        self.factory.keep_on_stop = config.site.keep_instances
        counts = await self.factory.recover(adopted)
        log.info("taken back from an earlier run: %(instances)d instance(s), "
                 "%(reconnected)d reconnected, %(awaiting)d awaiting their host; %(jobs)d "
                 "live job(s), %(resumed)d resumed; "
                 "%(finished)d finished job(s)",
                 counts)
        self.factory.setServiceParent(self)
        self.subscriptions = SubscriptionRefresher(
            self.repository, subscription_specs(config), self.factory.transfers, reactor)
        self.subscriptions.setServiceParent(self)
        for spec in self.subscriptions.specs:
            sub = spec.subscription
            log.info("subscription %s: %s every %gs, for %s, signed by %s", sub.name, sub.url,
                     spec.interval, sub.vo or "everyone", sub.endorser_dn or "any endorser "
                     f"chaining to {len(spec.anchors)} anchor(s)")
        log.info("factory ready: quotas %d per user, %d in total; job files under %s",
                 config.quotas.per_user, config.quotas.total, config.storage)
        for pool in config.pool_specs():
            log.info("warm pool %s: %d idle instance(s) of %s (%d vCPU, %d MiB) for %s",
                     pool.name, pool.idle, pool.image, pool.vcpus, pool.memory_mib,
                     ", ".join(pool.vos) or "anyone")
        log.info("trust: %d anchor certificate(s)%s; endorsements %s", len(trust.anchors),
                 f" from {config.trust.anchors}" if config.trust.anchors else "",
                 "required" if trust.require else "not required")
        limits = config.limits
        tokens = TokenIssuer.load_or_create(state / "token-secret", config.site.name,
                                            default_lifetime=limits.token_lifetime_s)
        backoff = LoginBackoff(limits.login_failures_free, limits.login_backoff_s,
                               limits.login_backoff_max_s)
        uploads = Uploads(self.repository, quota_bytes=(limits.image_quota_mib << 20) or None,
                          expiry_s=limits.image_upload_expiry_s)
        self.app = build_app(
            config.site.name, self.factory, Authenticator(self.users, tokens, backoff=backoff),
            tokens,
            Limits(max_json=limits.max_json_kib << 10, max_upload=limits.max_upload_mib << 20,
                   max_image_file=limits.image_file_mib << 20),
            sizing=Sizing(limits.max_cpus, limits.max_memory_mib, limits.max_runtime_s,
                          max(limits.max_nodes, 1)),
            exchange=config.exchange, list_signer=ListSigner.from_config(config),
            uploads=uploads)
        expiry = TimerService(60, threads.deferToThread, uploads.expire)
        expiry.clock = reactor
        expiry.setServiceParent(self)
        sites = await self.factory.sites.load()
        log.info("%d UNICORE site(s) of earlier runs kept; jobs kept %s after submission", sites,
                 f"{limits.job_lifetime_days:g} days" if limits.job_lifetime_days
                 else "until deleted")
        site = build_site(self.app, metrics_token=config.metrics.token)
        if config.http.port >= 0:
            self.http = ListeningService("http", reactor, site, config.http.host,
                                         config.http.port)
            self.http.setServiceParent(self)
        if config.https.port >= 0:
            self.https = ListeningService("https", reactor, site, config.https.host,
                                          config.https.port, self._tls_options())
            self.https.setServiceParent(self)
        self.startService()
        base_url = self.https_base or self.http_base
        self.notifier = Notifier(self.factory, reactor,
                                 lambda job_id: f"{base_url}/jobs/{job_id}")
        self.notifier.setServiceParent(self)
        for base in (self.http_base, self.https_base):
            if base:
                log.info("REST site listening: %s", base)
        return self

    def _tls_options(self):
        https = self.config.https
        if https.certificate:
            cert_path, key_path = Path(https.certificate), Path(https.key or https.certificate)
        else:
            cert_path = self.config.state_dir / "https" / "server.pem"
            key_path = self.config.state_dir / "https" / "server.key"
            if not (cert_path.exists() and key_path.exists()):
                self_signed_certificate(cert_path, key_path)
                log.info("generated a self-signed HTTPS certificate: %s", cert_path)
        return ServerTLS(cert_path.read_bytes(), key_path.read_bytes())

    def stopService(self):
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if not self.running:
            return
        live = len(self.factory.registry.live()) if self.factory else 0
        log.info("shutting down: closing the REST ports, %s %d instance(s)",
                 "leaving running" if self.config.site.keep_instances else "terminating", live)
        service.Service.stopService(self)
        # One after the other (MultiService would stop them all at once): the factory
        # needs the hypervisor connection to terminate its instances.
        for child in reversed(list(self)):
            await defer.maybeDeferred(child.stopService)
            log.info("stopped %s", child.name)
        if self.repository is not None:
            self.repository.close()
        log.info("shut down cleanly")


def _admin():
    from base.identity import Caller

    return Caller.of("gridvm-site", admin=True)


def _safe_url(url: str) -> str:
    """A database URL without its password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':')[0]}:***@{host}"
    return url


async def start_site(config: SiteConfig, reactor=None) -> SiteService:
    """Start the whole service tree in-process; stop it with ``stopService()``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    site = SiteService(config, reactor)
    try:
        return await site.start()
    except BaseException:
        if site.vmm is not None:
            await defer.maybeDeferred(site.vmm.close)
        if site.repository is not None:
            site.repository.close()
        raise
