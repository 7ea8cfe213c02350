"""Per-tenant routing, key handling and start-time validation (SPEC §6, §8)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest

from providers.support import (
    ENV,
    SECRET,
    TENANT_A,
    TENANT_B,
    TENANT_C,
    TENANT_D,
    FakeClock,
    MakeGateway,
    api_error,
    deleted,
    providers_config,
    script,
)
from worker.config import BackendConfig, ProvidersConfig, TenantOverride
from worker.models import RetryReason
from worker.providers import CallRetryPolicy, Deleted, Transient

AZURE_VERSION_A = "2024-10-01-preview"


@pytest.fixture
def key_file_a(tmp_path: Path) -> Path:
    path = tmp_path / "tenant-a.key"
    path.write_text("  az-tenant-a-key\n")
    return path


def three_tenants(key_file_a: Path) -> ProvidersConfig:
    """A: own Azure endpoint (key file); B, D: shared backends; C: own OpenAI base URL."""
    return providers_config(
        tenants={
            str(TENANT_A): {
                "azure": TenantOverride(
                    endpoint="https://tenant-a.openai.azure.test/",
                    api_version=AZURE_VERSION_A,
                    api_key_file=str(key_file_a),
                )
            },
            str(TENANT_C): {
                "openai": TenantOverride(base_url="https://c.proxy.test/v1", api_key_env="C_KEY")
            },
        }
    )


async def test_each_tenant_reaches_its_own_upstream(
    make_gateway: MakeGateway, key_file_a: Path
) -> None:
    upstream = script(deleted())
    gateway = make_gateway(three_tenants(key_file_a), upstream)

    assert await gateway.delete_file(TENANT_A, "azure", "file-a") == Deleted()
    assert await gateway.delete_vector_store(TENANT_A, "azure", "vs-a") == Deleted()
    assert await gateway.delete_file(TENANT_B, "openai", "file-b") == Deleted()
    assert await gateway.delete_vector_store(TENANT_B, "openai", "vs-b") == Deleted()
    assert await gateway.delete_file(TENANT_C, "openai", "file-c") == Deleted()
    assert await gateway.delete_file(TENANT_B, "azure", "file-b2") == Deleted()

    seen = [
        (r.method, str(r.url), _auth(r), r.headers.get("openai-beta")) for r in upstream.requests
    ]
    assert seen == [
        (
            "DELETE",
            f"https://tenant-a.openai.azure.test/openai/files/file-a?api-version={AZURE_VERSION_A}",
            ("api-key", "az-tenant-a-key"),
            None,
        ),
        (
            "DELETE",
            f"https://tenant-a.openai.azure.test/openai/vector_stores/vs-a?api-version={AZURE_VERSION_A}",
            ("api-key", "az-tenant-a-key"),
            "assistants=v2",
        ),
        ("DELETE", "https://api.openai.test/v1/files/file-b", ("bearer", SECRET), None),
        (
            "DELETE",
            "https://api.openai.test/v1/vector_stores/vs-b",
            ("bearer", SECRET),
            "assistants=v2",
        ),
        ("DELETE", "https://c.proxy.test/v1/files/file-c", ("bearer", "sk-tenant-c"), None),
        (
            "DELETE",
            "https://shared.openai.azure.test/openai/files/file-b2?api-version=2025-03-01-preview",
            ("api-key", "az-shared-key"),
            None,
        ),
    ]


def _auth(request: httpx2.Request) -> tuple[str, str]:
    """Exactly one credential header per request."""
    api_key = request.headers.get("api-key")
    bearer = request.headers.get("authorization")
    assert (api_key is None) != (bearer is None), "one of api-key / Authorization, not both"
    if api_key is not None:
        return ("api-key", api_key)
    assert bearer is not None
    assert bearer.startswith("Bearer ")
    return ("bearer", bearer.removeprefix("Bearer "))


async def test_process_wide_openai_org_env_is_not_sent(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-process-wide")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-process-wide")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://wrong.test/v1")
    upstream = script(deleted())
    gateway = make_gateway(providers_config(), upstream)

    await gateway.delete_file(TENANT_B, "openai", "f")
    await gateway.delete_file(TENANT_B, "azure", "f")

    for request in upstream.requests:
        assert "openai-organization" not in request.headers
        assert "openai-project" not in request.headers
        assert request.url.host != "wrong.test"


async def test_unknown_label_is_a_config_error_without_a_request(
    make_gateway: MakeGateway,
) -> None:
    upstream = script(deleted())
    gateway = make_gateway(providers_config(), upstream)

    result = await gateway.delete_file(TENANT_B, "foo", "file-1")

    assert result == Transient(RetryReason.CONFIG, "unknown backend label 'foo'")
    assert upstream.requests == []


async def test_tenant_without_routing_is_a_config_error(make_gateway: MakeGateway) -> None:
    """A backend with no shared key serves only tenants that bring their own."""
    config = ProvidersConfig(
        backends={"azure": _azure(api_key_env=None)},
        tenants={
            str(TENANT_A): {
                "azure": TenantOverride(endpoint="https://a.test/", api_key_env="AZURE_KEY")
            }
        },
    )
    upstream = script(deleted())
    gateway = make_gateway(config, upstream)

    result = await gateway.delete_file(TENANT_B, "azure", "file-1")
    assert isinstance(result, Transient)
    assert result.reason is RetryReason.CONFIG
    assert str(TENANT_B) in result.detail
    assert "no routing for 'azure'" in result.detail
    assert upstream.requests == []
    assert await gateway.delete_file(TENANT_A, "azure", "file-1") == Deleted()


async def test_missing_key_env_var_names_the_variable_not_a_value(
    make_gateway: MakeGateway,
) -> None:
    upstream = script(deleted())
    gateway = make_gateway(providers_config(), upstream, environ={"AZURE_KEY": SECRET})

    result = await gateway.delete_file(TENANT_B, "openai", "file-1")

    assert result == Transient(
        RetryReason.CONFIG, "openai: api key env var OPENAI_KEY is not set or empty"
    )
    assert upstream.requests == []


async def test_unreadable_key_file_is_a_config_error(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.key"
    config = providers_config(
        tenants={str(TENANT_C): {"openai": TenantOverride(api_key_file=str(missing))}}
    )
    upstream = script(deleted())
    gateway = make_gateway(config, upstream)

    result = await gateway.delete_file(TENANT_C, "openai", "file-1")

    assert result == Transient(
        RetryReason.CONFIG, f"openai: api key file {missing} is unreadable (FileNotFoundError)"
    )
    assert upstream.requests == []
    # The override's key file replaces the backend's env var; the backend's URL is inherited.
    await asyncio.to_thread(missing.write_text, SECRET + "\n")
    assert await gateway.delete_file(TENANT_C, "openai", "file-1") == Deleted()
    assert str(upstream.requests[0].url) == "https://api.openai.test/v1/files/file-1"
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_rotated_key_file_is_used_after_an_auth_failure(
    make_gateway: MakeGateway, key_file_a: Path
) -> None:
    upstream = script(api_error(401), deleted())
    gateway = make_gateway(
        three_tenants(key_file_a), upstream, retry=CallRetryPolicy(max_attempts=1)
    )

    first = await gateway.delete_file(TENANT_A, "azure", "f")
    await asyncio.to_thread(key_file_a.write_text, "az-rotated\n")
    second = await gateway.delete_file(TENANT_A, "azure", "f")

    assert isinstance(first, Transient)
    assert first.reason is RetryReason.AUTH
    assert second == Deleted()
    assert [r.headers["api-key"] for r in upstream.requests] == ["az-tenant-a-key", "az-rotated"]


async def test_rotated_key_env_is_used_after_the_client_ttl(make_gateway: MakeGateway) -> None:
    environ = dict(ENV)
    clock = FakeClock()
    upstream = script(deleted())
    gateway = make_gateway(
        providers_config(), upstream, environ=environ, clock=clock, client_ttl_seconds=60
    )

    await gateway.delete_file(TENANT_B, "openai", "f1")
    environ["OPENAI_KEY"] = "sk-rotated"
    await gateway.delete_file(TENANT_B, "openai", "f2")
    clock.advance(61)
    await gateway.delete_file(TENANT_B, "openai", "f3")

    keys = [r.headers["authorization"] for r in upstream.requests]
    assert keys == [f"Bearer {SECRET}", f"Bearer {SECRET}", "Bearer sk-rotated"]


async def test_secret_never_leaks(
    make_gateway: MakeGateway, key_file_a: Path, tmp_path: Path
) -> None:
    """Not in results (even when the upstream echoes it) or reprs; config errors: the test
    of a URL with credentials in tests/test_config_routes.py."""
    secret_file = tmp_path / "secret.key"
    secret_file.write_text(SECRET)
    config = three_tenants(key_file_a)
    config.tenants[str(TENANT_D)] = {"azure": TenantOverride(api_key_file=str(secret_file))}
    answers = [api_error(s) for s in (400, 401, 403, 404, 409, 422, 429, 500)]
    upstream = script(*answers, deleted())
    gateway = make_gateway(config, upstream, retry=CallRetryPolicy(max_attempts=1))

    texts = [repr(gateway)]
    for tenant in (TENANT_A, TENANT_B, TENANT_C, TENANT_D):
        for label in ("openai", "azure"):
            texts.append(repr(gateway.route(tenant, label)))
            for _ in range(3):
                texts.append(repr(await gateway.delete_file(tenant, label, "f")))
    texts.append(repr(gateway))
    texts.append(repr(await make_gateway(config, environ={}).delete_file(TENANT_B, "openai", "f")))

    assert any(SECRET in r.headers.get("authorization", "") for r in upstream.requests)
    assert any("api-key" in r.headers for r in upstream.requests)
    for text in texts:
        assert SECRET not in text


async def test_route_repr_names_the_key_source_only(
    make_gateway: MakeGateway, key_file_a: Path
) -> None:
    gateway = make_gateway(three_tenants(key_file_a))

    assert repr(gateway.route(TENANT_A, "azure")) == (
        f"Route('azure', azure, tenant {TENANT_A}, url=https://tenant-a.openai.azure.test/, "
        f"api_version={AZURE_VERSION_A}, key from file {key_file_a})"
    )
    assert repr(gateway.route(TENANT_B, "openai")) == (
        "Route('openai', openai, shared, url=https://api.openai.test/v1, "
        "key from env var OPENAI_KEY)"
    )


def _azure(**kwargs: Any) -> BackendConfig:
    fields: dict[str, Any] = {
        "kind": "azure",
        "endpoint": "https://r.openai.azure.test/",
        "api_version": "2025-03-01-preview",
        "api_key_env": "AZURE_KEY",
    }
    fields.update(kwargs)
    return BackendConfig(**fields)


async def test_azure_endpoint_may_sit_under_a_gateway_prefix(make_gateway: MakeGateway) -> None:
    """APIM and proxies put the resource under a path; only an /openai segment is refused."""
    config = ProvidersConfig(backends={"azure": _azure(endpoint="https://apim.test/tenant-b/")})
    upstream = script(deleted())
    gateway = make_gateway(config, upstream)

    assert await gateway.delete_file(TENANT_B, "azure", "f") == Deleted()
    assert upstream.requests[0].url.path == "/tenant-b/openai/files/f"
