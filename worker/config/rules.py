"""The rules a configuration must satisfy: per-key value rules, cross-key rules, and the
rules of a provider route (Azure surfaces, URLs, keys). The only place they live: the provider
layer trusts a configuration that passed them (docs/ARCHITECTURE.md, "Configuration").

Each check returns problems as ``(key, message, related key)``; the loader turns the first into
one ``ConfigError`` line with the key path and where the value came from.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.config.tree import (
    AZURE_V1_PATH,
    LOG_LEVELS,
    AuditConfig,
    BackendConfig,
    BackendKind,
    CircuitBreakerConfig,
    CleanupConfig,
    Config,
    DatabaseConfig,
    ObservabilityConfig,
    OutboxConfig,
    ProvidersConfig,
    QueueConfig,
    RetryConfig,
    RouteSuspicionConfig,
    TenantOverride,
    is_azure_v1_url,
)

KeyPath = tuple[str, ...]
Problem = tuple[str, str, str]  # (key, message, related key) under the entry's path


@dataclass(frozen=True)
class Rule:
    expect: str  # completes "expected ...": used for a wrong type and a bad value alike
    ok: Callable[[Any], object]
    norm: Callable[[Any], Any] = lambda v: v


def _range(lo: float, hi: float, *, integer: bool = False, open_lo: bool = False) -> Rule:
    kind = "an integer" if integer else "a number"
    if open_lo:
        return Rule(f"{kind} > {lo:g} and <= {hi:g}", lambda v: lo < v <= hi)
    return Rule(f"{kind} in {lo:g}..{hi:g}", lambda v: lo <= v <= hi)


def _regex(expect: str, pattern: str) -> Rule:
    return Rule(expect, re.compile(pattern).fullmatch)


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,30}[A-Za-z0-9])?")  # a VARCHAR(32) column
_URL = _regex("an http(s) URL", r"https?://[^\s/?#]+\S*")
_FILE = Rule("a non-empty file path", lambda v: v.strip() and "\0" not in v)
DSN = Rule(
    "a PostgreSQL URI (postgresql://...) or a key=value conninfo string",
    lambda v: v.startswith(("postgresql://", "postgres://")) or ("=" in v and "://" not in v),
)
_SECONDS, _INT_1K = _range(0, 3600, open_lo=True), _range(1, 1024, integer=True)
_PER_BACKEND = {
    "base_url": _URL,
    "endpoint": _URL,
    "api_version": _regex("an API version such as 2025-03-01-preview", r"\S+"),
    "api_key_env": _regex(f"an environment variable name ({_ENV_NAME})", _ENV_NAME),
    "api_key_file": _FILE,
    "organization": _regex("an OpenAI organization id (org-...)", r"[A-Za-z0-9_-]+"),
    "project": _regex("an OpenAI project id (proj_...)", r"[A-Za-z0-9_-]+"),
    "timeout_seconds": _SECONDS,
    "max_concurrency": _INT_1K,
    "max_rps": _range(0, 100_000, open_lo=True),
}
RULES: dict[tuple[type, str], Rule] = {
    **{(cls, k): r for cls in (BackendConfig, TenantOverride) for k, r in _PER_BACKEND.items()},
    (DatabaseConfig, "dsn"): DSN,
    (DatabaseConfig, "migrate_dsn"): DSN,
    (DatabaseConfig, "dsn_file"): _FILE,
    (DatabaseConfig, "migrate_dsn_file"): _FILE,
    (DatabaseConfig, "pool_min_size"): _range(0, 1000, integer=True),
    (DatabaseConfig, "pool_max_size"): _range(1, 1000, integer=True),
    (QueueConfig, "name"): _regex(
        "a queue name of 1..1024 characters [A-Za-z0-9._-], starting and ending alphanumeric",
        r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,1022}[A-Za-z0-9])?",
    ),
    (QueueConfig, "partitions"): Rule(
        "a power of two in 1..64", lambda v: v in (1, 2, 4, 8, 16, 32, 64)
    ),
    (RetryConfig, "base_seconds"): _range(0, 86400, open_lo=True),
    (RetryConfig, "max_seconds"): _range(0, 86400, open_lo=True),
    (RetryConfig, "max_deliveries"): _range(1, 1000, integer=True),
    (OutboxConfig, "batch_size"): _range(1, 10_000, integer=True),
    (OutboxConfig, "lease_seconds"): _range(5, 3600),
    (OutboxConfig, "concurrency"): _INT_1K,
    (OutboxConfig, "poll_interval_seconds"): _SECONDS,
    (OutboxConfig, "vacuum_interval_seconds"): _range(0, 86400, open_lo=True),
    (OutboxConfig, "shutdown_grace_seconds"): _SECONDS,
    (OutboxConfig, "max_handler_crashes"): _range(1, 100, integer=True),
    (CleanupConfig, "max_attempts"): _range(1, 999, integer=True),
    (CircuitBreakerConfig, "failure_threshold"): _range(1, 1000, integer=True),
    (CircuitBreakerConfig, "cooldown_seconds"): _range(0, 3600, open_lo=True),
    (RouteSuspicionConfig, "not_found_threshold"): _range(1, 100_000, integer=True),
    (ProvidersConfig, "fair_queue_seconds"): _range(0, 60),
    (CleanupConfig, "file_concurrency"): _INT_1K,
    (ObservabilityConfig, "http_host"): _regex("a host name or IP address", r"\S+"),
    (ObservabilityConfig, "http_port"): _range(0, 65535, integer=True),
    (ObservabilityConfig, "metrics_prefix"): _regex(
        "a Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*)", r"[a-zA-Z_][a-zA-Z0-9_]*"
    ),
    (ObservabilityConfig, "log_level"): Rule(
        "one of " + ", ".join(LOG_LEVELS), lambda v: v.lower() in LOG_LEVELS, str.lower
    ),
    (ObservabilityConfig, "backlog_refresh_seconds"): _SECONDS,
    (AuditConfig, "receipt_retention_days"): _range(1, 36_500, integer=True),
    (AuditConfig, "reconcile_grace_hours"): _range(0, 8760),
}


KEY_SOURCES = (
    "set api_key_env (an environment variable name) or api_key_file (a file path, e.g. a "
    "mounted secret)"
)
_TIMEOUT = "must be below half of outbox.lease_seconds ({:g}): a call must never outlive its lease"
OPS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "<=": (operator.le, "at most"),
    ">": (operator.gt, "greater than"),
    "!=": (operator.ne, "different from"),
}
CROSS_KEY: tuple[tuple[KeyPath, str, KeyPath, str], ...] = (
    (("database", "pool_min_size"), "<=", ("database", "pool_max_size"), ""),
    (("outbox", "chat_queue", "name"), "!=", ("outbox", "attachment_queue", "name"), ""),
    (("outbox", "retry", "base_seconds"), "<=", ("outbox", "retry", "max_seconds"), ""),
    (
        ("outbox", "retry", "max_deliveries"),
        ">",
        ("cleanup", "max_attempts"),
        ": otherwise a chat-cleanup message is dead-lettered before its attachments reach a"
        " terminal state (done or failed)",
    ),
)


def get_key(cfg: Config, path: KeyPath) -> Any:
    return functools.reduce(getattr, path, cfg)


# The first api-version with the vector-store API; older ones 404 every vector-store delete.
AZURE_MIN_API_VERSION = "2024-05-01-preview"
_AZURE_DATED_VERSION = re.compile(r"(\d{4}-\d{2}-\d{2})(-preview)?")


def azure_api_version_problem(api_version: str) -> str | None:
    """Why an Azure classic api-version cannot serve deletes, or None when it can.

    The SDK puts it into ``/openai/...?api-version=V``: the v1 aliases (``v1``, ``latest``,
    ``preview``) are not valid there (they belong to ``/openai/v1/``, which takes none), and a
    version older than the vector-store API answers 404 for every vector store.
    """
    match = _AZURE_DATED_VERSION.fullmatch(api_version)
    if match is None:
        return (
            f"{api_version!r} is not a dated Azure api-version (e.g. 2025-03-01-preview); for the "
            f"v1 GA API set base_url: https://NAME.openai.azure.com{AZURE_V1_PATH}/ without one"
        )
    if _version_key(api_version) < _version_key(AZURE_MIN_API_VERSION):
        return f"{api_version!r} predates vector stores: use {AZURE_MIN_API_VERSION} or later"
    return None


def _version_key(api_version: str) -> tuple[str, int]:
    """Dated versions in release order: a preview comes before the GA of the same date."""
    return (api_version[:10], 0 if api_version.endswith("-preview") else 1)


def _azure_surface_problems(e: BackendConfig | TenantOverride, full: bool) -> list[Problem]:
    """An azure route speaks classic (endpoint + api_version) or v1 GA (base_url, no version)."""
    problems: list[Problem] = []
    if e.endpoint and e.base_url:
        message = "set endpoint (classic API) or base_url (v1 GA API), not both"
        problems.append(("base_url", message, "endpoint"))
    if e.base_url and not is_azure_v1_url(e.base_url):
        message = (
            f"an azure base_url is the v1 GA API: https://NAME.openai.azure.com{AZURE_V1_PATH}/"
        )
        problems.append(("base_url", message, "base_url"))
    if e.base_url and e.api_version:
        problems.append(("api_version", "the v1 GA API (base_url) takes none", "base_url"))
    if full and not (e.endpoint or e.base_url):
        message = f"required: endpoint (classic API) or base_url (v1 GA API, ...{AZURE_V1_PATH}/)"
        problems.append(("endpoint", message, "base_url"))
    if full and e.endpoint and not e.api_version:
        problems.append(("api_version", "required with an azure endpoint", "endpoint"))
    if e.api_version:
        problem = azure_api_version_problem(e.api_version)
        if problem is not None:
            problems.append(("api_version", problem, "api_version"))
    return problems


_AZURE_HTTPS = (
    "Azure endpoints need https:// (the api-key header would cross the network in clear "
    "text); http:// is accepted only for a loopback test server"
)


def _secure_or_loopback(url: str) -> bool:
    """https, or plain http to this machine only (the local test and demo servers)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(kind: BackendKind, name: str, url: str) -> str | None:
    """Why ``url`` (the value of key ``name``) cannot address a provider, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not embed credentials; use api_key_env / api_key_file"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if kind != "azure":
        return None
    if not _secure_or_loopback(url):
        return _AZURE_HTTPS
    # A gateway (APIM, a proxy) may put the resource under a path prefix, but "/openai" in it
    # is the classic mistake: the SDK adds /openai/... itself and Azure 404s the doubled path.
    if name == "endpoint" and "/openai/" in parts.path.rstrip("/") + "/":
        return (
            "give the resource root (https://NAME.openai.azure.com/) without /openai; "
            "the SDK adds /openai/... itself"
        )
    return None


def entry_problems(
    kind: BackendKind, e: BackendConfig | TenantOverride, lease_seconds: float
) -> list[Problem]:
    """A backend's or a tenant override's own keys, first problem first."""
    full = isinstance(e, BackendConfig)  # a backend, not a tenant override
    unused = ("endpoint", "api_version") if kind == "openai" else ()
    problems = [(n, f"not used by {kind} backends", n) for n in unused if getattr(e, n)]
    if kind == "azure":
        problems += _azure_surface_problems(e, full)
    for name in ("endpoint", "base_url"):
        url = getattr(e, name)
        problem = url_problem(kind, name, url) if url else None
        if problem:
            problems.append((name, problem, name))
    if e.api_key_env is not None and e.api_key_file is not None:
        problems.append(("api_key_file", "conflicts with api_key_env: set only one", "api_key_env"))
    # A backend without a key is allowed: it serves only tenants with an override.
    if isinstance(e, BackendConfig) and e.timeout_seconds >= lease_seconds / 2:
        problems.append(("timeout_seconds", _TIMEOUT.format(lease_seconds / 2), "lease_seconds"))
    return problems


def override_problems(label: str, backend: BackendConfig, own: TenantOverride) -> list[Problem]:
    """What a tenant's route lacks once it inherits from its backend (a key, an api-version),
    or what it inherits that its own URL cannot take."""
    route = backend.with_override(own)
    problems: list[Problem] = []
    if route.key_source is None:
        message = f"required: the backend {label!r} has no key; " + KEY_SOURCES
        problems.append(("api_key_env", message, "api_key_file"))
    if backend.kind == "azure":
        problems += _azure_surface_problems(route, full=True)
    return problems
