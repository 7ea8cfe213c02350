"""The gateway against a real local server (``FakeOpenAI``) over real sockets, both flavors.

Timeouts, resets and keep-alive only happen in a real transport: the mock transport tests
cannot show that a delay really times out or that a reset really reads as a connection error.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cwlab.fake_openai import FakeOpenAI, Fault
from providers.support import TENANT_A, TENANT_B, TENANT_C, TENANT_D
from worker.config import BackendConfig, CircuitBreakerConfig, ProvidersConfig, TenantOverride
from worker.models import RetryReason
from worker.providers import (
    CallRetryPolicy,
    Deleted,
    Transient,
)
from worker.providers.gateway import ProviderGateway

KEYS = {
    "OPENAI_KEY": "sk-shared",
    "AZURE_KEY": "az-shared",
    "A_KEY": "az-tenant-a",
    "C_KEY": "sk-c",
}
AZURE_VERSION = "2025-03-01-preview"
NO_RETRY = CallRetryPolicy(max_attempts=1)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=KEYS.values()) as server:
        yield server


def routing(fake: FakeOpenAI, timeout_seconds: float = 2.0) -> ProvidersConfig:
    """Shared openai + azure backends; A on its own Azure endpoint, C on its own OpenAI URL."""
    return ProvidersConfig(
        backends={
            "openai": BackendConfig(
                kind="openai",
                base_url=fake.openai_base_url,
                api_key_env="OPENAI_KEY",
                timeout_seconds=timeout_seconds,
            ),
            "azure": BackendConfig(
                kind="azure",
                endpoint=fake.azure_endpoint,
                api_version=AZURE_VERSION,
                api_key_env="AZURE_KEY",
                timeout_seconds=timeout_seconds,
            ),
        },
        tenants={
            str(TENANT_A): {
                "azure": TenantOverride(
                    endpoint=f"{fake.url}/tenant-a",
                    api_version="2024-10-21",
                    api_key_env="A_KEY",
                )
            },
            str(TENANT_C): {
                "openai": TenantOverride(base_url=f"{fake.url}/tenant-c/v1", api_key_env="C_KEY")
            },
        },
    )


@pytest.fixture
async def gateways() -> AsyncIterator[list[ProviderGateway]]:
    built: list[ProviderGateway] = []
    yield built
    for gateway in built:
        await gateway.aclose()


def make(built: list[ProviderGateway], config: ProvidersConfig, **kwargs: Any) -> ProviderGateway:
    gateway = ProviderGateway(config, environ=KEYS, **kwargs)  # default pool: real sockets
    built.append(gateway)
    return gateway


async def test_both_flavors_route_per_tenant_and_404_is_idempotent(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    for file_id in ("fa", "fb", "fb2", "fc"):
        fake.add_file(file_id)
    fake.add_vector_store("vsa", ["fa2"])
    fake.add_vector_store("vsb")
    gateway = make(gateways, routing(fake))

    results = [
        await gateway.delete_file(TENANT_A, "azure", "fa"),
        await gateway.delete_vector_store(TENANT_A, "azure", "vsa"),
        await gateway.delete_file(TENANT_B, "openai", "fb"),
        await gateway.delete_vector_store(TENANT_B, "openai", "vsb"),
        await gateway.delete_file(TENANT_B, "azure", "fb2"),
        await gateway.delete_file(TENANT_C, "openai", "fc"),
        await gateway.delete_file(TENANT_A, "azure", "fa"),  # again: already gone
        await gateway.delete_vector_store(TENANT_D, "openai", "vsb"),
    ]

    assert results == [Deleted()] * 6 + [Deleted(not_found=True)] * 2
    assert fake.files == {"fa2"}  # deleting a vector store leaves its files
    seen = [
        (r.flavor, r.path, r.query.get("api-version"), r.auth_scheme, r.api_key, r.status)
        for r in fake.requests()
    ]
    tenant_a = ("2024-10-21", "api-key", "az-tenant-a")
    assert seen == [
        ("azure", "/tenant-a/openai/files/fa", *tenant_a, 200),
        ("azure", "/tenant-a/openai/vector_stores/vsa", *tenant_a, 200),
        ("openai", "/v1/files/fb", None, "bearer", "sk-shared", 200),
        ("openai", "/v1/vector_stores/vsb", None, "bearer", "sk-shared", 200),
        ("azure", "/openai/files/fb2", AZURE_VERSION, "api-key", "az-shared", 200),
        ("openai", "/tenant-c/v1/files/fc", None, "bearer", "sk-c", 200),
        ("azure", "/tenant-a/openai/files/fa", *tenant_a, 404),
        ("openai", "/v1/vector_stores/vsb", None, "bearer", "sk-shared", 404),
    ]
    assert all(
        r.headers.get("openai-beta") == "assistants=v2"
        for r in fake.requests()
        if r.resource == "vector_store"
    )


async def test_requests_carry_no_sdk_telemetry_headers(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    """The SDK's ``X-Stainless-*`` telemetry (its platform, retry count and read timeout) tells
    the API nothing a delete needs, and building them was a fifth of the SDK's work per
    request; authentication, routing headers and the user agent stay."""
    fake.add_file("fb")
    fake.add_vector_store("vsa")
    gateway = make(gateways, routing(fake))

    assert await gateway.delete_file(TENANT_B, "openai", "fb") == Deleted()
    assert await gateway.delete_vector_store(TENANT_A, "azure", "vsa") == Deleted()

    requests = fake.requests()
    assert len(requests) == 2
    for request in requests:
        names = {name.lower() for name in request.headers}
        # The one left is the SDK's own switch for answering with the raw response.
        assert {name for name in names if name.startswith("x-stainless")} == {
            "x-stainless-raw-response"
        }
        assert "user-agent" in names
    assert [r.auth_scheme for r in requests] == ["bearer", "api-key"]
    assert requests[1].headers.get("openai-beta") == "assistants=v2"


@pytest.mark.parametrize(("tenant", "label"), [(TENANT_B, "openai"), (TENANT_A, "azure")])
async def test_429_with_retry_after_is_handed_back(
    fake: FakeOpenAI, gateways: list[ProviderGateway], tenant: Any, label: str
) -> None:
    fake.add_file("f1")
    fake.inject(Fault(status=429, headers={"Retry-After": "30"}, times=1))
    gateway = make(gateways, routing(fake))

    started = time.monotonic()
    result = await gateway.delete_file(tenant, label, "f1")

    assert time.monotonic() - started < 1.0
    assert result == Transient(RetryReason.RATE_LIMITED, f"HTTP 429 from {label}", 30.0)
    assert fake.files == {"f1"}  # the faulted request changed nothing
    again = await gateway.delete_file(tenant, label, "f1")
    assert isinstance(again, Transient)
    assert again.reason is RetryReason.RATE_LIMITED
    assert len(fake.requests()) == 1  # the route is paused: the second call sent nothing


async def test_short_retry_after_is_retried_in_call(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    fake.add_file("f1")
    fake.inject(Fault(status=429, headers={"retry-after-ms": "100"}, times=1))
    gateway = make(gateways, routing(fake))

    assert await gateway.delete_file(TENANT_B, "openai", "f1") == Deleted()
    assert [r.status for r in fake.requests()] == [429, 200]


async def test_a_refused_connect_is_a_connection_error_not_a_timeout(
    gateways: list[ProviderGateway],
) -> None:
    """Nothing listens on the port: the SDK's aiohttp transport calls every aiohttp connection
    error a ConnectTimeout; the worker must still see a connection error."""
    with socket.socket() as sock:  # a port that was free a moment ago and now refuses
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ProvidersConfig(
        backends={"openai": BackendConfig(kind="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                          api_key_env="OPENAI_KEY", timeout_seconds=5.0)}
    )  # fmt: skip
    result = await make(gateways, config, retry=NO_RETRY).delete_file(TENANT_B, "openai", "f")
    assert isinstance(result, Transient)
    assert result.reason is RetryReason.CONNECTION, result
    assert "ConnectError" in result.detail


@pytest.mark.parametrize(("tenant", "label"), [(TENANT_C, "openai"), (TENANT_B, "azure")])
async def test_connection_reset(
    fake: FakeOpenAI, gateways: list[ProviderGateway], tenant: Any, label: str
) -> None:
    fake.add_file("f1")
    fake.inject(Fault(reset=True, times=1))
    retrying = make(gateways, routing(fake), retry=CallRetryPolicy(first_wait_seconds=0.01))

    assert await retrying.delete_file(tenant, label, "f1") == Deleted()

    fake.add_file("f2")
    fake.inject(Fault(reset=True))
    single = make(gateways, routing(fake), retry=NO_RETRY)
    result = await single.delete_file(tenant, label, "f2")
    assert isinstance(result, Transient)
    assert result.reason is RetryReason.CONNECTION
    assert [r.status for r in fake.requests()] == [None, 200, None]


async def test_slow_upstream_times_out_and_retry_settles(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    """The first DELETE hangs past the timeout; the in-call retry deletes the file."""
    fake.add_file("f1")
    fake.inject(Fault(delay_seconds=2.0, times=1))
    gateway = make(
        gateways, routing(fake, timeout_seconds=0.5), retry=CallRetryPolicy(first_wait_seconds=0.1)
    )

    started = time.monotonic()
    assert await gateway.delete_file(TENANT_A, "azure", "f1") == Deleted()
    assert time.monotonic() - started < 1.0


async def test_a_timed_out_delete_that_happened_reads_as_deleted(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    """Timeout, then the server completes the delete, then the retry's 404 = success."""
    fake.add_file("f1")
    fake.inject(Fault(delay_seconds=0.55, times=1))
    gateway = make(
        gateways,
        routing(fake, timeout_seconds=0.5),
        retry=CallRetryPolicy(first_wait_seconds=0.6, max_wait_seconds=1.0, budget_factor=4.0),
    )

    assert await gateway.delete_file(TENANT_B, "openai", "f1") == Deleted(not_found=True)
    assert fake.deletes("file")[0].resource_id == "f1"


async def test_timeout_without_retry_is_transient(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    fake.add_file("f1")
    fake.inject(Fault(delay_seconds=1.0, times=1))
    gateway = make(gateways, routing(fake, timeout_seconds=0.2), retry=NO_RETRY)

    started = time.monotonic()
    result = await gateway.delete_file(TENANT_B, "openai", "f1")

    assert time.monotonic() - started < 0.8
    assert result == Transient(
        RetryReason.TIMEOUT, "timeout after 0.2s talking to openai (ReadTimeout)"
    )


async def test_one_tenants_broken_key_does_not_touch_others(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    for file_id in ("fa", "fb", "fc"):
        fake.add_file(file_id)
    fake.inject(Fault(status=503, key="az-tenant-a"))  # only tenant A's upstream is down
    gateway = make(
        gateways, routing(fake), retry=NO_RETRY, breaker=CircuitBreakerConfig(failure_threshold=2)
    )

    a_results = [await gateway.delete_file(TENANT_A, "azure", "fa") for _ in range(3)]
    others = await asyncio.gather(
        gateway.delete_file(TENANT_B, "azure", "fb"),
        gateway.delete_file(TENANT_C, "openai", "fc"),
    )

    assert [r.reason for r in a_results if isinstance(r, Transient)] == [
        RetryReason.SERVER_ERROR, RetryReason.SERVER_ERROR, RetryReason.CIRCUIT_OPEN,
    ]  # fmt: skip
    assert list(others) == [Deleted(), Deleted()]
    assert fake.files == {"fa"}


async def test_wrong_key_and_api_version(fake: FakeOpenAI, gateways: list[ProviderGateway]) -> None:
    fake.add_file("f1")
    wrong_key = make(gateways, routing(fake), retry=NO_RETRY)
    wrong_key_env = {**KEYS, "C_KEY": "sk-revoked"}
    revoked = ProviderGateway(routing(fake), environ=wrong_key_env, retry=NO_RETRY)
    gateways.append(revoked)
    config = routing(fake)
    # A well-formed version this resource does not serve: Azure says "Resource not found".
    config.tenants[str(TENANT_A)]["azure"] = TenantOverride(
        endpoint=fake.azure_endpoint, api_version="2099-01-01-preview", api_key_env="A_KEY"
    )
    unserved_version = make(gateways, config, retry=NO_RETRY)

    auth = await revoked.delete_file(TENANT_C, "openai", "f1")
    bad_version = await unserved_version.delete_file(TENANT_A, "azure", "f1")

    assert isinstance(auth, Transient)
    assert auth.reason is RetryReason.AUTH
    assert isinstance(bad_version, Transient)
    assert bad_version.reason is RetryReason.CONFIG
    assert fake.files == {"f1"}
    assert await wrong_key.delete_file(TENANT_B, "openai", "f1") == Deleted()


async def test_deleted_false_is_transient(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    fake.add_vector_store("vs")
    fake.inject(Fault(deleted_false=True))
    gateway = make(gateways, routing(fake), retry=CallRetryPolicy(first_wait_seconds=0.01))

    result = await gateway.delete_vector_store(TENANT_B, "azure", "vs")

    assert result == Transient(RetryReason.NOT_DELETED, "azure answered 2xx without deleted: true")
    assert len(fake.requests()) == 3  # retried in call, up to the attempt cap


async def test_many_concurrent_deletes_share_one_pool(
    fake: FakeOpenAI, gateways: list[ProviderGateway]
) -> None:
    ids = [f"f{i}" for i in range(60)]
    for file_id in ids:
        fake.add_file(file_id)
    gateway = make(gateways, routing(fake))
    tenants = [(TENANT_A, "azure"), (TENANT_B, "openai"), (TENANT_C, "openai"), (TENANT_D, "azure")]

    results = await asyncio.gather(
        *(gateway.delete_file(*tenants[i % 4], file_id) for i, file_id in enumerate(ids))
    )

    assert results == [Deleted()] * 60
    assert fake.files == set()
