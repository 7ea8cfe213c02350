"""Helpers for the provider tests: a scripted in-process upstream, an observer, configs.

The upstream is an ``httpx2.MockTransport`` handler (the SDK runs on httpx2, so respx does not
apply); ``test_gateway_http.py`` covers the same ground over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import httpx2

from worker.config import BackendConfig, ProvidersConfig, TenantOverride
from worker.providers.gateway import ProviderGateway

SECRET = "sk-test-SECRET-123"
TENANT_A = UUID("aaaaaaaa-0000-4000-8000-000000000001")  # azure override
TENANT_B = UUID("bbbbbbbb-0000-4000-8000-000000000002")  # shared backends
TENANT_C = UUID("cccccccc-0000-4000-8000-000000000003")  # openai override
TENANT_D = UUID("dddddddd-0000-4000-8000-000000000004")  # shared backends

ENV: Mapping[str, str] = {
    "OPENAI_KEY": SECRET,
    "AZURE_KEY": "az-shared-key",
    "C_KEY": "sk-tenant-c",
}

Step = httpx2.Response | Callable[[httpx2.Request], Any]


def deleted(resource_id: str = "x") -> httpx2.Response:
    return httpx2.Response(200, json={"id": resource_id, "object": "file", "deleted": True})


def not_found(resource_id: str = "file-1", resource: str = "file") -> httpx2.Response:
    """OpenAI's own 404 for a missing file / vector store (the bodies classify recognises)."""
    message = (
        f"No such File object: {resource_id}"
        if resource == "file"
        else f"No vector store found with id '{resource_id}'."
    )
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return httpx2.Response(404, json={"error": error})


def api_error(status: int, headers: Mapping[str, str] | None = None) -> httpx2.Response:
    body = {"error": {"message": f"echo {SECRET}", "type": "invalid_request_error"}}
    return httpx2.Response(status, json=body, headers=dict(headers or {}))


@dataclass
class Upstream:
    """Answers requests with ``steps`` in order (the last one repeats); records every request.

    A step is a response, or a callable taking the request that returns a response, raises
    (a transport error) or returns an awaitable (a slow upstream).
    """

    steps: list[Step]
    requests: list[httpx2.Request] = field(default_factory=list)

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, httpx2.Response):
            return step
        answer = step(request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        assert isinstance(answer, httpx2.Response)
        return answer


def script(*steps: Step) -> Upstream:
    return Upstream(list(steps))


@dataclass
class Recorder:
    """A ``ProviderObserver`` that keeps every observation."""

    calls: list[dict[str, object]] = field(default_factory=list)

    def observe(self, *, backend: str, operation: str, outcome: str, seconds: float) -> None:
        self.calls.append(
            {"backend": backend, "operation": operation, "outcome": outcome, "seconds": seconds}
        )

    @property
    def outcomes(self) -> list[object]:
        return [call["outcome"] for call in self.calls]


def providers_config(
    *,
    timeout_seconds: float = 1.0,
    max_concurrency: int = 16,
    max_rps: float = 1000.0,
    tenants: dict[str, dict[str, TenantOverride]] | None = None,
    backends: dict[str, BackendConfig] | None = None,
) -> ProvidersConfig:
    """An openai and an azure backend shared by everyone, plus ``tenants`` overrides."""
    limits: dict[str, Any] = {
        "timeout_seconds": timeout_seconds,
        "max_concurrency": max_concurrency,
        "max_rps": max_rps,
    }
    default_backends = {
        "openai": BackendConfig(
            kind="openai", base_url="https://api.openai.test/v1", api_key_env="OPENAI_KEY", **limits
        ),
        "azure": BackendConfig(
            kind="azure",
            endpoint="https://shared.openai.azure.test/",
            api_version="2025-03-01-preview",
            api_key_env="AZURE_KEY",
            **limits,
        ),
    }
    return ProvidersConfig(backends=backends or default_backends, tenants=tenants or {})


class MakeGateway(Protocol):
    def __call__(
        self, config: ProvidersConfig, upstream: Upstream | None = None, **kwargs: Any
    ) -> ProviderGateway: ...


class FakeClock:
    """A monotonic clock tests move by hand (breaker cooldowns, Retry-After pauses)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
