"""In-call retries (tenacity) over ``DeleteResult`` values, bounded by a per-call deadline."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_result

from worker.models import RetryReason
from worker.providers.limits import Clock, Sleep
from worker.providers.results import DeleteResult, Transient

# Reasons a quick second try may fix. auth / config / circuit_open will not change in a second.
IN_CALL_RETRY_REASONS = frozenset({
    RetryReason.SERVER_ERROR, RetryReason.TIMEOUT, RetryReason.CONNECTION,
    RetryReason.RATE_LIMITED, RetryReason.CONFLICT, RetryReason.NOT_DELETED,
})  # fmt: skip


@dataclass(frozen=True)
class CallRetryPolicy:
    """Bounds of the in-call retries of one delete call (seconds, inside one lease).

    Not the engine's ``RedeliveryPolicy``, which parks the message and delivers it again later.
    """

    max_attempts: int = 3
    # The whole call, queueing included, ends within budget_factor x the route's timeout.
    budget_factor: float = 2.0
    first_wait_seconds: float = 0.25
    # Never sleep longer inside a call; a longer Retry-After goes back to the engine.
    max_wait_seconds: float = 2.0
    # Do not start an attempt with less than this share of a full timeout left.
    min_attempt_fraction: float = 0.25

    def budget_seconds(self, timeout_seconds: float) -> float:
        return self.budget_factor * timeout_seconds

    def worth_retrying_now(self, result: DeleteResult) -> bool:
        """Transient, of a kind a retry can fix, and not asking us to wait too long."""
        if not isinstance(result, Transient) or result.reason not in IN_CALL_RETRY_REASONS:
            return False
        after = result.retry_after_seconds
        return after is None or after <= self.max_wait_seconds


Attempt = Callable[[], Awaitable[DeleteResult]]


async def run_with_retries(
    attempt: Attempt,
    *,
    policy: CallRetryPolicy,
    deadline: float,
    timeout_seconds: float,
    clock: Clock,
    sleep: Sleep,
) -> DeleteResult:
    """Run ``attempt`` until it settles, attempts run out or the deadline is near."""

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        left_after_wait = deadline - clock() - state.upcoming_sleep
        return left_after_wait < policy.min_attempt_fraction * timeout_seconds

    def wait(state: RetryCallState) -> float:
        backoff = policy.first_wait_seconds * 2.0 ** (state.attempt_number - 1)
        backoff = min(policy.max_wait_seconds, backoff) * random.uniform(0.5, 1.0)
        last = state.outcome.result() if state.outcome is not None else None
        if isinstance(last, Transient) and last.retry_after_seconds is not None:
            return max(backoff, last.retry_after_seconds)
        return backoff

    def give_back_last(state: RetryCallState) -> DeleteResult:
        assert state.outcome is not None
        result: DeleteResult = state.outcome.result()
        return result

    # The first attempt runs without tenacity: building and driving AsyncRetrying cost about
    # as much CPU as the SDK's own request building, for the ~all calls that settle at once.
    first = await attempt()
    if not policy.worth_retrying_now(first):
        return first
    replay: list[DeleteResult] = [first]

    async def attempt_after_first() -> DeleteResult:
        # Tenacity's attempt 1 is the one already made: same numbering, waits and stop rule.
        return replay.pop() if replay else await attempt()

    # Tenacity in-call retries are short (a few seconds, inside one lease) and only smooth
    # over blips; the engine's retry schedule (SPEC §4.5, parked rows) owns every longer wait.
    retrying = AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_result(lambda result: policy.worth_retrying_now(result)),
        retry_error_callback=give_back_last,
        sleep=sleep,
        reraise=True,
    )
    result: DeleteResult = await retrying(attempt_after_first)
    return result
