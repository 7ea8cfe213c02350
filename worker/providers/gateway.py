"""``ProviderGateway``: the provider layer's one entry point for the handlers (SPEC §6).

A call goes: route (tenant + label) -> client (key read lazily) -> Retry-After pause check ->
circuit breaker -> in-call retries, each attempt inside the route's limiter -> route suspicion
(a not-found of a suspected route is a ``config`` retry, ``worker.providers.suspicion``) -> one
``DeleteResult``. Never raises for provider or configuration trouble; only cancellation and
programming errors propagate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from uuid import UUID

import httpx2
import openai

from worker.config import CircuitBreakerConfig, ProvidersConfig
from worker.models import RetryReason
from worker.providers.breaker import BREAKER_FAILURES, Admission, CircuitBreaker
from worker.providers.classify import Target, classify_exception, classify_response
from worker.providers.clients import ClientCache, Operation, new_shared_pool, send_delete
from worker.providers.limits import (
    Clock,
    RouteBusy,
    RouteDeferred,
    RouteLimiter,
    Sleep,
    Tenant,
)
from worker.providers.results import (
    Deleted,
    DeleteResult,
    Permanent,
    ProviderObserver,
    ResourceKind,
    Transient,
    outcome_label,
    seconds_text,
)
from worker.providers.retrying import CallRetryPolicy, run_with_retries
from worker.providers.routing import Route, RouteId, Router, default_environ
from worker.providers.suspicion import NotFoundStreak, RouteHealthListener

# Cached clients are rebuilt this often, re-reading keys: rotated secrets apply within 5 min.
CLIENT_TTL_SECONDS = 300.0
# A receipt keeps the provider's request id (OpenAI's are ~40 characters); a longer header is cut.
REQUEST_ID_MAX_CHARS = 128


_RESOURCES: dict[Operation, ResourceKind] = {
    "delete_file": "file",
    "delete_vector_store": "vector_store",
}


class _RouteState:
    """Everything kept per route: its limiter, breaker and not-found streak."""

    def __init__(
        self,
        route: Route,
        breaker: CircuitBreakerConfig,
        clock: Clock,
        sleep: Sleep,
        suspect_after_not_found: int,
        fair_queue: float,
    ) -> None:
        self.route = route
        self.limiter = RouteLimiter(
            route.max_concurrency, route.max_rps, clock, sleep, fair_queue_seconds=fair_queue
        )
        self.breaker = CircuitBreaker(breaker, clock)
        self.streak = NotFoundStreak(suspect_after_not_found)


class ProviderGateway:
    """Deletes provider files and vector stores with each tenant's routing.

    Takes ownership of ``http_client`` (the shared pool) when given: ``aclose`` closes it.
    """

    def __init__(
        self,
        config: ProvidersConfig,
        *,
        observer: ProviderObserver | None = None,
        route_health: RouteHealthListener | None = None,
        http_client: httpx2.AsyncClient | None = None,
        retry: CallRetryPolicy | None = None,
        breaker: CircuitBreakerConfig | None = None,
        client_ttl_seconds: float = CLIENT_TTL_SECONDS,
        environ: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Validates every route now: raises ``ConfigError`` naming the key path."""
        self._router = Router(config)
        self._observer = observer
        self._route_health = route_health
        self._retry = retry or CallRetryPolicy()
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._pool = http_client if http_client is not None else new_shared_pool()
        env = environ if environ is not None else default_environ()
        self._clients = ClientCache(self._pool, env, clock, client_ttl_seconds)
        breaker_policy = breaker or CircuitBreakerConfig()
        threshold = config.route_suspicion.not_found_threshold
        self._states: dict[RouteId, _RouteState] = {
            route.route_id: _RouteState(
                route, breaker_policy, clock, sleep, threshold, config.fair_queue_seconds
            )
            for route in self._router.routes()
        }
        self._closed = False

    async def delete_file(self, tenant_id: UUID, label: str, file_id: str) -> DeleteResult:
        """Delete a provider file (it also leaves every vector store it was in)."""
        return await self._delete(tenant_id, label, "delete_file", file_id)

    async def delete_vector_store(
        self, tenant_id: UUID, label: str, vector_store_id: str
    ) -> DeleteResult:
        """Delete a vector store (its files are not deleted by this)."""
        return await self._delete(tenant_id, label, "delete_vector_store", vector_store_id)

    async def delete_file_on_route(self, route: Route, file_id: str) -> DeleteResult:
        """Delete a file through one given route (reconcile's unreferenced files: no row, so
        no tenant and label to resolve); the same limits, breaker and suspicion as cleanup."""
        return await self._delete_on(route, "delete_file", file_id, tenant_id=route.tenant_id)

    def listing_access(self, route: Route) -> tuple[openai.AsyncOpenAI | Transient, RouteLimiter]:
        """The route's client and its limiter: a listing shares the route's concurrency, rate
        and Retry-After pause with the deletes of this process (``worker.providers.listing``)."""
        if self._closed:
            raise RuntimeError("ProviderGateway used after aclose()")
        return self._clients.get(route), self._states[route.route_id].limiter

    async def aclose(self) -> None:
        """Close the shared connection pool, once; later calls are a programming error."""
        if self._closed:
            return
        self._closed = True
        self._clients.clear()
        await self._pool.aclose()

    def routes(self) -> list[Route]:
        """Every configured route (diagnostics, restoring persisted suspicion)."""
        return [state.route for state in self._states.values()]

    def restore_suspicion(
        self, label: str, tenant_id: UUID | None, fingerprint: str, distinct_not_found: int
    ) -> bool:
        """Start a route suspected, as an earlier process recorded it; only while the route's
        configuration is unchanged (a fixed key or project clears it). True when applied."""
        state = self._states.get((label, tenant_id))
        if state is None or state.route.fingerprint != fingerprint:
            return False
        state.streak.restore(distinct_not_found)
        return True

    def suspected_routes(self) -> list[Route]:
        """Routes whose not-founds currently do not count as done."""
        return [s.route for s in self._states.values() if s.streak.suspected]

    def route(self, tenant_id: UUID, label: str) -> Route | Transient:
        """The route a call would use (diagnostics, ``check-config``)."""
        return self._router.resolve(tenant_id, label)

    def client_for(self, tenant_id: UUID, label: str) -> openai.AsyncOpenAI | Transient:
        """The cached SDK client a call would use (diagnostics and tests)."""
        route = self._router.resolve(tenant_id, label)
        return route if isinstance(route, Transient) else self._clients.get(route)

    @property
    def http_client(self) -> httpx2.AsyncClient:
        """The one connection pool every SDK client shares."""
        return self._pool

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"ProviderGateway({self._router!r}, clients={len(self._clients)}, {state})"

    async def _delete(
        self, tenant_id: UUID, label: str, operation: Operation, resource_id: str
    ) -> DeleteResult:
        if self._closed:
            raise RuntimeError("ProviderGateway used after aclose()")
        route = self._router.resolve(tenant_id, label)
        if isinstance(route, Transient):
            return route if resource_id else Permanent(f"{operation}: empty resource id")
        return await self._delete_on(route, operation, resource_id, tenant_id=tenant_id)

    async def _delete_on(
        self, route: Route, operation: Operation, resource_id: str, *, tenant_id: Tenant
    ) -> DeleteResult:
        """One delete through ``route``; ``tenant_id`` takes its fair turn on the route."""
        if self._closed:
            raise RuntimeError("ProviderGateway used after aclose()")
        if not resource_id:
            return Permanent(f"{operation}: empty resource id")
        label = route.label
        client = self._clients.get(route)
        if isinstance(client, Transient):
            return client
        state = self._states[route.route_id]
        pause = state.limiter.pause_remaining()
        if pause > self._retry.max_wait_seconds:
            return Transient(
                RetryReason.RATE_LIMITED,
                f"{label} asked for a pause (Retry-After); not calling for {seconds_text(pause)}",
                pause,
                sent=False,
            )
        admission = state.breaker.admit()
        if not isinstance(admission, Admission):
            last = state.breaker.last_failure
            return Transient(
                RetryReason.CIRCUIT_OPEN,
                f"circuit open for {label} after repeated failures"
                + (f" (last: {last.value})" if last is not None else ""),
                admission,
                sent=False,
            )
        target = Target(route.flavor, _RESOURCES[operation], resource_id)
        result = await self._guarded_call(state, admission, client, operation, target, tenant_id)
        return await self._judge_streak(state, target, result)

    async def _judge_streak(
        self, state: _RouteState, target: Target, result: DeleteResult
    ) -> DeleteResult:
        """Route suspicion (SPEC §13): not-founds of a suspected route are not "done"."""
        route, streak = state.route, state.streak
        if isinstance(result, Deleted) and not result.not_found:
            streak.deleted(target.resource, target.resource_id)
            if streak.succeeded() and self._route_health is not None:
                await self._route_health.route_recovered(route)
            return result
        if not (isinstance(result, Deleted) and result.not_found):
            return result
        if streak.deleted_here(target.resource, target.resource_id):
            return result  # a repeat of this route's own delete: gone, and no strike
        if not streak.suspected:
            if not streak.not_found(target.resource, target.resource_id):
                return result
            if self._route_health is not None:
                await self._route_health.route_suspected(route, streak.distinct)
        return Transient(
            RetryReason.CONFIG,
            f"{route.describe()} is suspected: not-found for {streak.distinct} distinct objects "
            "in a row without a success (wrong key, project or organization?)",
        )

    async def _guarded_call(
        self,
        state: _RouteState,
        admission: Admission,
        client: openai.AsyncOpenAI,
        operation: Operation,
        target: Target,
        tenant_id: Tenant,
    ) -> DeleteResult:
        """The retried call, with its outcome fed to the breaker (and auth to the cache)."""
        route = state.route
        deadline = self._clock() + self._retry.budget_seconds(route.timeout_seconds)
        reached = False  # an attempt of this call reached the provider

        async def attempt() -> DeleteResult:
            nonlocal reached
            result = await self._attempt(state, client, operation, target, deadline, tenant_id)
            if isinstance(result, Transient) and not result.sent:
                # Refused by our own limiter. After an attempt that reached the provider, the
                # call was tried all the same: it counts as sent (a cleanup attempt).
                return dataclasses.replace(result, sent=True) if reached else result
            reached = True
            return result

        try:
            result = await run_with_retries(
                attempt,
                policy=self._retry,
                deadline=deadline,
                timeout_seconds=route.timeout_seconds,
                clock=self._clock,
                sleep=self._sleep,
            )
        except BaseException:
            state.breaker.abandon(admission)
            raise
        failure = result.reason if isinstance(result, Transient) else None
        if isinstance(result, Transient) and not result.sent:  # no request: nothing learnt
            state.breaker.abandon(admission)
        else:
            state.breaker.record(admission, failure if failure in BREAKER_FAILURES else None)
        if failure is RetryReason.AUTH:
            self._clients.evict(route)  # the next call re-reads a possibly rotated key
        return result

    async def _attempt(
        self,
        state: _RouteState,
        client: openai.AsyncOpenAI,
        operation: Operation,
        target: Target,
        deadline: float,
        tenant_id: Tenant,
    ) -> DeleteResult:
        """One HTTP request inside the route's limiter, or ``Transient(sent=False)`` without one.

        A 429's Retry-After pauses the route for every caller. The tenant's turn is fair
        (``RouteLimiter``); a tenant over its share is deferred without a request.
        """
        route = state.route
        try:
            async with state.limiter.slot(deadline - self._clock(), tenant_id):
                timeout = min(route.timeout_seconds, max(0.001, deadline - self._clock()))
                started = self._clock()
                result = await self._send(client, route, operation, target, timeout)
                self._observe(route.label, operation, result, self._clock() - started)
        except RouteBusy as busy:
            detail = f"{route.label}: {busy.detail}"
            return Transient(RetryReason.RATE_LIMITED, detail, busy.retry_after_seconds, sent=False)
        except RouteDeferred as deferred:
            detail = f"{route.label}: {deferred.detail}"
            return Transient(RetryReason.DEFERRED, detail, deferred.retry_after_seconds, sent=False)
        if isinstance(result, Transient) and result.reason is RetryReason.RATE_LIMITED:
            state.limiter.rate.rate_limited()  # the upstream's 429: slow this route down
            if result.retry_after_seconds:
                state.limiter.pause_for(result.retry_after_seconds)
        elif not isinstance(result, Transient):
            state.limiter.rate.succeeded()
        return result

    async def _send(
        self,
        client: openai.AsyncOpenAI,
        route: Route,
        operation: Operation,
        target: Target,
        timeout_seconds: float,
    ) -> DeleteResult:
        try:
            raw = await send_delete(client, operation, target.resource_id, timeout_seconds)
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            result = classify_exception(
                exc,
                backend=route.label,
                timeout_seconds=timeout_seconds,
                wall_now=self._wall_clock(),
                target=target,
            )
            response = getattr(exc, "response", None)
            if isinstance(response, httpx2.Response):
                return _with_evidence(result, route, response.status_code, response.headers)
            return result
        result = classify_response(raw.status_code, raw.http_response.content, backend=route.label)
        return _with_evidence(result, route, raw.status_code, raw.headers)

    def _observe(self, backend: str, operation: str, result: DeleteResult, seconds: float) -> None:
        if self._observer is not None:
            self._observer.observe(
                backend=backend, operation=operation, outcome=outcome_label(result), seconds=seconds
            )


def _with_evidence(
    result: DeleteResult, route: Route, status: int, headers: Mapping[str, str]
) -> DeleteResult:
    """A ``Deleted`` carries what its receipt records: status, request id, route (SPEC §14)."""
    if not isinstance(result, Deleted):
        return result
    return dataclasses.replace(
        result,
        http_status=status,
        request_id=(headers.get("x-request-id") or "")[:REQUEST_ID_MAX_CHARS] or None,
        route=route.describe(),
    )
