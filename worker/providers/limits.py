"""Per-route concurrency and rate limits, Retry-After pauses and a circuit breaker.

Each route (a backend's shared route, or one tenant's override) has its own limiter and
breaker, so one slow, rate-limited or broken upstream only queues or fails its own calls;
the shared connection pool's limits are global and cannot give that isolation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum

from worker.models import RetryReason
from worker.providers.results import seconds_text

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Kinds that mean "this upstream is not answering sanely"; 429/409/not_deleted mean it is alive.
BREAKER_FAILURES = frozenset(
    {RetryReason.SERVER_ERROR, RetryReason.TIMEOUT, RetryReason.CONNECTION, RetryReason.AUTH}
)


class RouteBusy(Exception):
    """No slot, token or pause end within the caller's wait budget; nothing was sent."""

    def __init__(self, detail: str, retry_after_seconds: float | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_seconds = retry_after_seconds


class TokenBucket:
    """Request-rate limit: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._updated = clock()

    def reserve(self) -> float:
        """Take a token now (possibly borrowed); return the seconds to wait before using it."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._tokens -= 1.0
        # Borrowing (negative tokens) queues callers fairly in arrival order without a lock.
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def refund(self) -> None:
        """Give back a reserved token that was not used."""
        self._tokens = min(self._burst, self._tokens + 1.0)

    def set_rate(self, rate: float) -> None:
        """Change the rate (and the burst with it) from now on; tokens saved so far stay."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._rate = rate
        self._burst = max(1.0, rate)
        self._tokens = min(self._tokens, self._burst)


class AdaptiveRate:
    """The rate actually used: ``max_rps`` until the upstream answers 429, then AIMD.

    A static per-replica ``max_rps`` is right for only one replica count; under autoscaling
    several replicas share one upstream limit. On a 429 the rate drops to ``DECREASE`` of
    itself (at most once per ``DECREASE_INTERVAL``, since one overload answers many calls in
    flight at once), never below ``FLOOR`` of ``max_rps``; every success then raises it by
    ``RECOVERY_PER_SECOND`` of ``max_rps`` per second elapsed, back up to ``max_rps``.
    """

    DECREASE = 0.7
    DECREASE_INTERVAL_SECONDS = 0.5
    FLOOR = 0.05
    RECOVERY_PER_SECOND = 0.1

    def __init__(self, max_rps: float, bucket: TokenBucket, clock: Clock) -> None:
        self.max_rps = max_rps
        self.rate = max_rps
        self._bucket = bucket
        self._clock = clock
        self._changed_at = clock()
        self._decreased_at = float("-inf")

    def rate_limited(self) -> None:
        now = self._clock()
        if now - self._decreased_at < self.DECREASE_INTERVAL_SECONDS:
            return
        self._set(max(self.FLOOR * self.max_rps, self.rate * self.DECREASE), now)
        self._decreased_at = now

    def succeeded(self) -> None:
        if self.rate >= self.max_rps:
            return
        now = self._clock()
        step = self.RECOVERY_PER_SECOND * self.max_rps * (now - self._changed_at)
        self._set(min(self.max_rps, self.rate + step), now)

    def _set(self, rate: float, now: float) -> None:
        self.rate = rate
        self._changed_at = now
        self._bucket.set_rate(rate)


class RouteLimiter:
    """Concurrency slots + token bucket + a "paused until" set from the provider's Retry-After."""

    def __init__(self, max_concurrency: int, max_rps: float, clock: Clock, sleep: Sleep) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._bucket = TokenBucket(max_rps, max(1.0, max_rps), clock)
        self.rate = AdaptiveRate(max_rps, self._bucket, clock)
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep

    def pause_remaining(self) -> float:
        """Seconds until new calls may go out (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause_for(self, seconds: float) -> None:
        """Stop sending for ``seconds`` (a 429's Retry-After); never shortens a longer pause."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self, max_wait_seconds: float) -> AsyncIterator[None]:
        """Hold one slot and one token, waiting at most ``max_wait_seconds``, else ``RouteBusy``."""
        started = self._clock()
        try:
            async with asyncio.timeout(max(0.0, max_wait_seconds)):
                await self._slots.acquire()
        except TimeoutError:
            raise RouteBusy(
                f"all {self._max_concurrency} slots busy for {seconds_text(max_wait_seconds)}", None
            ) from None
        try:
            await self._wait_for_pause_and_token(max_wait_seconds - (self._clock() - started))
            yield
        finally:
            self._slots.release()

    async def _wait_for_pause_and_token(self, budget: float) -> None:
        pause = self.pause_remaining()
        if pause > budget:
            raise RouteBusy(f"paused by Retry-After for {seconds_text(pause)} more", pause)
        if pause > 0:
            await self._sleep(pause)
            budget -= pause
        delay = self._bucket.reserve()
        if delay > budget:
            self._bucket.refund()
            raise RouteBusy(f"request rate limit: next token in {seconds_text(delay)}", delay)
        if delay > 0:
            await self._sleep(delay)


class Admission(Enum):
    """How the breaker let a call through: normally, or as the half-open probe."""

    CLOSED = "closed"
    PROBE = "probe"


@dataclass(frozen=True)
class BreakerPolicy:
    """Consecutive breaker failures that open it, and how long it stays open."""

    failure_threshold: int = 5
    cooldown_seconds: float = 30.0


class CircuitBreaker:
    """Fails fast after repeated failures so a broken upstream does not eat every lease.

    closed --N consecutive failures--> open --cooldown--> half-open (one probe call)
    probe succeeds -> closed; probe fails -> open for another cooldown.
    """

    def __init__(self, policy: BreakerPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.last_failure: RetryReason | None = None

    @property
    def is_open(self) -> bool:
        return self._failures >= self._policy.failure_threshold

    def admit(self) -> Admission | float:
        """An ``Admission`` to go ahead, or the seconds after which to try again."""
        if not self.is_open:
            return Admission.CLOSED
        remaining = self._opened_at + self._policy.cooldown_seconds - self._clock()
        if remaining > 0:
            return remaining
        if self._probing:
            return self._policy.cooldown_seconds
        self._probing = True
        return Admission.PROBE

    def record(self, admission: Admission, failure: RetryReason | None) -> None:
        """The call's final outcome: a ``BREAKER_FAILURES`` reason, or None when it went fine."""
        if admission is Admission.PROBE:
            self._probing = False
        if failure is None or failure not in BREAKER_FAILURES:
            self._failures = 0
            return
        self.last_failure = failure
        if admission is Admission.PROBE:
            self._opened_at = self._clock()  # still broken: another full cooldown
            return
        self._failures += 1
        if self._failures == self._policy.failure_threshold:
            self._opened_at = self._clock()

    def abandon(self, admission: Admission) -> None:
        """The call was cancelled: free the probe slot without judging the upstream."""
        if admission is Admission.PROBE:
            self._probing = False
