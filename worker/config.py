"""The configuration tree: frozen, validated once at the CLI edge, passed down explicitly.

Key names are part of the product contract (SPEC §8). Durations carry their unit in the name.
Secrets never live here: only the *name* of an environment variable or the *path* of a file
that holds them, resolved by the provider layer when a client is built.

``load_config`` layers, lowest to highest: dataclass defaults, the YAML file (``path`` or env
``CLEANUP_WORKER_CONFIG``; none at all means defaults), env ``CLEANUP_WORKER__SECTION__KEY``
overrides (levels split by ``__``, key names case-insensitive, values parsed as YAML scalars),
env ``CLEANUP_WORKER_DSN``, then the ``dsn`` argument (``--dsn``). Every problem is one
``ConfigError`` line naming the key path and where the value came from; values of secret-ish
keys are never echoed and DSNs are shown through ``redact_passwords``. Ranges:
``config.example.yaml``.

Over 400 lines because it holds both the tree and a hand-written validating loader (types,
ranges, key paths, sources, did-you-mean); weighing a validation library against it is the
planned "one validator" step of issue 13 (docs/ARCHITECTURE.md, "Where to change what").
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import operator
import re
import types
import typing
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict

from worker.errors import ConfigError

BackendKind = Literal["openai", "azure"]
LogFormat = Literal["json", "console", "auto"]


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


# --------------------------------------------------------------------------------------------
# Loading

ENV_CONFIG, ENV_DSN, ENV_PREFIX = "CLEANUP_WORKER_CONFIG", "CLEANUP_WORKER_DSN", "CLEANUP_WORKER__"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOG_LEVELS = ("debug", "info", "warning", "error")
_YAML_WORDS = {"None": "null", "True": "true", "False": "false"}
_SECRETISH = ("key", "password", "secret")  # values of such keys are never echoed
_KeyPath = tuple[str, ...]

# scheme://user:SECRET@host: greedy to the token's last '@' (over-redacting is the safe side).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)\S*@")
# The password of a URI's userinfo (group 2), for masking it in libpq's parse errors.
_URL_USERINFO_PASSWORD = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)([^@/]*)@")
# conninfo `password='a b'`, query `?password=x`, `PGPASSWORD=x`, YAML/JSON `"password": "x"`.
_KV_PASSWORD = re.compile(
    r"""(?i)(password["']?\s*[=:]\s*)("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&;,}]+)"""
)


def redact_passwords(text: str) -> str:
    """Replace passwords in DSNs, URLs and conninfo strings found in ``text`` with ``***``."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


@dataclass(frozen=True)
class _Rule:
    expect: str  # completes "expected ...": used for a wrong type and a bad value alike
    ok: Callable[[Any], object]
    norm: Callable[[Any], Any] = lambda v: v


def _range(lo: float, hi: float, *, integer: bool = False, open_lo: bool = False) -> _Rule:
    kind = "an integer" if integer else "a number"
    if open_lo:
        return _Rule(f"{kind} > {lo:g} and <= {hi:g}", lambda v: lo < v <= hi)
    return _Rule(f"{kind} in {lo:g}..{hi:g}", lambda v: lo <= v <= hi)


def _regex(expect: str, pattern: str) -> _Rule:
    return _Rule(expect, re.compile(pattern).fullmatch)


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,30}[A-Za-z0-9])?")  # a VARCHAR(32) column
_URL = _regex("an http(s) URL", r"https?://[^\s/?#]+\S*")
_FILE = _Rule("a non-empty file path", lambda v: v.strip() and "\0" not in v)
_DSN = _Rule(
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
_RULES: dict[tuple[type, str], _Rule] = {
    **{(cls, k): r for cls in (BackendConfig, TenantOverride) for k, r in _PER_BACKEND.items()},
    (DatabaseConfig, "dsn"): _DSN,
    (DatabaseConfig, "migrate_dsn"): _DSN,
    (DatabaseConfig, "dsn_file"): _FILE,
    (DatabaseConfig, "migrate_dsn_file"): _FILE,
    (DatabaseConfig, "pool_min_size"): _range(0, 1000, integer=True),
    (DatabaseConfig, "pool_max_size"): _range(1, 1000, integer=True),
    (QueueConfig, "name"): _regex(
        "a queue name of 1..1024 characters [A-Za-z0-9._-], starting and ending alphanumeric",
        r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,1022}[A-Za-z0-9])?",
    ),
    (QueueConfig, "partitions"): _Rule(
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
    (ObservabilityConfig, "log_level"): _Rule(
        "one of " + ", ".join(LOG_LEVELS), lambda v: v.lower() in LOG_LEVELS, str.lower
    ),
    (ObservabilityConfig, "backlog_refresh_seconds"): _SECONDS,
    (AuditConfig, "receipt_retention_days"): _range(1, 36_500, integer=True),
    (AuditConfig, "reconcile_grace_hours"): _range(0, 8760),
}


_KEY_SOURCES = (
    "set api_key_env (an environment variable name) or api_key_file (a file path, e.g. a "
    "mounted secret)"
)
_TIMEOUT = "must be below half of outbox.lease_seconds ({:g}): a call must never outlive its lease"
_OPS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "<=": (operator.le, "at most"),
    ">": (operator.gt, "greater than"),
    "!=": (operator.ne, "different from"),
}
_CROSS_KEY: tuple[tuple[_KeyPath, str, _KeyPath, str], ...] = (
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


def _get(cfg: Config, path: _KeyPath) -> Any:
    return functools.reduce(getattr, path, cfg)


class _EnvText(str):
    """An env override's raw text: kept as-is for string keys, parsed as YAML for the rest."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys instead of keeping the last silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        for i, (key_node, _) in enumerate(node.value):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in keys[:i]:
                problem = f"duplicate key '{key_node.value}'"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        return super().construct_mapping(node, deep)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) not in (Union, types.UnionType):
        return tp, False
    return next(a for a in get_args(tp) if a is not type(None)), type(None) in get_args(tp)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and is_dataclass(tp)


def _default_of(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    if get_origin(tp) is Literal:  # case-insensitive, normalised to the declared spelling
        choice = value.lower() if isinstance(value, str) else None
        return choice in get_args(tp), choice
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok and math.isfinite(value), float(value) if ok else None
    return isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), value


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(get_args(tp))
    return {int: "an integer", float: "a number", str: "a string"}.get(tp, "true or false")


def _show(value: Any) -> str:
    if isinstance(value, bool | dict | list) or value is None:
        return _YAML_WORDS.get(repr(value), f"a {type(value).__name__}")
    text = redact_passwords(value if isinstance(value, str) else repr(value))
    text = text if len(text) <= 80 else text[:77] + "..."
    return repr(text) if isinstance(value, str) else text


def _fail(message: str) -> ConfigError:
    return ConfigError("config error: " + message.replace("\r", " ").replace("\n", " "))


class _Loader:
    """Phase 1 merges every source into one raw tree with canonical keys, remembering where
    each key came from; phase 2 builds the dataclasses; phase 3 checks cross-key rules."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}
        self.sources: dict[_KeyPath, str] = {}

    def source(self, path: _KeyPath, *related: _KeyPath) -> str:
        exact = [self.sources[p] for p in (path, *related) if p in self.sources]
        while path and path not in self.sources:  # else the nearest enclosing key's source
            path = path[:-1]
        return ", ".join(dict.fromkeys(exact)) or self.sources.get(path, "defaults")

    def error(
        self, path: _KeyPath, message: str, *related: _KeyPath, origin: str = ""
    ) -> ConfigError:
        where = ".".join(path) or "(top level)"
        return _fail(f"{where}: {message} (from {origin or self.source(path, *related)})")

    def merge(
        self, tp: Any, dst: dict[str, Any], src: Any, path: _KeyPath, origin: str, fold: bool
    ) -> None:
        if not isinstance(src, dict):
            raise self.error(path, f"expected a mapping, got {_show(src)}", origin=origin)
        for raw_key, value in src.items():
            key, sub_tp = self.child(tp, dst, str(raw_key), path, origin, fold)
            sub = (*path, key)
            self.sources[sub] = origin
            if isinstance(value, _EnvText):
                value = self.env_value(sub_tp, value, sub, origin)
            if _is_dataclass_type(sub_tp) or get_origin(sub_tp) is dict:
                value = {} if value is None else value  # an empty section means "all defaults"
                self.merge(sub_tp, dst.setdefault(key, {}), value, sub, origin, fold)
            else:
                dst[key] = value

    def child(
        self, tp: Any, dst: dict[str, Any], key: str, path: _KeyPath, origin: str, fold: bool
    ) -> tuple[str, Any]:
        at = (*path, key)
        if _is_dataclass_type(tp):  # key names are case-insensitive
            hints, at = _hints(tp), (*path, key.lower())
            if key.lower() in hints:
                return key.lower(), hints[key.lower()]
            if key.lower() == "api_key":
                msg = "literal API keys are not accepted; " + _KEY_SOURCES
            else:
                close = difflib.get_close_matches(key.lower(), list(hints), n=1, cutoff=0.5)
                msg = "unknown key; " + (
                    f"did you mean '{'.'.join((*path, close[0]))}'?"
                    if close
                    else "valid keys: " + ", ".join(hints)
                )
            raise self.error(at, msg, origin=origin)
        if path == ("providers", "tenants"):  # canonical lower-case UUID
            try:
                return str(uuid.UUID(key)), get_args(tp)[1]
            except ValueError:
                raise self.error(at, "tenant keys must be UUIDs", origin=origin) from None
        if not _LABEL.fullmatch(key):
            msg = "a backend label is 1..32 characters [A-Za-z0-9._-], alphanumeric at both ends"
            raise self.error(at, msg, origin=origin)
        if fold:  # env names are upper-case by habit: reuse a known label's spelling
            known = [*dst, *self.tree.get("providers", {}).get("backends", {})]
            key = next((k for k in known if k.lower() == key.lower()), key.lower())
        return key, get_args(tp)[1]

    def env_value(self, tp: Any, text: _EnvText, path: _KeyPath, origin: str) -> Any:
        inner, optional = _unwrap_optional(tp)
        if optional and not text:
            return None  # an empty override unsets an optional key
        if inner is str or get_origin(inner) is Literal:
            return str(text)
        try:
            return yaml.safe_load(str(text))
        except yaml.YAMLError:
            raise self.error(path, "the value is not valid YAML", origin=origin) from None

    def read_file(self, path: Path, how: str) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _fail(f"config file {path} not found{how}") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _fail(f"cannot read config file {path}: {reason}{how}") from None
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: safe_load semantics
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
            raise _fail(f"{path}: invalid YAML at {at}: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise _fail(f"{path}: invalid YAML ({type(exc).__name__})") from None
        if data is not None:
            self.merge(Config, self.tree, data, (), str(path), fold=False)

    def read_env(self, environ: Mapping[str, str]) -> None:
        for name in sorted(environ):  # sorted: backends are known before tenants refer to them
            if not name.upper().startswith(ENV_PREFIX):
                continue
            segments = name[len(ENV_PREFIX) :].split("__")
            if not all(segments):
                raise _fail(f"{name}: malformed name; use {ENV_PREFIX}SECTION__KEY")
            nested: Any = _EnvText(environ[name])
            for segment in reversed(segments):
                nested = {segment: nested}
            self.merge(Config, self.tree, nested, (), name, fold=True)

    def build(self, tp: Any, raw: Any, path: _KeyPath, base: Any, rule: _Rule | None) -> Any:
        inner, optional = _unwrap_optional(tp)
        if _is_dataclass_type(inner):  # missing keys fall back to `base` (the default value)
            kwargs, hints = {}, _hints(inner)
            for f in fields(inner):
                sub = (*path, f.name)
                fallback = getattr(base, f.name) if base is not None else _default_of(f)
                if f.name in raw:
                    own = _RULES.get((inner, f.name))
                    kwargs[f.name] = self.build(hints[f.name], raw[f.name], sub, fallback, own)
                elif fallback is MISSING:
                    raise self.error(sub, "required key is missing")
                else:
                    kwargs[f.name] = fallback
            return inner(**kwargs)
        if get_origin(inner) is dict:
            value_tp = get_args(inner)[1]
            return {k: self.build(value_tp, v, (*path, k), None, None) for k, v in raw.items()}
        if raw is None and optional:
            return None
        ok, value = _coerce(inner, raw)
        if ok and (rule is None or rule.ok(value)):
            return rule.norm(value) if rule else value
        expect = rule.expect if rule else _describe(inner)
        secret = any(s in path[-1].lower() for s in _SECRETISH)
        raise self.error(
            path, f"expected {expect}, " + ("value not shown" if secret else f"got {_show(raw)}")
        )

    def check(self, cfg: Config) -> Config:
        cfg = replace(cfg, database=self.database(cfg.database))
        for at, op, other, why in _CROSS_KEY:
            mine, theirs = _get(cfg, at), _get(cfg, other)
            if not _OPS[op][0](mine, theirs):
                message = f"must be {_OPS[op][1]} {'.'.join(other)} ({_show(theirs)}), got "
                raise self.error(at, message + _show(mine) + why, other)
        backends, lease = dict(cfg.providers.backends), cfg.outbox.lease_seconds
        entries: list[tuple[_KeyPath, str, BackendConfig | TenantOverride]]
        entries = [(("providers", "backends", k), b.kind, b) for k, b in backends.items()]
        for tenant, overrides in cfg.providers.tenants.items():
            for label, override in overrides.items():
                at = ("providers", "tenants", tenant, label)
                if label not in backends:
                    known = ", ".join(backends) or "none"
                    raise self.error(at, f"no backend has this label; configured: {known}")
                entries.append((at, backends[label].kind, override))
        for at, kind, e in entries:  # first problem wins: (key, message, related key)
            full = isinstance(e, BackendConfig)  # a backend, not a tenant override
            unused = ("endpoint", "api_version") if kind == "openai" else ()
            keys = (e.api_key_env is not None) + (e.api_key_file is not None)
            problems = [(n, f"not used by {kind} backends", n) for n in unused if getattr(e, n)]
            if kind == "azure":
                problems += _azure_surface_problems(e, full)
            if kind == "azure":
                for name in ("endpoint", "base_url"):
                    url = getattr(e, name)
                    if url and not _secure_or_loopback(url):
                        problems.append((name, _AZURE_HTTPS, name))
            if keys == 2:
                problems.append(
                    ("api_key_file", "conflicts with api_key_env: set only one", "api_key_env")
                )
            # A backend without a key is allowed: it serves only tenants with an override.
            if isinstance(e, BackendConfig) and e.timeout_seconds >= lease / 2:
                problems.append(("timeout_seconds", _TIMEOUT.format(lease / 2), "lease_seconds"))
            if problems:
                name, message, related = problems[0]
                other = ("outbox", related) if related == "lease_seconds" else (*at, related)
                raise self.error((*at, name), message, other)
        for label, b in backends.items():
            if b.kind == "openai" and b.base_url is None:
                backends[label] = replace(b, base_url=OPENAI_DEFAULT_BASE_URL)
        return replace(cfg, providers=replace(cfg.providers, backends=backends))

    def database(self, db: DatabaseConfig) -> DatabaseConfig:
        """Read ``dsn_file`` / ``migrate_dsn_file``, then make sure libpq can parse each DSN:
        an unparseable DSN is a configuration error at start, not a retry loop later."""
        for key, file_key in (("dsn", "dsn_file"), ("migrate_dsn", "migrate_dsn_file")):
            path = getattr(db, file_key)
            if path is not None:
                if ("database", key) in self.sources:
                    message = f"conflicts with database.{key}: set only one"
                    raise self.error(("database", file_key), message, ("database", key))
                read: dict[str, Any] = {key: self.dsn_from_file(("database", file_key), path)}
                db = replace(db, **read)
            value = getattr(db, key)
            problem = None if value is None else _dsn_problem(value)
            if problem:
                at = ("database", file_key if path is not None else key)
                raise self.error(at, f"not a usable PostgreSQL DSN: {problem}")
        return db

    def dsn_from_file(self, at: _KeyPath, path: str) -> str:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self.error(at, f"cannot read {path}: {reason}") from None
        if not _DSN.ok(text):
            raise self.error(at, f"{path} does not hold {_DSN.expect} (content not shown)")
        return text


def _dsn_problem(dsn: str) -> str | None:
    """libpq's reason for rejecting ``dsn`` (its password masked), or None if it parses."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot be parsed"
        password = _URL_USERINFO_PASSWORD.search(dsn) or _KV_PASSWORD.search(dsn)
        if password and password.group(2):
            reason = reason.replace(password.group(2), "***")
        return redact_passwords(reason)
    return None


AZURE_V1_PATH = "/openai/v1"
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


def is_azure_v1_url(url: str) -> bool:
    """Whether ``url`` is the Azure v1 GA surface (``https://R.openai.azure.com/openai/v1/``)."""
    return urlsplit(url).path.rstrip("/").endswith(AZURE_V1_PATH)


def _azure_surface_problems(
    e: BackendConfig | TenantOverride, full: bool
) -> list[tuple[str, str, str]]:
    """An azure route speaks classic (endpoint + api_version) or v1 GA (base_url, no version)."""
    problems: list[tuple[str, str, str]] = []
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
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: Path | None, *, environ: Mapping[str, str], dsn: str | None = None) -> Config:
    """Load and validate the configuration; any problem raises a one-line ``ConfigError``."""
    loader = _Loader()
    if path is not None:
        loader.read_file(Path(path), "")
    elif environ.get(ENV_CONFIG):
        loader.read_file(Path(environ[ENV_CONFIG]), f" (set by {ENV_CONFIG})")
    loader.read_env(environ)
    for value, origin in ((environ.get(ENV_DSN) or None, ENV_DSN), (dsn, "--dsn")):
        if value is not None:
            loader.merge(Config, loader.tree, {"database": {"dsn": value}}, (), origin, False)
    cfg = loader.build(Config, loader.tree, (), Config(), None)
    assert isinstance(cfg, Config)
    return loader.check(cfg)
