"""What the ack writes for each handler outcome (``settle``), and the columns it writes it as.

No database: the statement's behaviour is covered by the retry and dead-letter tests; these
pin the decision itself (outbox/delivery.py).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from worker.models import Message, Ok, Outcome, Reject, Retry, RetryReason
from worker.outbox.delivery import (
    Envelope,
    Handled,
    RedeliveryPolicy,
    Settled,
    outcome_params,
    settle,
)

POLICY = RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=3, jitter=0.0)


def _settled(outcome: Outcome, *, delivery: int = 1) -> Settled:
    message = Message("q", 0, 7, b"{}", "t", datetime(2026, 1, 1, tzinfo=UTC), delivery)
    return settle(
        Handled(Envelope(message, partition_id=1), outcome, 0.0), POLICY, random.Random(1)
    )


@pytest.mark.parametrize("outcome", [Ok(), Reject("bad payload")])
def test_ok_and_reject_are_written_as_returned(outcome: Outcome) -> None:
    assert _settled(outcome).verdict == outcome


def test_a_retry_is_parked_for_the_backoff_or_its_hint_whichever_is_longer() -> None:
    assert _settled(Retry(RetryReason.TIMEOUT, "t"), delivery=2).verdict == Retry(
        RetryReason.TIMEOUT, "t", 2.0
    )
    assert _settled(Retry(RetryReason.RATE_LIMITED, "429", 30.0)).verdict == Retry(
        RetryReason.RATE_LIMITED, "429", 30.0
    )


def test_a_retry_past_max_deliveries_becomes_a_dead_letter_with_its_last_error() -> None:
    settled = _settled(Retry(RetryReason.SERVER_ERROR, "HTTP 503"), delivery=3)
    assert settled.verdict == Reject(
        "max deliveries (3) reached; last error: server_error: HTTP 503"
    )
    assert settled.handled.outcome == Retry(RetryReason.SERVER_ERROR, "HTTP 503")


def test_a_deferred_retry_waits_exactly_its_turn_and_never_runs_out_of_deliveries() -> None:
    deferred = Retry(RetryReason.DEFERRED, "fair turn", 0.25)
    assert _settled(deferred, delivery=9).verdict == deferred
    assert _settled(Retry(RetryReason.DEFERRED, "turn")).verdict.retry_after_seconds == 0.0


def test_an_interrupted_message_is_due_again_at_once() -> None:
    interrupted = Retry(RetryReason.INTERRUPTED, "worker shutting down")
    assert _settled(interrupted, delivery=2).verdict == Retry(
        RetryReason.INTERRUPTED, "worker shutting down", 0.0
    )


def test_each_verdict_becomes_the_columns_record_outcomes_reads() -> None:
    rows = [
        _settled(Ok()),
        _settled(Retry(RetryReason.TIMEOUT, "timeout after 10s", 5.0)),
        _settled(Retry(RetryReason.CONFLICT)),
        _settled(Reject("bad payload")),
    ]
    params = outcome_params(rows)
    assert params["kinds"] == ["ok", "retry", "retry", "reject"]
    assert params["reasons"][1:3] == ["timeout", "conflict"]
    assert params["errors"] == ["", "timeout: timeout after 10s", "conflict", "bad payload"]
    assert params["delays"] == [0.0, 5.0, 1.0, 0.0]
