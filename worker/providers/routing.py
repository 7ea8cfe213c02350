"""Which upstream, key and limits serve (tenant, backend label): SPEC §6 routing.

A tenant with an override for a label gets its own ``Route`` (its own endpoint / key / limits,
inheriting unset fields from the backend: ``BackendConfig.with_override``); every other tenant
shares the backend's route. Every rule a route must satisfy (URLs, Azure surfaces and
api-versions, keys) was checked when the configuration loaded (``worker.config.rules``): a
router trusts its ``ProvidersConfig`` and never raises.

A backend without a key is allowed: it is then served only through tenant overrides, and a
tenant without one gets ``Transient(config)`` at call time (counted, retried, alerted).

Keys are never stored here: a ``KeySource`` names the env var or file, read when a client is
built, so a rotated Kubernetes secret is picked up once the cached client is replaced.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from worker.config import (
    BackendConfig,
    BackendKind,
    KeySource,
    KeyUnavailable,
    ProvidersConfig,
    is_azure_v1_url,
)
from worker.models import RetryReason
from worker.providers.results import Flavor, Transient

__all__ = ["KeySource", "KeyUnavailable", "Route", "RouteId", "Router", "default_environ"]


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


_NO_SHARED_KEY = "backend has no api_key_env / api_key_file; add a tenant override"


class Router:
    """Resolves (tenant, label) to a ``Route``; built once from a loaded ``ProvidersConfig``."""

    def __init__(self, config: ProvidersConfig) -> None:
        self._backends: dict[str, Route | str] = {}
        self._overrides: dict[RouteId, Route] = {}
        for label, backend in config.backends.items():
            self._backends[label] = _route(label, backend, None) or _NO_SHARED_KEY
        for tenant, per_label in config.tenants.items():
            for label, override in per_label.items():
                settings = config.backends[label].with_override(override)
                route = _route(label, settings, UUID(tenant))
                assert route is not None, "load_config requires a key for every override"
                self._overrides[route.route_id] = route

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


def _route(label: str, settings: BackendConfig, tenant_id: UUID | None) -> Route | None:
    """The route these (loaded, override-merged) settings describe; None without a key."""
    key = settings.key_source
    if key is None:
        return None
    assert settings.url is not None, "load_config requires a URL of every backend"
    return Route(
        label=label,
        kind=settings.kind,
        tenant_id=tenant_id,
        url=settings.url,
        api_version=settings.api_version,
        key=key,
        timeout_seconds=settings.timeout_seconds,
        max_concurrency=settings.max_concurrency,
        max_rps=settings.max_rps,
        organization=settings.organization,
        project=settings.project,
    )


def default_environ() -> Mapping[str, str]:
    """The live process environment (read at each client build, so rotation is seen)."""
    return os.environ
