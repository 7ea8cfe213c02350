"""Paging through a route's provider files and vector stores (``cleanup-worker reconcile``).

Each page is one SDK call (``files.list`` / ``vector_stores.list``, cursor ``after``, oldest
first) made inside the route's own limiter (``RouteLimiter``: the concurrency slots, the request
rate and the Retry-After pause that cleanup's deletes use in this process). A page that fails is
retried a few times (429, 5xx, timeouts); a listing that still fails raises ``ListingFailed``
with a secret-free detail built by ``classify`` (never an SDK message).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from worker.models import RetryReason
from worker.providers.classify import Target, classify_exception
from worker.providers.clients import attempt_timeout
from worker.providers.limits import RouteBusy, RouteLimiter
from worker.providers.results import Permanent, ResourceKind, Transient
from worker.providers.routing import Route

# The API's largest pages: fewer round trips against the rate limit.
MAX_PAGE_SIZE: dict[ResourceKind, int] = {"file": 10_000, "vector_store": 100}
PAGE_ATTEMPTS = 4
_RETRYABLE = frozenset({
    RetryReason.RATE_LIMITED, RetryReason.SERVER_ERROR, RetryReason.TIMEOUT,
    RetryReason.CONNECTION,
})  # fmt: skip
MAX_PAGE_WAIT_SECONDS = 30.0


class ListingFailed(Exception):
    """A route's listing could not be read; the message is safe to print (no key, no body)."""


@dataclass(frozen=True, slots=True)
class ListedObject:
    id: str
    created_at: int  # epoch seconds, as the API reports it


async def list_objects(
    client: openai.AsyncOpenAI,
    limiter: RouteLimiter,
    route: Route,
    kind: ResourceKind,
    *,
    page_size: int | None = None,
) -> AsyncIterator[list[ListedObject]]:
    """Yield the route's objects of ``kind`` a page at a time, oldest first, until the end."""
    limit = min(page_size or MAX_PAGE_SIZE[kind], MAX_PAGE_SIZE[kind])
    after: str | None = None
    while True:
        objects, has_more = await _page_with_retries(client, limiter, route, kind, limit, after)
        if objects:
            yield objects
        if not has_more or not objects:
            return
        after = objects[-1].id


async def _page_with_retries(
    client: openai.AsyncOpenAI,
    limiter: RouteLimiter,
    route: Route,
    kind: ResourceKind,
    limit: int,
    after: str | None,
) -> tuple[list[ListedObject], bool]:
    wait = 0.5
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        result = await _page(client, limiter, route, kind, limit, after)
        if not isinstance(result, Transient | Permanent):
            return result
        after_hint = result.retry_after_seconds if isinstance(result, Transient) else None
        if not _worth_another_try(result, after_hint) or attempt == PAGE_ATTEMPTS:
            noun = "file" if kind == "file" else "vector-store"
            raise ListingFailed(f"{noun} listing of {route.describe()} failed: {result.detail}")
        await asyncio.sleep(max(wait, after_hint or 0.0))
        wait *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")


def _worth_another_try(result: Transient | Permanent, after_hint: float | None) -> bool:
    """A passing failure, and not one that asks for a longer pause than a page may wait: a
    route paused for an hour fails now (reported), instead of holding every other route up."""
    if not isinstance(result, Transient) or result.reason not in _RETRYABLE:
        return False
    return after_hint is None or after_hint <= MAX_PAGE_WAIT_SECONDS


async def _page(
    client: openai.AsyncOpenAI,
    limiter: RouteLimiter,
    route: Route,
    kind: ResourceKind,
    limit: int,
    after: str | None,
) -> tuple[list[ListedObject], bool] | Transient | Permanent:
    """One page inside the route's limiter, or why not (classified like a delete's failure)."""
    params: dict[str, Any] = {"limit": limit, "order": "asc"}
    if after is not None:
        params["after"] = after
    try:
        async with limiter.slot(max_wait_seconds=MAX_PAGE_WAIT_SECONDS):
            timeout = attempt_timeout(route.timeout_seconds)
            if kind == "file":
                page: Any = await client.files.list(**params, timeout=timeout)
            else:
                page = await client.vector_stores.list(**params, timeout=timeout)
    except RouteBusy as busy:
        return Transient(
            RetryReason.RATE_LIMITED, busy.detail, busy.retry_after_seconds, sent=False
        )
    except (openai.OpenAIError, httpx2.HTTPError) as exc:
        result = classify_exception(
            exc,
            backend=route.describe(),
            timeout_seconds=route.timeout_seconds,
            wall_now=time.time(),
            target=Target(route.flavor, kind, ""),
        )
        if isinstance(result, Transient) and result.reason is RetryReason.RATE_LIMITED:
            limiter.rate.rate_limited()
            if result.retry_after_seconds:
                limiter.pause_for(result.retry_after_seconds)
        return result if isinstance(result, Transient | Permanent) else _unexpected(route)
    limiter.rate.succeeded()
    objects = [ListedObject(str(o.id), int(o.created_at or 0)) for o in page.data]
    return objects, bool(page.has_more)


def _unexpected(route: Route) -> Transient:
    """A listing error can never be "deleted"; should classify ever say so, it is a failure."""
    return Transient(RetryReason.CONFIG, f"unexpected listing answer from {route.describe()}")
