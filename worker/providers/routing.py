"""Which upstream, key and limits serve (tenant, backend label): SPEC §6 routing.

A tenant with an override for a label gets its own ``Route`` (its own endpoint / key / limits,
inheriting unset fields from the backend); every other tenant shares the backend's route. All
routes are built and validated once, at start: a malformed URL or a missing Azure api-version
is a ``ConfigError`` naming the key path, because Azure answers 404 for a wrong path or
api-version and a misrouted delete must never read as "already deleted".

A backend without a URL or key is allowed: it is then served only through tenant overrides,
and a tenant without one gets ``Transient(config)`` at call time (counted, retried, alerted).

Keys are never stored here: a ``KeySource`` names the env var or file, read when a client is
built, so a rotated Kubernetes secret is picked up once the cached client is replaced.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

from worker.config import (
    BackendConfig,
    BackendKind,
    ProvidersConfig,
    TenantOverride,
    azure_api_version_problem,
    is_azure_v1_url,
)
from worker.errors import ConfigError
from worker.models import RetryReason
from worker.providers.results import Flavor, Transient


class KeyUnavailable(Exception):
    """The key could not be read; the message names the env var or file, never a value."""


@dataclass(frozen=True)
class KeySource:
    """Where a key lives: exactly one of an env var name or a file path."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"env var {self.env}" if self.env is not None else f"file {self.file}"

    def read(self, environ: Mapping[str, str]) -> str:
        """The key, whitespace-stripped; raises ``KeyUnavailable`` (secret-free message)."""
        if self.env is not None:
            value = environ.get(self.env, "")
            if not value.strip():
                raise KeyUnavailable(f"api key env var {self.env} is not set or empty")
        else:
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
        key = value.strip()
        if not key.isprintable() or any(ch.isspace() for ch in key):
            raise KeyUnavailable(f"api key from {self.describe()} contains whitespace or controls")
        return key


RouteId = tuple[str, UUID | None]
"""(backend label, tenant whose override this is, or None for the backend's shared route)."""


@dataclass(frozen=True, repr=False)
class Route:
    """A complete, validated upstream: URL, key source, timeout and limits."""

    label: str
    kind: BackendKind
    tenant_id: UUID | None
    url: str  # openai and azure v1: base URL; azure classic: resource endpoint
    api_version: str | None
    key: KeySource
    timeout_seconds: float
    max_concurrency: int
    max_rps: float
    organization: str | None = None
    project: str | None = None

    @property
    def route_id(self) -> RouteId:
        return (self.label, self.tenant_id)

    @property
    def flavor(self) -> Flavor:
        """The API surface: decides the client class and which 404 bodies mean "not found"."""
        if is_azure_v1_url(self.url):
            return "azure_v1"
        return "azure" if self.kind == "azure" else "openai"

    @property
    def fingerprint(self) -> str:
        """Identifies this route's configuration (no key value): persisted suspicion of a route
        applies only while its URL, api-version, key source, organization and project stay."""
        parts = (self.url, self.api_version, self.key.describe(), self.organization, self.project)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """``openai`` or ``openai (tenant T)``: how operators see a route."""
        return self.label if self.tenant_id is None else f"{self.label} (tenant {self.tenant_id})"

    def __repr__(self) -> str:
        owner = f"tenant {self.tenant_id}" if self.tenant_id is not None else "shared"
        version = f", api_version={self.api_version}" if self.api_version else ""
        scope = "".join(
            f", {name}={value}"
            for name, value in (("organization", self.organization), ("project", self.project))
            if value
        )
        return (
            f"Route({self.label!r}, {self.kind}, {owner}, url={self.url}{version}{scope}, "
            f"key from {self.key.describe()})"
        )


class Router:
    """Resolves (tenant, label) to a ``Route``; built once from ``ProvidersConfig``."""

    def __init__(self, config: ProvidersConfig) -> None:
        self._backends: dict[str, Route | str] = {}
        self._overrides: dict[RouteId, Route] = {}
        for label, backend in config.backends.items():
            path = f"providers.backends.{label}"
            self._backends[label] = _backend_route(label, backend, path)
        for tenant_key, per_label in config.tenants.items():
            tenant_id = _tenant_uuid(tenant_key)
            for label, override in per_label.items():
                path = f"providers.tenants.{tenant_key}.{label}"
                base = config.backends.get(label)
                if base is None:
                    raise ConfigError(f"{path}: no backend {label!r} under providers.backends")
                self._overrides[(label, tenant_id)] = _override_route(
                    label, base, override, tenant_id, path
                )

    def routes(self) -> list[Route]:
        """Every usable route (the backends' shared ones and the tenant overrides)."""
        shared = [r for r in self._backends.values() if isinstance(r, Route)]
        return [*shared, *self._overrides.values()]

    def resolve(self, tenant_id: UUID, label: str) -> Route | Transient:
        """The tenant's route for ``label``, or ``Transient(config)`` saying what is missing."""
        override = self._overrides.get((label, tenant_id))
        if override is not None:
            return override
        shared = self._backends.get(label)
        if shared is None:
            return Transient(RetryReason.CONFIG, f"unknown backend label {label!r}")
        if isinstance(shared, str):
            return Transient(
                RetryReason.CONFIG, f"tenant {tenant_id} has no routing for {label!r}: {shared}"
            )
        return shared

    def __repr__(self) -> str:
        return f"Router(backends={sorted(self._backends)}, overrides={len(self._overrides)})"


def _tenant_uuid(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise ConfigError(f"providers.tenants.{raw}: tenant key must be a UUID") from None


def _backend_route(label: str, backend: BackendConfig, path: str) -> Route | str:
    """The backend's shared route, or why tenants without an override cannot use it."""
    _check_kind(backend.kind, path)
    _check_limits(backend.timeout_seconds, backend.max_concurrency, backend.max_rps, path)
    url = _url_for_kind(backend.kind, backend.base_url, backend.endpoint, path)
    key = _key_source(backend.api_key_env, backend.api_key_file, path)
    if url is None or key is None:
        missing = "base_url / endpoint" if url is None else "api_key_env / api_key_file"
        # Validate what is there anyway, so a typo does not wait for the first override.
        if url is not None:
            _check_url(backend.kind, url, path)
        return f"backend has no {missing}; add a tenant override"
    return _make_route(label, backend, None, url, backend.api_version, key, backend, path)


def _override_route(
    label: str, backend: BackendConfig, override: TenantOverride, tenant_id: UUID, path: str
) -> Route:
    """A tenant's route: override fields win, unset ones inherit the backend's."""
    own_url = _url_for_kind(backend.kind, override.base_url, override.endpoint, path)
    inherited_url = _url_for_kind(
        backend.kind, backend.base_url, backend.endpoint, f"providers.backends.{label}"
    )
    url = own_url or inherited_url
    # The key is one unit: an override naming a file must not inherit the backend's env var.
    key = _key_source(override.api_key_env, override.api_key_file, path) or _key_source(
        backend.api_key_env, backend.api_key_file, f"providers.backends.{label}"
    )
    if url is None:
        field_name = "base_url" if backend.kind == "openai" else "endpoint"
        raise ConfigError(f"{path}.{field_name}: required (the backend {label!r} has none)")
    if key is None:
        raise ConfigError(f"{path}.api_key_env: an api_key_env or api_key_file is required")
    # An override with its own v1 base_url takes no api-version from a classic backend.
    version = override.api_version or (None if is_azure_v1_url(url) else backend.api_version)
    return _make_route(label, backend, tenant_id, url, version, key, override, path)


def _make_route(
    label: str,
    backend: BackendConfig,
    tenant_id: UUID | None,
    url: str,
    api_version: str | None,
    key: KeySource,
    own: BackendConfig | TenantOverride,
    path: str,
) -> Route:
    """``own`` is the backend, or the override whose set fields win over the backend's."""
    _check_url(backend.kind, url, path)
    if backend.kind == "azure" and not is_azure_v1_url(url):
        _check_api_version(api_version, path)
    elif api_version is not None:
        raise ConfigError(f"{path}.api_version: only azure classic endpoints take an api_version")
    max_concurrency, max_rps = own.max_concurrency, own.max_rps
    route = Route(
        label=label,
        kind=backend.kind,
        tenant_id=tenant_id,
        url=url,
        api_version=api_version,
        key=key,
        timeout_seconds=backend.timeout_seconds,
        max_concurrency=backend.max_concurrency if max_concurrency is None else max_concurrency,
        max_rps=backend.max_rps if max_rps is None else max_rps,
        organization=own.organization or backend.organization,
        project=own.project or backend.project,
    )
    _check_limits(route.timeout_seconds, route.max_concurrency, route.max_rps, path)
    return route


def _check_kind(kind: str, path: str) -> None:
    if kind not in ("openai", "azure"):
        raise ConfigError(f"{path}.kind: must be 'openai' or 'azure', got {kind!r}")


def _url_for_kind(
    kind: BackendKind, base_url: str | None, endpoint: str | None, path: str
) -> str | None:
    """OpenAI routes use ``base_url``; Azure ones ``endpoint`` (classic) or a v1 ``base_url``."""
    if kind == "openai":
        if endpoint is not None:
            raise ConfigError(f"{path}.endpoint: openai backends take base_url, not endpoint")
        return base_url
    if base_url is not None and endpoint is not None:
        raise ConfigError(f"{path}.base_url: set endpoint or base_url, not both")
    if base_url is not None and not is_azure_v1_url(base_url):
        raise ConfigError(
            f"{path}.base_url: an azure base_url is the v1 GA API "
            "(https://NAME.openai.azure.com/openai/v1/); a classic resource takes endpoint"
        )
    return base_url if base_url is not None else endpoint


def _key_source(env: str | None, file: str | None, path: str) -> KeySource | None:
    if env is not None and file is not None:
        raise ConfigError(f"{path}: set api_key_env or api_key_file, not both")
    if env is not None:
        if not env.strip():
            raise ConfigError(f"{path}.api_key_env: must name an environment variable")
        return KeySource(env=env)
    if file is not None:
        if not file.strip():
            raise ConfigError(f"{path}.api_key_file: must be a file path")
        return KeySource(file=file)
    return None


def _check_url(kind: BackendKind, url: str, path: str) -> None:
    field_name = "base_url" if kind == "openai" or is_azure_v1_url(url) else "endpoint"
    where = f"{path}.{field_name}"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{where}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: must not embed credentials; use api_key_env / api_key_file")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: must not have a query or fragment")
    # A gateway (APIM, a proxy) may put the resource under a path prefix, but "/openai" in it
    # is the classic mistake: the SDK adds /openai/... itself and Azure 404s the doubled path.
    if kind == "azure" and not is_azure_v1_url(url) and "/openai/" in parts.path.rstrip("/") + "/":
        raise ConfigError(
            f"{where}: give the resource root (https://NAME.openai.azure.com/) without /openai; "
            "the SDK adds /openai/... itself"
        )


def _check_api_version(api_version: str | None, path: str) -> None:
    if not api_version:
        raise ConfigError(f"{path}.api_version: required for azure (e.g. 2025-03-01-preview)")
    problem = azure_api_version_problem(api_version)
    if problem is not None:
        raise ConfigError(f"{path}.api_version: {problem}")


def _check_limits(timeout_seconds: float, max_concurrency: int, max_rps: float, path: str) -> None:
    if not timeout_seconds > 0:
        raise ConfigError(f"{path}.timeout_seconds: must be > 0")
    if max_concurrency < 1:
        raise ConfigError(f"{path}.max_concurrency: must be >= 1")
    if not max_rps > 0:
        raise ConfigError(f"{path}.max_rps: must be > 0")


def default_environ() -> Mapping[str, str]:
    """The live process environment (read at each client build, so rotation is seen)."""
    return os.environ
