"""The site's configuration: a TOML file, every key optional, unknown keys are errors.

Example (every value shown is the default; ``state_dir`` defaults to ``$GRIDVM_HOME/site``)::

    [site]
    name = "GRIDVM"                   # URL prefix: /<name>/rest/core
    state_dir = "/var/lib/gridvm/site" # database, image store, storage, CA, keys, users
    database = ""                     # SQLAlchemy URL; "" = SQLite <state_dir>/gridvm.sqlite
    image_store = ""                  # "" = <state_dir>/images
    storage = ""                      # job files kept after the VM; "" = <state_dir>/storage
    users_file = ""                   # "" = <state_dir>/users.json
    libvirt_uri = "qemu:///system"
    domain_prefix = "gridvm-"
    keep_instances = true             # on shutdown, leave VMs and their jobs running: the
                                      # next start re-adopts them (false: terminate them)

    [http]
    host = "127.0.0.1"
    port = 8080                       # 0 = pick a free port, -1 = no plain HTTP
    [https]
    host = "127.0.0.1"
    port = 8443                       # 0 = pick a free port, -1 = no HTTPS
    certificate = ""                  # PEM; "" = self-signed, made on first start
    key = ""

    [quotas]
    per_user = 4                      # live instances per user
    total = 8                         # live instances on the site

    [limits]
    max_json_kib = 1024               # a JSON request body
    max_upload_mib = 256              # one uploaded file (downloads are not limited)
    image_file_mib = 4096             # one file of an image a creator registers
    image_quota_mib = 20480           # a user's images in the store (0 = no quota)
    image_upload_expiry_s = 3600      # a registration waiting for its files is dropped
    max_cpus = 4                      # published sizing resources: the most one job
    max_memory_mib = 8192             # may ask for (more is a 400 at submit and in
    max_runtime_s = 86400             # images/match); an image's default size is cut
    max_disk_gib = 64                 # down to them
    max_nodes = 4                     # VMs of one multi-node job (Resources.Nodes)
    user_max_jobs = 1000              # per user: jobs kept (finished or not),
    user_max_unfinished_jobs = 100    # jobs not yet finished,
    user_max_description_mib = 16     # JSON of the job descriptions kept,
    user_max_storage_gib = 10         # files of their jobs in site storage (0 = no limit)
    token_lifetime_s = 43200          # default lifetime of issued tokens
    login_failures_free = 3           # failed logins in a row per source address and per
                                      # user name before each further one bars that key
    login_backoff_s = 1.0             # for this long, doubling per failure (0 = no bars)
    login_backoff_max_s = 300.0       # up to this long
    job_lifetime_days = 30            # a job and its files are destroyed this long after
                                      # submission (its owner may move terminationTime
                                      # within this span); 0 = kept until deleted

    [transfers]                       # UNICORE Imports/Exports the site does for a job
    url_prefixes = []                 # http(s) URL prefixes it may fetch from and upload
                                      # to, e.g. ["https://data.example.org/"]; none = no
                                      # URLs (a file of another of the user's jobs works)
    max_mib = 1024                    # largest file
    timeout_s = 300                   # one transfer, in all

    [[hosts]]                         # hypervisor hosts (none: one, site.libvirt_uri,
    name = "node1"                    # named "default"), one table each
    uri = "qemu+ssh://gridvm@node1/system"  # libvirt URI (remote drivers: ssh, tls)
    address = "127.0.0.1"             # where the host binds forwarded TSI ports
    site_address = "127.0.0.1"        # where the host reaches the site's callback listener
    cpus = 0                          # capacity overrides; 0 = what libvirt reports
    memory_mib = 0
    enabled = true                    # false: takes no new instance (DRAINING)
    storage_pool = ""                 # a directory on the host: images and media go there
                                      # as libvirt volumes (the host needs only libvirtd);
                                      # "" = files of this machine (a local host)

    [placement]                       # which host boots a new instance
    strategy = "spread"               # "spread" (most free vCPUs) or "pack" (fewest)
    cpu_ratio = 4.0                   # vCPUs per host CPU gridvm's instances may hold
    memory_ratio = 1.0                # instance memory per MiB of host memory
    cached_image_weight = 2.0         # preference for a host that has the image cached
    host_grace_s = 60                 # a host unreachable this long is DOWN: its
                                      # instances fail HOST_LOST (with [[hosts]] only: a
                                      # site of site.libvirt_uri waits for it forever)

    [[pools]]                         # warm pools (none by default), one table each:
    name = "atlas"                    # instances are owned by "pool:atlas" until taken
    image = "worker-el9"              # image name, name:version or id
    idle = 2                          # booted instances kept waiting for jobs
    vcpus = 1
    memory_mib = 256
    vos = ["atlas"]                   # users of these VOs may take one; [] = anyone

    [fast_start]
    restore = true                    # restore new instances of gridvm images from a
                                      # memory snapshot of their image (taken in the
                                      # background after the first boot); false = boot

    [deadlines]                       # seconds per instance phase
    staging = 600
    booting = 180
    connecting = 60

    [health]
    interval = 15                     # seconds between TSI pings
    missed_budget = 3
    idle_timeout = 600                # seconds an idle instance lives; 0 = forever
    lease = 0                         # seconds an instance lives at most; 0 = no limit

    [[subscriptions]]                 # HEPiX image lists the site follows (none by
    name = "egi-atlas"                # default): images owned by "subscription:<name>"
    url = "https://lists.example.org/atlas.smime"   # under transfers.url_prefixes, as are
                                      # the image URLs it lists
    anchors = ""                      # PEM bundle the signer must chain to; "" = trust.anchors
    endorser_dn = ""                  # the one signer accepted (/C=../O=../CN=..); "" = any
    vo = "atlas"                      # the VO the images are published for; "" = everyone
    refresh_s = 3600                  # seconds between fetches

    [exchange]                        # OAI-PMH and the image lists this site publishes
    admin_email = "gridvm@localhost"  # OAI-PMH Identify
    oai_page_size = 100               # records per OAI-PMH list response
    list_certificate = ""             # PEM signing the site's image lists; "" = a
    list_key = ""                     # self-signed one, made on first start
    list_lifetime_days = 28           # dc:date:expires of a published list

    [metrics]                         # GET /<name>/metrics (Prometheus text format)
    token = ""                        # a bearer token a monitoring system scrapes with;
                                      # "" = administrators only (Basic or Bearer)

    [trust]                           # image endorsements (docs/image-metadata.md)
    anchors = ""                      # PEM bundle: endorser certificates trusted as they
                                      # are, and CA certificates whose directly issued
                                      # certificates are trusted
    require_endorsement = false       # true: only images a trusted, unexpired endorsement
                                      # vouches for are matched, and trust is checked again
                                      # right before a new instance boots (IMAGE_UNTRUSTED)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from base.errors import GridvmError
from base.reasons import Reason
from tsf.admission import Admission, SiteLimits, UserLimits
from tsf.placement import HostPolicy
from tsf.pools import PoolSpec, check_specs
from vmm.hosts import DEFAULT_HOST, HostSpec


class ConfigError(GridvmError, ValueError):
    """A configuration that cannot be used; the message names the key."""

    reason = Reason.BAD_REQUEST


@dataclass
class SiteSection:
    name: str = "GRIDVM"
    state_dir: str = ""
    database: str = ""
    image_store: str = ""
    storage: str = ""
    users_file: str = ""
    libvirt_uri: str = "qemu:///system"
    domain_prefix: str = "gridvm-"
    keep_instances: bool = True


@dataclass
class TransfersSection:
    url_prefixes: list = field(default_factory=list)
    max_mib: int = 1024
    timeout_s: float = 300.0


@dataclass
class HostSection:
    name: str = ""
    uri: str = ""
    address: str = "127.0.0.1"
    site_address: str = "127.0.0.1"
    cpus: int = 0
    memory_mib: int = 0
    enabled: bool = True
    storage_pool: str = ""


@dataclass
class PlacementSection:
    strategy: str = "spread"
    cpu_ratio: float = 4.0
    memory_ratio: float = 1.0
    cached_image_weight: float = 2.0
    host_grace_s: float = 60.0


@dataclass
class PoolSection:
    name: str = ""
    image: str = ""
    idle: int = 1
    vcpus: int = 1
    memory_mib: int = 256
    vos: list = field(default_factory=list)


@dataclass
class SubscriptionSection:
    name: str = ""
    url: str = ""
    anchors: str = ""
    endorser_dn: str = ""
    vo: str = ""
    refresh_s: float = 3600.0


@dataclass
class ExchangeSection:
    admin_email: str = "gridvm@localhost"
    oai_page_size: int = 100
    list_certificate: str = ""
    list_key: str = ""
    list_lifetime_days: float = 28.0


@dataclass
class HttpSection:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass
class HttpsSection:
    host: str = "127.0.0.1"
    port: int = 8443
    certificate: str = ""
    key: str = ""


@dataclass
class QuotasSection:
    per_user: int = 4
    total: int = 8


@dataclass
class LimitsSection:
    max_json_kib: int = 1024
    max_upload_mib: int = 256
    image_file_mib: int = 4096
    image_quota_mib: int = 20480
    image_upload_expiry_s: int = 3600
    max_cpus: int = 4
    max_memory_mib: int = 8192
    max_runtime_s: int = 86400
    max_disk_gib: int = 64
    max_nodes: int = 4
    user_max_jobs: int = 1000
    user_max_unfinished_jobs: int = 100
    user_max_description_mib: int = 16
    user_max_storage_gib: int = 10
    token_lifetime_s: int = 43200
    login_failures_free: int = 3
    login_backoff_s: float = 1.0
    login_backoff_max_s: float = 300.0
    job_lifetime_days: float = 30.0


@dataclass
class FastStartSection:
    restore: bool = True


@dataclass
class DeadlinesSection:
    staging: float = 600.0
    booting: float = 180.0
    connecting: float = 60.0


@dataclass
class HealthSection:
    interval: float = 15.0
    missed_budget: int = 3
    idle_timeout: float = 600.0
    lease: float = 0.0


@dataclass
class TrustSection:
    anchors: str = ""
    require_endorsement: bool = False


@dataclass
class MetricsSection:
    token: str = ""


@dataclass
class SiteConfig:
    site: SiteSection = field(default_factory=SiteSection)
    http: HttpSection = field(default_factory=HttpSection)
    https: HttpsSection = field(default_factory=HttpsSection)
    quotas: QuotasSection = field(default_factory=QuotasSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    deadlines: DeadlinesSection = field(default_factory=DeadlinesSection)
    fast_start: FastStartSection = field(default_factory=FastStartSection)
    health: HealthSection = field(default_factory=HealthSection)
    transfers: TransfersSection = field(default_factory=TransfersSection)
    pools: list = field(default_factory=list)  #: PoolSection per [[pools]] table
    hosts: list = field(default_factory=list)  #: HostSection per [[hosts]] table
    placement: PlacementSection = field(default_factory=PlacementSection)
    trust: TrustSection = field(default_factory=TrustSection)
    subscriptions: list = field(default_factory=list)  #: SubscriptionSection per table
    exchange: ExchangeSection = field(default_factory=ExchangeSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)

    # -- derived paths ---------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        if self.site.state_dir:
            return Path(self.site.state_dir)
        from base.paths import gridvm_home

        return gridvm_home() / "site"

    def _path(self, value: str, default: str) -> Path:
        return Path(value) if value else self.state_dir / default

    @property
    def database_url(self) -> str:
        if self.site.database:
            return self.site.database
        return f"sqlite:///{self.state_dir / 'gridvm.sqlite'}"

    @property
    def image_store(self) -> Path:
        return self._path(self.site.image_store, "images")

    @property
    def storage(self) -> Path:
        return self._path(self.site.storage, "storage")

    @property
    def users_file(self) -> Path:
        return self._path(self.site.users_file, "users.json")

    def admission(self) -> Admission:
        """The site's size limits and per-user limits (``[limits]``)."""
        limits = self.limits
        return Admission(
            SiteLimits(max(limits.max_cpus, 1), max(limits.max_memory_mib, 1),
                       max(limits.max_runtime_s, 1), limits.max_disk_gib,
                       max(limits.max_nodes, 1)),
            UserLimits(limits.user_max_jobs, limits.user_max_unfinished_jobs,
                       limits.user_max_description_mib << 20,
                       limits.user_max_storage_gib << 30))

    def host_specs(self) -> list[HostSpec]:
        """The hypervisor hosts: the [[hosts]] tables, else site.libvirt_uri as one."""
        if not self.hosts:
            return [HostSpec(DEFAULT_HOST, self.site.libvirt_uri)]
        return [HostSpec(h.name, h.uri, h.address, h.site_address, h.cpus, h.memory_mib,
                         h.enabled, h.storage_pool) for h in self.hosts]

    def host_grace(self) -> float | None:
        """Seconds an unreachable host has before it is DOWN; None for a one-host site
        without [[hosts]]: its instances wait for its libvirtd to come back, as before."""
        return self.placement.host_grace_s if self.hosts else None

    def host_policy(self) -> HostPolicy:
        p = self.placement
        return HostPolicy(p.strategy, p.cpu_ratio, p.memory_ratio, p.cached_image_weight)

    def pool_specs(self) -> list[PoolSpec]:
        return [PoolSpec(p.name, p.image, p.idle, p.vcpus, p.memory_mib, tuple(p.vos))
                for p in self.pools]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {f.name: dict(vars(getattr(self, f.name))) for f in fields(self)
                               if f.name not in TABLE_ARRAYS}
        doc["pools"] = [dict(vars(p)) for p in self.pools]
        doc["hosts"] = [dict(vars(h)) for h in self.hosts]
        doc["subscriptions"] = [dict(vars(s)) for s in self.subscriptions]
        return doc

    def trust_policy(self, clock=None):
        """The site's :class:`image_repo.trust.TrustPolicy`; ConfigError when the anchors
        file cannot be read or holds no certificate."""
        from image_repo.errors import BadRequest
        from image_repo.trust import TrustPolicy

        options = {"require": self.trust.require_endorsement}
        if clock is not None:
            options["clock"] = clock
        if not self.trust.anchors:
            return TrustPolicy(**options)
        try:
            return TrustPolicy.from_file(self.trust.anchors, **options)
        except BadRequest as err:
            raise ConfigError(f"trust.anchors: {err.message}") from None


#: the sections that are arrays of tables, and the section of each table
TABLE_ARRAYS = {"pools": PoolSection, "subscriptions": SubscriptionSection,
                "hosts": HostSection}


def _section(cls, name: str, values: Any):
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    section = cls()
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}; known: {', '.join(sorted(known))}")
        default = getattr(section, key)
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ConfigError(f"{name}.{key} must be a {kind.__name__}, got {value!r}")
        if kind is list and not all(isinstance(item, str) and item for item in value):
            raise ConfigError(f"{name}.{key} must be a list of non-empty strings")
        if kind in (int, float) and value < 0 and not (key == "port" and value == -1):
            raise ConfigError(f"{name}.{key} must not be negative")
        setattr(section, key, value)
    return section


def config_from_dict(doc: dict[str, Any]) -> SiteConfig:
    sections = {f.name: f for f in fields(SiteConfig)}
    config = SiteConfig()
    for name, values in doc.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]; known: {', '.join(sections)}")
        if name in TABLE_ARRAYS:
            if not isinstance(values, list):
                raise ConfigError(f"{name} must be an array of tables: [[{name}]]")
            kind = TABLE_ARRAYS[name]
            setattr(config, name, [_section(kind, f"{name}[{i}]", table)
                                   for i, table in enumerate(values)])
            continue
        setattr(config, name, _section(type(getattr(config, name)), name, values))
    try:
        check_specs(config.pool_specs())
    except ValueError as err:
        raise ConfigError(f"pools: {err}") from None
    for prefix in config.transfers.url_prefixes:
        if not prefix.startswith(("http://", "https://")) or prefix.count("/") < 3:
            raise ConfigError(f"transfers.url_prefixes: {prefix!r} is not an http(s) URL "
                              "prefix with a host and a path (e.g. https://data.example.org/)")
    if not config.site.name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"site.name must be letters, digits, - and _: {config.site.name!r}")
    _check_subscriptions(config)
    _check_hosts(config)
    if config.trust.require_endorsement and not config.trust.anchors:
        raise ConfigError("trust.require_endorsement needs trust.anchors (a PEM bundle of "
                          "the endorsers or CAs this site trusts)")
    return config


MAX_HOSTS = 1000


def _check_hosts(config: SiteConfig) -> None:
    import ipaddress
    import re

    if len(config.hosts) > MAX_HOSTS:
        raise ConfigError(f"hosts: at most {MAX_HOSTS} [[hosts]] tables, got {len(config.hosts)}")
    seen = set()
    for i, host in enumerate(config.hosts):
        where = f"hosts[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", host.name):
            raise ConfigError(f"{where}.name must be 1-64 letters, digits, ., - and _, got "
                              f"{host.name!r}")
        if host.name in seen:
            raise ConfigError(f"{where}.name: {host.name!r} is there twice")
        seen.add(host.name)
        if not re.fullmatch(r"[a-z][a-z0-9+]*://\S*", host.uri):
            raise ConfigError(f"{where}.uri must be a libvirt URI (e.g. qemu+ssh://user@host/"
                              f"system), got {host.uri!r}")
        for key in ("address", "site_address"):
            try:
                ipaddress.ip_address(getattr(host, key))
            except ValueError:
                raise ConfigError(f"{where}.{key} must be an IP address, got "
                                  f"{getattr(host, key)!r}") from None
        if host.storage_pool and not host.storage_pool.startswith("/"):
            raise ConfigError(f"{where}.storage_pool must be an absolute path on the host")
    placement = config.placement
    if placement.strategy not in ("spread", "pack"):
        raise ConfigError(f"placement.strategy must be \"spread\" or \"pack\", got "
                          f"{placement.strategy!r}")
    if placement.cpu_ratio <= 0 or placement.memory_ratio <= 0:
        raise ConfigError("placement.cpu_ratio and placement.memory_ratio must be positive")


def _check_subscriptions(config: SiteConfig) -> None:
    import re

    seen = set()
    for i, sub in enumerate(config.subscriptions):
        where = f"subscriptions[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", sub.name):
            raise ConfigError(f"{where}.name must be 1-64 letters, digits, - and _, got "
                              f"{sub.name!r}")
        if sub.name in seen:
            raise ConfigError(f"{where}.name: {sub.name!r} is there twice")
        seen.add(sub.name)
        if not any(sub.url.startswith(p) for p in config.transfers.url_prefixes):
            raise ConfigError(f"{where}.url: {sub.url!r} is not under transfers.url_prefixes "
                              f"({', '.join(config.transfers.url_prefixes) or 'none'})")
        if not (sub.anchors or config.trust.anchors):
            raise ConfigError(f"{where}.anchors: a list must be verified; name a PEM bundle "
                              "here or in trust.anchors")
        if sub.refresh_s < 10:
            raise ConfigError(f"{where}.refresh_s must be at least 10 seconds")
    if not 1 <= config.exchange.oai_page_size <= 1000:
        raise ConfigError("exchange.oai_page_size must be from 1 to 1000")
    if bool(config.exchange.list_certificate) != bool(config.exchange.list_key):
        raise ConfigError("exchange.list_certificate and exchange.list_key go together")


def load_config(path: str | Path | None) -> SiteConfig:
    """The configuration in ``path`` (None: all defaults); raises ConfigError."""
    if path is None:
        return SiteConfig()
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config_from_dict(doc)
