"""Per-route concurrency and rate limits, Retry-After pauses and the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx2
import pytest

from providers.support import (
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
from worker.config import CircuitBreakerConfig, ProvidersConfig, TenantOverride
from worker.models import RetryReason
from worker.providers import CallRetryPolicy, Deleted, Transient
from worker.providers.breaker import Admission, CircuitBreaker
from worker.providers.limits import TokenBucket

NO_RETRY = CallRetryPolicy(max_attempts=1)


def with_tenant_c(*, max_concurrency: int = 16, timeout_seconds: float = 1.0) -> ProvidersConfig:
    """B and D share the openai backend's route; C has its own (own upstream, own limiter)."""
    return providers_config(
        tenants={
            str(TENANT_C): {
                "openai": TenantOverride(base_url="https://c.test/v1", api_key_env="C_KEY")
            }
        },
        max_concurrency=max_concurrency,
        timeout_seconds=timeout_seconds,
    )


async def test_saturated_route_does_not_block_other_routes(make_gateway: MakeGateway) -> None:
    release = asyncio.Event()
    two_in_flight = asyncio.Event()
    in_flight = peak = 0

    async def answer(request: httpx2.Request) -> httpx2.Response:
        nonlocal in_flight, peak
        if request.url.host == "c.test":
            return deleted()
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 2:
            two_in_flight.set()
        await release.wait()
        in_flight -= 1
        return deleted()

    gateway = make_gateway(with_tenant_c(max_concurrency=2, timeout_seconds=5.0), script(answer))
    b_calls = [
        asyncio.create_task(gateway.delete_file(TENANT_B, "openai", f"b{i}")) for i in range(5)
    ]
    await asyncio.wait_for(two_in_flight.wait(), 2)
    d_call = asyncio.create_task(gateway.delete_file(TENANT_D, "openai", "d"))

    # C's own route answers while B's route is saturated; D shares B's route and waits.
    assert await asyncio.wait_for(gateway.delete_file(TENANT_C, "openai", "c"), 1) == Deleted()
    await asyncio.sleep(0.05)
    assert not any(call.done() for call in [*b_calls, d_call])
    assert peak == 2

    release.set()
    assert await asyncio.gather(*b_calls, d_call) == [Deleted()] * 6
    assert peak == 2


async def test_request_rate_is_limited_per_route(make_gateway: MakeGateway) -> None:
    # The rate limit alone: no bound on one tenant's queue (test_fairness.py covers that).
    gateway = make_gateway(replace(providers_config(max_rps=20.0), fair_queue_seconds=0.0))

    started = time.monotonic()
    results = await asyncio.gather(
        *(gateway.delete_file(TENANT_B, "openai", f"f{i}") for i in range(30))
    )

    assert results == [Deleted()] * 30
    # Burst of 20, then 10 more at 20/s: at least ~0.5 s (generous lower bound only).
    assert time.monotonic() - started >= 0.4


def test_token_bucket_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=2.0, clock=clock)

    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    clock.advance(1.0)  # paid back the two borrowed tokens exactly
    assert bucket.reserve() == 0.5
    bucket.refund()
    assert bucket.reserve() == 0.5


async def test_retry_after_pauses_the_route(make_gateway: MakeGateway) -> None:
    clock = FakeClock()
    upstream = script(api_error(429, {"retry-after": "30"}), deleted())
    gateway = make_gateway(with_tenant_c(), upstream, clock=clock, retry=NO_RETRY)

    first = await gateway.delete_file(TENANT_B, "openai", "f1")
    clock.advance(10)
    paused = await gateway.delete_file(TENANT_D, "openai", "f2")
    other_route = await gateway.delete_file(TENANT_C, "openai", "f3")
    clock.advance(21)
    after_pause = await gateway.delete_file(TENANT_B, "openai", "f4")

    assert first == Transient(RetryReason.RATE_LIMITED, "HTTP 429 from openai", 30.0)
    assert paused == Transient(
        RetryReason.RATE_LIMITED,
        "openai asked for a pause (Retry-After); not calling for 20s",
        20.0,
        sent=False,  # refused locally: no request, so no cleanup attempt is counted
    )
    assert other_route == Deleted()
    assert after_pause == Deleted()
    paths = [r.url.path for r in upstream.requests]
    assert paths == ["/v1/files/f1", "/v1/files/f3", "/v1/files/f4"]


async def test_circuit_opens_after_threshold_and_half_opens_after_cooldown(
    make_gateway: MakeGateway,
) -> None:
    clock = FakeClock()
    healthy = False

    def answer(request: httpx2.Request) -> httpx2.Response:
        return deleted() if healthy or request.url.host == "c.test" else api_error(503)

    upstream = script(answer)
    gateway = make_gateway(
        with_tenant_c(),
        upstream,
        clock=clock,
        retry=NO_RETRY,
        breaker=CircuitBreakerConfig(failure_threshold=5, cooldown_seconds=30.0),
    )

    failures = [await gateway.delete_file(TENANT_B, "openai", f"f{i}") for i in range(5)]
    assert {f.reason for f in failures if isinstance(f, Transient)} == {RetryReason.SERVER_ERROR}
    assert len(upstream.requests) == 5

    fast = await gateway.delete_vector_store(TENANT_D, "openai", "vs")
    assert fast == Transient(
        RetryReason.CIRCUIT_OPEN,
        "circuit open for openai after repeated failures (last: server_error)",
        30.0,
        sent=False,
    )
    assert len(upstream.requests) == 5  # failed fast, nothing sent
    assert await gateway.delete_file(TENANT_C, "openai", "c") == Deleted()  # own route, own breaker

    clock.advance(29)
    still_open = await gateway.delete_file(TENANT_B, "openai", "f")
    assert isinstance(still_open, Transient)
    assert still_open.retry_after_seconds == pytest.approx(1)

    clock.advance(2)
    healthy = True
    assert await gateway.delete_file(TENANT_B, "openai", "probe") == Deleted()  # half-open probe
    assert await gateway.delete_file(TENANT_B, "openai", "next") == Deleted()  # closed again
    assert upstream.requests[-2].url.path == "/v1/files/probe"


async def test_auth_failures_open_the_circuit_but_429_and_409_do_not(
    make_gateway: MakeGateway,
) -> None:
    busy = script(api_error(429), api_error(409), api_error(429), api_error(409), api_error(429),
                  api_error(409), api_error(401))  # fmt: skip
    gateway = make_gateway(
        providers_config(), busy, retry=NO_RETRY, breaker=CircuitBreakerConfig(failure_threshold=3)
    )

    reasons = [
        r.reason
        for r in [await gateway.delete_file(TENANT_B, "openai", "f") for _ in range(10)]
        if isinstance(r, Transient)
    ]

    assert reasons == [
        RetryReason.RATE_LIMITED, RetryReason.CONFLICT, RetryReason.RATE_LIMITED,
        RetryReason.CONFLICT, RetryReason.RATE_LIMITED, RetryReason.CONFLICT,
        RetryReason.AUTH, RetryReason.AUTH, RetryReason.AUTH,
        RetryReason.CIRCUIT_OPEN,
    ]  # fmt: skip


def test_breaker_probe_is_single_and_a_failed_probe_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2, cooldown_seconds=10), clock)
    for _ in range(2):
        assert breaker.admit() is Admission.CLOSED
        breaker.record(Admission.CLOSED, RetryReason.TIMEOUT)
    assert breaker.admit() == 10.0

    clock.advance(10)
    assert breaker.admit() is Admission.PROBE
    assert breaker.admit() == 10.0  # one probe at a time
    breaker.record(Admission.PROBE, RetryReason.CONNECTION)
    assert breaker.admit() == 10.0  # failed probe: another full cooldown
    assert breaker.last_failure is RetryReason.CONNECTION

    clock.advance(10)
    probe = breaker.admit()
    assert probe is Admission.PROBE
    breaker.abandon(probe)  # cancelled probe frees the slot without a verdict
    assert breaker.admit() is Admission.PROBE
    breaker.record(Admission.PROBE, None)
    assert breaker.admit() is Admission.CLOSED
    assert not breaker.is_open


def test_breaker_success_resets_the_count() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=3), FakeClock())
    for failure in (RetryReason.TIMEOUT, RetryReason.TIMEOUT, None, RetryReason.TIMEOUT):
        breaker.record(Admission.CLOSED, failure)
    assert breaker.admit() is Admission.CLOSED


async def test_cancelled_call_releases_its_slot(make_gateway: MakeGateway) -> None:
    hang = asyncio.Event()

    async def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/stuck"):
            await hang.wait()
        return deleted()

    gateway = make_gateway(providers_config(max_concurrency=1, timeout_seconds=5.0), script(answer))
    stuck = asyncio.create_task(gateway.delete_file(TENANT_B, "openai", "stuck"))
    await asyncio.sleep(0.05)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck

    assert await asyncio.wait_for(gateway.delete_file(TENANT_B, "openai", "ok"), 1) == Deleted()


async def test_waiting_for_a_slot_is_bounded_by_the_call_budget(make_gateway: MakeGateway) -> None:
    hang = asyncio.Event()

    async def answer(request: httpx2.Request) -> httpx2.Response:
        await hang.wait()
        return deleted()

    gateway = make_gateway(providers_config(max_concurrency=1, timeout_seconds=0.2), script(answer))
    holder = asyncio.create_task(gateway.delete_file(TENANT_B, "openai", "holder"))
    await asyncio.sleep(0.02)

    started = time.monotonic()
    waiting = await gateway.delete_file(TENANT_B, "openai", "waiting")

    assert time.monotonic() - started < 1.0
    assert isinstance(waiting, Transient)
    assert waiting.reason is RetryReason.RATE_LIMITED
    assert waiting.detail.startswith("openai: all 1 slots busy")
    hang.set()
    await holder
