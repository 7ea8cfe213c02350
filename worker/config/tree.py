"""The configuration tree: frozen dataclasses, the values the rest of the product reads.

Key names are part of the product contract (docs/ARCHITECTURE.md, "Configuration"). Durations
carry their unit in the name. Secrets never live here: only the *name* of an environment
variable or the *path* of a file that holds them (``KeySource``), read when a client is built.
Everything here is already validated by ``worker.config.loader``; readers trust it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

BackendKind = Literal["openai", "azure"]
LogFormat = Literal["json", "console", "auto"]
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOG_LEVELS = ("debug", "info", "warning", "error")
AZURE_V1_PATH = "/openai/v1"


def is_azure_v1_url(url: str) -> bool:
    """Whether ``url`` is the Azure v1 GA surface (``https://R.openai.azure.com/openai/v1/``)."""
    return urlsplit(url).path.rstrip("/").endswith(AZURE_V1_PATH)


class KeyUnavailable(Exception):
    """The key could not be read; the message names the env var or file, never a value."""


@dataclass(frozen=True)
class KeySource:
    """Where an API key lives: exactly one of an env var name or a file path. The one place
    that reads keys (clients, check-config and the log redactor all come here)."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"env var {self.env}" if self.env is not None else f"file {self.file}"

    def text(self, environ: Mapping[str, str]) -> str:
        """The stored value, whitespace-stripped and non-empty; raises ``KeyUnavailable``."""
        if self.env is not None:
            value = environ.get(self.env, "")
            if not value.strip():
                raise KeyUnavailable(f"api key env var {self.env} is not set or empty")
            return value.strip()
        assert self.file is not None
        try:
            # Blocking, but a tiny read from a tmpfs secret mount, once per client build.
            value = Path(self.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyUnavailable(
                f"api key file {self.file} is unreadable ({type(exc).__name__})"
            ) from None
        if not value.strip():
            raise KeyUnavailable(f"api key file {self.file} is empty")
        return value.strip()

    def read(self, environ: Mapping[str, str]) -> str:
        """The key, ready for a header; raises ``KeyUnavailable`` (secret-free message)."""
        key = self.text(environ)
        if not key.isprintable() or any(ch.isspace() for ch in key):
            raise KeyUnavailable(f"api key from {self.describe()} contains whitespace or controls")
        return key


def _key_source(env: str | None, file: str | None) -> KeySource | None:
    if env is not None:
        return KeySource(env=env)
    return KeySource(file=file) if file is not None else None


@dataclass(frozen=True)
class Queues:
    """Where the two flows enqueue, and how many partitions each queue has."""

    attachment_queue: str
    attachment_partitions: int
    chat_queue: str
    chat_partitions: int


@dataclass(frozen=True)
class DatabaseConfig:
    """Two roles (least privilege, SPEC §13): ``dsn`` is the running worker's (DML only),
    ``migrate_dsn`` the one `migrate` uses (DDL; unset: ``dsn``). Each can instead be read from
    a file (``dsn_file``, ``migrate_dsn_file``: a mounted secret); ``load_config`` reads it."""

    dsn: str = "postgresql:///cleanup_worker"
    dsn_file: str | None = None
    migrate_dsn: str | None = None
    migrate_dsn_file: str | None = None
    pool_min_size: int = 2
    pool_max_size: int = 10


@dataclass(frozen=True)
class QueueConfig:
    name: str
    partitions: int = 4


@dataclass(frozen=True)
class RetryConfig:
    # 60 s doubling to a 900 s cap: 8 deliveries span about an hour (SPEC §4.5).
    base_seconds: float = 60.0
    max_seconds: float = 900.0
    max_deliveries: int = 8


@dataclass(frozen=True)
class OutboxConfig:
    attachment_queue: QueueConfig = field(
        default_factory=lambda: QueueConfig("mini-chat.attachment_cleanup")
    )
    chat_queue: QueueConfig = field(default_factory=lambda: QueueConfig("mini-chat.chat_cleanup"))
    batch_size: int = 100
    lease_seconds: float = 30.0
    concurrency: int = 32
    poll_interval_seconds: float = 1.0
    vacuum_interval_seconds: float = 60.0
    shutdown_grace_seconds: float = 20.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    # Process deaths while a message was handled alone before it is dead-lettered (poison pill).
    max_handler_crashes: int = 3

    @property
    def queues(self) -> Queues:
        """The queue pair the producer enqueues to and the worker serves."""
        a, c = self.attachment_queue, self.chat_queue
        return Queues(a.name, a.partitions, c.name, c.partitions)

    @property
    def queue_configs(self) -> tuple[QueueConfig, QueueConfig]:
        """Both queues' settings (attachment first), for registration and partition counts."""
        return (self.attachment_queue, self.chat_queue)


@dataclass(frozen=True)
class CleanupConfig:
    max_attempts: int = 5
    # Files of one chat deleted at once; hundreds of attachments must finish inside a lease.
    file_concurrency: int = 8


@dataclass(frozen=True)
class BackendConfig:
    """One provider backend, addressed by the label stored in attachments/vector-store rows."""

    kind: BackendKind
    base_url: str | None = None  # openai; azure v1 GA (https://R.openai.azure.com/openai/v1/)
    endpoint: str | None = None  # azure classic
    api_version: str | None = None  # azure classic
    # No key: the backend serves only tenants with their own override (SPEC §13).
    api_key_env: str | None = None
    api_key_file: str | None = None
    organization: str | None = None  # OpenAI-Organization header
    project: str | None = None  # OpenAI-Project header
    timeout_seconds: float = 10.0
    max_concurrency: int = 16
    max_rps: float = 50.0

    @property
    def key_source(self) -> KeySource | None:
        return _key_source(self.api_key_env, self.api_key_file)

    @property
    def url(self) -> str | None:
        """openai and azure v1: the base URL; azure classic: the resource endpoint."""
        return self.base_url if self.base_url is not None else self.endpoint

    def with_override(self, own: TenantOverride) -> BackendConfig:
        """A tenant's settings for this backend: set override fields win, unset ones inherit.
        The URL (with its api-version) and the key are each one unit: an override naming a
        key file never inherits the backend's env var, nor a v1 URL a classic api-version."""
        base_url, endpoint = (
            (own.base_url, own.endpoint) if own.url else (self.base_url, self.endpoint)
        )
        url = base_url if base_url is not None else endpoint
        inherited_version = None if url and is_azure_v1_url(url) else self.api_version
        env, file = (
            (own.api_key_env, own.api_key_file)
            if own.key_source
            else (self.api_key_env, self.api_key_file)
        )
        return replace(
            self,
            base_url=base_url,
            endpoint=endpoint,
            api_version=own.api_version or inherited_version,
            api_key_env=env,
            api_key_file=file,
            organization=own.organization or self.organization,
            project=own.project or self.project,
            max_concurrency=own.max_concurrency or self.max_concurrency,
            max_rps=own.max_rps or self.max_rps,
        )


@dataclass(frozen=True)
class TenantOverride:
    """A tenant's own endpoint / key for one backend label; unset fields inherit the backend's."""

    base_url: str | None = None
    endpoint: str | None = None
    api_version: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    organization: str | None = None
    project: str | None = None
    max_concurrency: int | None = None
    max_rps: float | None = None

    @property
    def key_source(self) -> KeySource | None:
        return _key_source(self.api_key_env, self.api_key_file)

    @property
    def url(self) -> str | None:
        return self.base_url if self.base_url is not None else self.endpoint


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """Per route: this many consecutive failures open it; it stays open this long."""

    failure_threshold: int = 5
    cooldown_seconds: float = 30.0


@dataclass(frozen=True)
class RouteSuspicionConfig:
    """A route answering not-found for more than this many distinct objects in a row, without
    one success, is suspect (a wrong project, organization or key): its 404s stop counting."""

    not_found_threshold: int = 10


@dataclass(frozen=True)
class ProvidersConfig:
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    route_suspicion: RouteSuspicionConfig = field(default_factory=RouteSuspicionConfig)
    # tenant uuid (lower-case string) -> backend label -> override
    tenants: dict[str, dict[str, TenantOverride]] = field(default_factory=dict)
    # Seconds of a route's rate one tenant may have queued; beyond, its calls are deferred
    # (parked for their fair turn). 0 = no bound (worker/providers/limits.py, RouteLimiter).
    fair_queue_seconds: float = 0.1

    def key_sources(self) -> Iterator[KeySource]:
        """Every key source the backends and tenant overrides name."""
        entries: list[BackendConfig | TenantOverride] = [*self.backends.values()]
        entries += [o for per_tenant in self.tenants.values() for o in per_tenant.values()]
        yield from (e.key_source for e in entries if e.key_source is not None)


@dataclass(frozen=True)
class ObservabilityConfig:
    http_host: str = "0.0.0.0"
    http_port: int = 9464
    metrics_prefix: str = "mini_chat"
    log_format: LogFormat = "auto"
    log_level: str = "info"
    backlog_refresh_seconds: float = 15.0


@dataclass(frozen=True)
class AuditConfig:
    """Deletion receipts and reconcile (SPEC §14).

    400 days of receipts by default: a yearly audit plus a month to pull the evidence (a
    receipt is ~200 bytes; a million deletes a year is ~0.3 GB with indexes). Vacuum prunes
    older ones. Reconcile leaves provider objects younger than ``reconcile_grace_hours`` alone
    (an upload whose row is not written yet, a cleanup in flight).
    """

    receipt_retention_days: int = 400
    reconcile_grace_hours: float = 24.0


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
