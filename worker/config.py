"""The configuration tree: frozen, validated once at the CLI edge, passed down explicitly.

Key names are part of the product contract (SPEC §8). Durations carry their unit in the name.
Secrets never live here: only the *name* of an environment variable or the *path* of a file
that holds them, resolved by the provider layer when a client is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BackendKind = Literal["openai", "azure"]
LogFormat = Literal["json", "console", "auto"]


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str = "postgresql:///cleanup_worker"
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


@dataclass(frozen=True)
class CleanupConfig:
    max_attempts: int = 5
    # Files of one chat deleted at once; hundreds of attachments must finish inside a lease.
    file_concurrency: int = 8


@dataclass(frozen=True)
class BackendConfig:
    """One provider backend, addressed by the label stored in attachments/vector-store rows."""

    kind: BackendKind
    base_url: str | None = None  # openai
    endpoint: str | None = None  # azure
    api_version: str | None = None  # azure
    api_key_env: str | None = None
    api_key_file: str | None = None
    timeout_seconds: float = 10.0
    max_concurrency: int = 16
    max_rps: float = 50.0


@dataclass(frozen=True)
class TenantOverride:
    """A tenant's own endpoint / key for one backend label; unset fields inherit the backend's."""

    base_url: str | None = None
    endpoint: str | None = None
    api_version: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    max_concurrency: int | None = None
    max_rps: float | None = None


@dataclass(frozen=True)
class ProvidersConfig:
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    # tenant uuid (lower-case string) -> backend label -> override
    tenants: dict[str, dict[str, TenantOverride]] = field(default_factory=dict)


@dataclass(frozen=True)
class ObservabilityConfig:
    http_host: str = "0.0.0.0"
    http_port: int = 9464
    metrics_prefix: str = "mini_chat"
    log_format: LogFormat = "auto"
    log_level: str = "info"
    backlog_refresh_seconds: float = 15.0


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
