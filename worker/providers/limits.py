"""Per-route concurrency and rate limits, and Retry-After pauses (the breaker: ``breaker.py``).

Each route (a backend's shared route, or one tenant's override) has its own limiter and
breaker, so one slow, rate-limited or broken upstream only queues or fails its own calls;
the shared connection pool's limits are global and cannot give that isolation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager

from worker.providers.results import seconds_text

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


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


class RouteDeferred(Exception):
    """The tenant already has its share of this route's queue; nothing was sent.

    ``retry_after_seconds`` is the tenant's next turn in its fair schedule: the message is
    parked until then (without spending a delivery) instead of holding a handler slot and its
    partition's cursor while it waits here.
    """

    def __init__(self, detail: str, retry_after_seconds: float) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_seconds = retry_after_seconds


Tenant = Hashable  # whose budget a call spends (a tenant id; None for "nobody in particular")

# A tenant may have this many seconds of the route's rate waiting in the queue (at least one
# call); a call beyond it is deferred. A batch of a partition waits for its admitted messages,
# so this bounds how long each batch of a busy tenant holds its partition's cursor: at 20
# requests/s and 1,500 queued, 0.5 s let another tenant's 10 deletions in the same partition
# finish in 12 s, 0.25 s in 6-7 s, 0.1 s in 3.5 s (bench FAIR), the busy tenant keeping 0.94
# of the budget each time (the token bucket's burst covers the gaps between retrier rounds).
FAIR_QUEUE_SECONDS = 0.1
HOLD_SMOOTHING = 0.1  # weight of the newest call in the moving average of slot hold times


class RouteLimiter:
    """Concurrency slots + token bucket + a Retry-After pause, shared fairly across tenants.

    Fairness (SPEC §15), two mechanisms:

    1. **Fair queuing.** A call that cannot go at once waits in its tenant's FIFO; one
       dispatcher grants turns (a slot and a token each) to the waiting tenants in round-robin
       order. Every request costs one token, so this is deficit round robin with equal
       quanta: while n tenants wait, each gets 1/n of the route's budget, a tenant alone gets
       all of it, and a tenant that starts waiting gets a turn within n grants (no starvation).
    2. **Bounded queues.** A tenant may have at most ``ceil(rate x fair_queue_seconds)`` calls
       waiting (at least one), ``rate`` being what the route serves: its token rate, or fewer
       when its slots are the limit (``max_concurrency`` / the calls' average duration). A
       call beyond that raises ``RouteDeferred`` with the tenant's next turn in a virtual
       schedule (its share of that rate at ``max_rps``, after what it already has queued or
       deferred): the engine parks the message until then, spending none of its deliveries.
       Parked messages come back at the tenant's share of the budget, so the budget keeps
       being used while the queues stay short. So a backlog of one tenant never holds all
       handler slots, and the cursor of the partition it shares with other tenants moves past
       it in seconds, parking it, instead of at the route's rate.

    Invariant: every call either is granted exactly one slot and one token (released / spent
    when its context exits), or raises ``RouteBusy`` / ``RouteDeferred`` having taken neither.
    ``fair_queue_seconds = 0`` turns the bound off (calls wait up to their budget, as before).
    """

    def __init__(
        self,
        max_concurrency: int,
        max_rps: float,
        clock: Clock,
        sleep: Sleep,
        *,
        fair_queue_seconds: float = FAIR_QUEUE_SECONDS,
    ) -> None:
        self._max_concurrency = max_concurrency
        self._in_flight = 0
        self._bucket = TokenBucket(max_rps, max(1.0, max_rps), clock)
        self.rate = AdaptiveRate(max_rps, self._bucket, clock)
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self._fair_queue_seconds = fair_queue_seconds
        self._hold_seconds: float | None = None  # how long calls hold a slot (moving average)
        # Tenants with waiting calls, in turn order (the first one is served next).
        self._queues: OrderedDict[Tenant, deque[asyncio.Future[None]]] = OrderedDict()
        self._next_turn: dict[Tenant, float] = {}  # end of each tenant's deferral schedule
        self._slot_freed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None

    def pause_remaining(self) -> float:
        """Seconds until new calls may go out (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause_for(self, seconds: float) -> None:
        """Stop sending for ``seconds`` (a 429's Retry-After); never shortens a longer pause."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def waiting(self, tenant: Tenant) -> int:
        """Calls of ``tenant`` waiting for their turn (diagnostics and tests)."""
        return sum(1 for w in self._queues.get(tenant, ()) if not w.done())

    @asynccontextmanager
    async def slot(self, max_wait_seconds: float, tenant: Tenant = None) -> AsyncIterator[None]:
        """Hold one slot and one token, waiting at most ``max_wait_seconds``.

        Raises ``RouteBusy`` (no turn within the wait) or ``RouteDeferred`` (``tenant`` already
        has its share of the queue); neither takes a slot or a token.
        """
        pause = self.pause_remaining()
        if pause > max_wait_seconds:
            raise RouteBusy(f"paused by Retry-After for {seconds_text(pause)} more", pause)
        if not self._take_turn_now():
            await self._wait_for_turn(tenant, max_wait_seconds)
        granted_at = self._clock()
        try:
            yield
        finally:
            self._release()
            self._observe_hold(self._clock() - granted_at)

    def _observe_hold(self, seconds: float) -> None:
        """Track how long a call holds its slot (an exponential moving average)."""
        if self._hold_seconds is None:
            self._hold_seconds = seconds
        else:
            self._hold_seconds += HOLD_SMOOTHING * (seconds - self._hold_seconds)

    def _throughput(self, rate: float) -> float:
        """Calls per second the route serves at ``rate``: fewer when its slots are the limit
        (``max_concurrency`` calls of the observed duration at a time)."""
        if not self._hold_seconds:
            return rate
        return min(rate, self._max_concurrency / self._hold_seconds)

    def _take_turn_now(self) -> bool:
        """Take a slot and a token at once when nobody waits and both are free."""
        if self._queues or self._in_flight >= self._max_concurrency or self.pause_remaining():
            return False
        if self._bucket.reserve() > 0:
            self._bucket.refund()
            return False
        self._in_flight += 1
        return True

    async def _wait_for_turn(self, tenant: Tenant, max_wait_seconds: float) -> None:
        self._defer_if_over_share(tenant)
        if (expected := self._expected_wait(tenant)) > max_wait_seconds:
            # Waiting would only hold a handler slot until the budget runs out.
            raise RouteBusy(f"request rate limit: turn in {seconds_text(expected)}", expected)
        turn = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append(turn)
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="route-dispatcher")
        try:
            async with asyncio.timeout(max(0.0, max_wait_seconds)):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                # Granted just as the caller left (timed out or cancelled): give it all back.
                self._bucket.refund()
                self._release()
            else:
                self._forget(tenant, turn)
            if isinstance(exc, TimeoutError):
                raise RouteBusy(
                    self._busy_detail(max_wait_seconds), self._expected_wait(tenant)
                ) from None
            raise

    def _release(self) -> None:
        self._in_flight -= 1
        self._slot_freed.set()

    def _defer_if_over_share(self, tenant: Tenant) -> None:
        if self._fair_queue_seconds <= 0:
            return
        allowed = max(1, math.ceil(self._throughput(self.rate.rate) * self._fair_queue_seconds))
        queued = self.waiting(tenant)
        if queued < allowed:
            return
        now = self._clock()
        # Its rate while the others keep waiting, at the route's full rate (max_rps, or what
        # its slots allow): a schedule made while a 429 had lowered the rate would bring the
        # parked messages back slower than the budget once it recovered, and tokens would go
        # unused. Too early only costs parking again.
        share = self._throughput(self.rate.max_rps) / max(1, len(self._queues))
        turn = max(self._next_turn.get(tenant, now), now + queued / share) + 1.0 / share
        self._next_turn[tenant] = turn
        self._forget_past_turns(now)
        raise RouteDeferred(
            f"tenant has its share queued ({queued}); next turn in {seconds_text(turn - now)}",
            turn - now,
        )

    def _forget_past_turns(self, now: float) -> None:
        if len(self._next_turn) > 256:  # bounded memory with many tenants
            self._next_turn = {t: at for t, at in self._next_turn.items() if at > now}

    def _forget(self, tenant: Tenant, turn: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(turn)
        if not queue:
            del self._queues[tenant]

    async def _dispatch(self) -> None:
        """Grant turns while calls wait: a free slot, then a token, then the next tenant's call."""
        try:
            while self._queues:
                if self._in_flight >= self._max_concurrency:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                if pause := self.pause_remaining():
                    await self._sleep(pause)
                    continue
                delay = self._bucket.reserve()
                if delay > 0:
                    await self._sleep(delay)
                    if self.pause_remaining():  # a 429 came meanwhile: wait for its pause
                        self._bucket.refund()
                        continue
                turn = self._next_waiting_call()
                if turn is None:
                    self._bucket.refund()
                    return
                self._in_flight += 1
                turn.set_result(None)
        finally:
            self._dispatcher = None

    def _next_waiting_call(self) -> asyncio.Future[None] | None:
        """The first waiting call of the tenant whose turn it is; that tenant goes last."""
        while self._queues:
            tenant, queue = next(iter(self._queues.items()))
            while queue and queue[0].done():
                queue.popleft()
            if not queue:
                del self._queues[tenant]
                continue
            turn = queue.popleft()
            if queue:
                self._queues.move_to_end(tenant)
            else:
                del self._queues[tenant]
            return turn
        return None

    def _busy_detail(self, waited: float) -> str:
        if self._in_flight >= self._max_concurrency:
            return f"all {self._max_concurrency} slots busy for {seconds_text(waited)}"
        return f"request rate limit: no turn within {seconds_text(waited)}"

    def _expected_wait(self, tenant: Tenant) -> float:
        """Roughly when a call of ``tenant`` queued now would get its turn.

        In round-robin order it waits for its tenant's queued calls and, of every other
        tenant, for as many as that (plus one): its turn is that many tokens away.
        """
        mine = self.waiting(tenant)
        ahead = mine + sum(
            min(len(queue), mine + 1) for other, queue in self._queues.items() if other != tenant
        )
        return max(self.pause_remaining(), (ahead + 1) / max(self.rate.rate, 1e-9))
