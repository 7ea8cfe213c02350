"""SDK clients: one per route, cached, all on one shared connection pool.

Base URL, key and api-version are client-level in the SDK, so each route needs its own
client; building one on a shared pool costs ~0.5 ms (~38 ms with its own pool). Closing any
SDK client closes its http client, so cached clients are dropped, never closed: only the
gateway closes the pool, once.

The pool is the SDK's aiohttp transport (``DefaultAioHttpClient``, extra ``openai[aiohttp]``)
under the SDK's httpx2 client, so requests, responses, exceptions and the SDK's error classes
are the same as with its default httpx2 pool. It costs about 30 % less CPU per call: the
httpx2 pool probed the socket of every idle connection on each request and each release
(``bench.http_backends``, docs/PERFORMANCE.md "The HTTP path").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import aiohttp
import httpx2
from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAioHttpClient, omit

# The transport DefaultAioHttpClient builds, constructed here to give its aiohttp session the
# ``_no_resend`` middleware (the SDK exposes no other way to reach that session).
from openai._vendor.httpx_aiohttp import AiohttpTransport

from worker.models import RetryReason
from worker.providers.limits import Clock
from worker.providers.results import Transient
from worker.providers.routing import KeyUnavailable, Route, RouteId

Operation = Literal["delete_file", "delete_vector_store"]

# The SDK's telemetry headers (``X-Stainless-*``: its platform on the client; the retry count
# and read timeout per request) tell the API nothing a delete needs, and merging them into
# every request was a fifth of the SDK's request building (docs/PERFORMANCE.md). Omitting
# them is the SDK's own mechanism (``Omit``), client-wide and per request.
_TELEMETRY_PREFIX = "x-stainless-"
_NO_REQUEST_TELEMETRY = {"X-Stainless-Retry-Count": omit, "X-Stainless-Read-Timeout": omit}


class RawResponse(Protocol):
    """The SDK's raw response (``with_raw_response``): status, headers, the read response."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> httpx2.Headers: ...

    @property
    def http_response(self) -> httpx2.Response: ...


# Connect fails fast (a dead host should not eat the whole attempt); capped by the attempt.
CONNECT_TIMEOUT_SECONDS = 3.0

# The shared HTTP pool's type, named here so callers above the providers (the composition root,
# tests) pass one in without importing the HTTP library: httpx2 stays inside worker.providers.
HttpPool = httpx2.AsyncClient


# The SDK's own pool limits (openai's DEFAULT_CONNECTION_LIMITS): 1000 connections.
POOL_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


def new_shared_pool() -> httpx2.AsyncClient:
    """The one connection pool: the SDK's aiohttp transport, the SDK's limits, no redirects.

    A DELETE is never legitimately redirected; following one would send the key elsewhere
    and could turn a misrouted call into a 404 that reads as "deleted".
    """
    transport = AiohttpTransport(limits=POOL_LIMITS, client=lambda: _session(transport))
    return _AioHttpPool(follow_redirects=False, limits=POOL_LIMITS, transport=transport)


def _session(transport: AiohttpTransport) -> aiohttp.ClientSession:
    """What the SDK's transport would build (its TLS context and limits), plus ``_no_resend``;
    cookies stay the httpx2 client's business, as with its own pool (no second jar here)."""
    connector = aiohttp.TCPConnector(
        limit=POOL_LIMITS.max_connections or 0,
        keepalive_timeout=POOL_LIMITS.keepalive_expiry or 0,
        ssl=transport.ssl_context,
    )
    return aiohttp.ClientSession(
        connector=connector, middlewares=(_no_resend,), cookie_jar=aiohttp.DummyCookieJar()
    )


class _ConnectionDropped(aiohttp.ClientConnectionError):
    """The connection broke after the request was (possibly) sent: reset or closed."""


async def _no_resend(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp resends an idempotent request (DELETE) once when its connection drops; the
    worker owns retries (each attempt counted, rate-limited and classified), so it must see
    the drop instead. Connect errors are never resent by aiohttp and pass unchanged."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise _ConnectionDropped(str(exc) or type(exc).__name__) from exc


class _AioHttpPool(DefaultAioHttpClient):
    """The SDK's aiohttp client, with a broken connection reported as a connection error.

    The SDK's aiohttp transport raises ``httpx2.ConnectTimeout`` for every
    ``aiohttp.ClientConnectionError``: a reset, a server that closed the connection or a
    refused connect would read as a timeout (SPEC §6 keeps them apart). Real timeouts
    (``aiohttp.ServerTimeoutError``) stay timeouts.
    """

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        try:
            return await super().send(request, **kwargs)
        except httpx2.ConnectTimeout as exc:
            cause = exc.__cause__
            if not isinstance(cause, aiohttp.ClientConnectionError) or isinstance(
                cause, aiohttp.ServerTimeoutError
            ):
                raise
            refused = isinstance(cause, aiohttp.ClientConnectorError)
            error = httpx2.ConnectError if refused else httpx2.ReadError
            raise error(str(exc) or type(cause).__name__, request=request) from cause


def attempt_timeout(seconds: float) -> httpx2.Timeout:
    """Timeouts for one attempt: the whole budget for read/write/pool, connect shorter."""
    return httpx2.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT_SECONDS))


def build_client(route: Route, api_key: str, pool: httpx2.AsyncClient) -> AsyncOpenAI:
    """An SDK client for ``route`` on the shared pool, with SDK retries off (we own retries)."""
    client: AsyncOpenAI
    if route.flavor == "azure":
        client = AsyncAzureOpenAI(
            api_key=api_key,
            azure_endpoint=route.url,
            api_version=route.api_version,
            http_client=pool,
            max_retries=0,
            timeout=attempt_timeout(route.timeout_seconds),
        )
    else:
        client = AsyncOpenAI(
            api_key=api_key,
            base_url=route.url,
            http_client=pool,
            max_retries=0,
            timeout=attempt_timeout(route.timeout_seconds),
        )
    client = _without_telemetry(client)
    # The SDK fills these from OPENAI_ORG_ID / OPENAI_PROJECT_ID when None is passed; one
    # process-wide org must not leak onto every tenant's upstream. Routing is config only:
    # each backend / tenant override names its own (the OpenAI-Organization / -Project headers).
    client.organization = route.organization
    client.project = route.project
    return client


def _without_telemetry(client: AsyncOpenAI) -> AsyncOpenAI:
    """The client with the SDK's client-wide telemetry headers omitted (names read from the
    SDK, so a header a later version adds is omitted too)."""
    names = [name for name in client.default_headers if name.lower().startswith(_TELEMETRY_PREFIX)]
    # Typed Mapping[str, str], but the SDK merges client and request headers alike and drops
    # an Omit from either (``_merge_headers``); tests/providers/test_gateway_http.py pins it.
    omitted = cast(Mapping[str, str], dict.fromkeys(names, omit))
    return client.with_options(default_headers=omitted)


async def send_delete(
    client: AsyncOpenAI, operation: Operation, resource_id: str, timeout_seconds: float
) -> RawResponse:
    """One DELETE; raises the SDK's exceptions (``classify`` translates them).

    The raw response, because Azure GA versions answer a file DELETE with 204 No Content:
    parsed, that is an empty string (or a JSON error escaping as ``ValueError``), not a
    ``FileDeleted``; the status code is the only reliable "deleted".
    """
    timeout = attempt_timeout(timeout_seconds)
    if operation == "delete_file":
        file = await client.files.with_raw_response.delete(
            resource_id, timeout=timeout, extra_headers=_NO_REQUEST_TELEMETRY
        )
        return cast(RawResponse, file)
    # The SDK adds the required ``OpenAI-Beta: assistants=v2`` header itself (tested).
    store = await client.vector_stores.with_raw_response.delete(
        resource_id, timeout=timeout, extra_headers=_NO_REQUEST_TELEMETRY
    )
    return cast(RawResponse, store)


@dataclass
class _Cached:
    client: AsyncOpenAI
    built_at: float


class ClientCache:
    """One client per route, rebuilt after ``ttl_seconds`` or an auth failure.

    Rebuilding re-reads the key from its env var / file, so a rotated Kubernetes secret is
    used within ``ttl_seconds`` (or at once when the old key starts failing with 401/403).
    """

    def __init__(
        self, pool: httpx2.AsyncClient, environ: Mapping[str, str], clock: Clock, ttl_seconds: float
    ) -> None:
        self._pool = pool
        self._environ = environ
        self._clock = clock
        self._ttl_seconds = ttl_seconds
        self._clients: dict[RouteId, _Cached] = {}

    def get(self, route: Route) -> AsyncOpenAI | Transient:
        """The route's client, or ``Transient(config)`` when its key cannot be read."""
        now = self._clock()
        cached = self._clients.get(route.route_id)
        if cached is not None and now - cached.built_at < self._ttl_seconds:
            return cached.client
        try:
            api_key = route.key.read(self._environ)
        except KeyUnavailable as exc:
            self._clients.pop(route.route_id, None)
            return Transient(RetryReason.CONFIG, f"{route.label}: {exc}")
        client = build_client(route, api_key, self._pool)
        self._clients[route.route_id] = _Cached(client, now)
        return client

    def evict(self, route: Route) -> None:
        """Forget the route's client (not closed: that would close the shared pool)."""
        self._clients.pop(route.route_id, None)

    def __len__(self) -> int:
        return len(self._clients)

    def clear(self) -> None:
        self._clients.clear()
