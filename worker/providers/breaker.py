"""The per-route circuit breaker: a broken upstream fails its own calls fast.

Each route (a backend's shared route, or one tenant's override) has its own breaker beside its
limiter (``limits.py``), so one broken upstream never fails another route's calls.
"""

from __future__ import annotations

from enum import Enum

from worker.config import CircuitBreakerConfig
from worker.models import RetryReason
from worker.providers.limits import Clock

# Kinds that mean "this upstream is not answering sanely"; 429/409/not_deleted mean it is alive.
BREAKER_FAILURES = frozenset(
    {RetryReason.SERVER_ERROR, RetryReason.TIMEOUT, RetryReason.CONNECTION, RetryReason.AUTH}
)


class Admission(Enum):
    """How the breaker let a call through: normally, or as the half-open probe."""

    CLOSED = "closed"
    PROBE = "probe"


class CircuitBreaker:
    """Fails fast after repeated failures so a broken upstream does not eat every lease.

    closed --N consecutive failures--> open --cooldown--> half-open (one probe call)
    probe succeeds -> closed; probe fails -> open for another cooldown.
    """

    def __init__(self, policy: CircuitBreakerConfig, clock: Clock) -> None:
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
