"""Each handler x each provider answer, injected at the fake, through the real engine.

For every case: the attachment row (status, attempts, error), the message outcome and what the
engine persisted (retry row with reason and not_before, dead letter), the metrics, and how many
requests reached the fake (the provider layer retries some answers in-call).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import pytest

from cwlab.fake_openai import Fault
from handlers.support import (
    AQ,
    CQ,
    RETRY_BASE_SECONDS,
    Stack,
    assert_secret_free,
    only,
    reject_of,
    retry_of,
)
from worker.models import Ok

End = Literal["done", "retry", "failed"]


@dataclass(frozen=True)
class Case:
    id: str
    fault: Fault | None
    end: End
    outcome: str  # provider_requests_total{outcome}
    requests: int  # requests the fake sees for the one delete call
    error: str = ""  # expected in last_cleanup_error
    at_provider: bool = True
    retry_after: float | None = None


CASES = [
    Case("2xx-deleted", None, "done", "deleted", 1),
    Case("404", None, "done", "not_found", 1, at_provider=False),
    Case("deleted-false", Fault(deleted_false=True), "retry", "not_deleted", 3, "deleted: true"),
    Case(
        "429-retry-after",
        Fault(status=429, headers={"retry-after": "30"}),
        "retry",
        "rate_limited",
        1,
        "HTTP 429",
        retry_after=30.0,
    ),
    Case("503", Fault(status=503), "retry", "server_error", 3, "HTTP 503"),
    Case("timeout", Fault(delay_seconds=1.2), "retry", "timeout", 2, "timeout after"),
    Case("reset", Fault(reset=True), "retry", "connection", 3, "connection error"),
    Case("401", Fault(status=401), "retry", "auth", 1, "HTTP 401"),
    Case("403", Fault(status=403), "retry", "auth", 1, "HTTP 403"),
    Case("400", Fault(status=400), "failed", "permanent", 1, "HTTP 400"),
]


async def _fake_saw(stack: Stack, file_id: str, count: int) -> None:
    """A delayed (timed-out) request is logged by the fake only when its delay ends."""
    for _ in range(60):
        if len(stack.requests_for(file_id)) >= count:
            break
        await asyncio.sleep(0.05)
    assert len(stack.requests_for(file_id)) == count


async def _check_common(stack: Stack, case: Case, file_id: str, row: dict[str, object]) -> None:
    await _fake_saw(stack, file_id, case.requests)
    assert stack.provider_requests(case.outcome) == case.requests
    assert stack.metric_sum("provider_requests_total") == case.requests
    assert stack.metric("cleanup_latency_seconds_count", op="delete_file") == 1  # one call
    if case.end == "done":
        assert row["cleanup_status"] == "done"
        assert row["cleanup_attempts"] == 0
        assert row["last_cleanup_error"] is None
        assert file_id not in stack.fake.files
        assert stack.metric("cleanup_completed_total", resource_type="file") == 1
        assert stack.metric_sum("cleanup_retry_total") == 0
        assert stack.metric_sum("cleanup_failed_total") == 0
        return
    assert row["cleanup_attempts"] == 1
    assert isinstance(row["last_cleanup_error"], str)
    assert case.error in row["last_cleanup_error"]
    assert_secret_free(row["last_cleanup_error"])
    assert stack.metric("cleanup_completed_total", resource_type="file") == 0
    if case.end == "retry":
        assert row["cleanup_status"] == "pending"
        assert stack.metric_sum("cleanup_retry_total") == 1
        assert stack.metric("cleanup_retry_total", resource_type="file", reason=case.outcome) == 1
        assert stack.metric_sum("cleanup_failed_total") == 0
    else:
        assert row["cleanup_status"] == "failed"
        assert stack.metric("cleanup_failed_total", resource_type="file") == 1
        assert stack.metric_sum("cleanup_retry_total") == 0


def _check_retry_row(rows: list[dict[str, object]], queue: str, case: Case) -> None:
    assert len(rows) == 1
    (row,) = rows
    assert row["queue"] == queue
    assert row["reason"] == case.outcome
    assert row["deliveries"] == 1
    assert isinstance(row["last_error"], str)
    assert_secret_free(row["last_error"])
    delay, due_in = row["delay"], row["due_in"]
    assert isinstance(delay, float)
    assert isinstance(due_in, float)
    assert due_in <= delay
    if case.retry_after is not None:  # Retry-After wins over the (shorter) backoff
        assert delay == pytest.approx(case.retry_after)
    else:  # the engine's backoff: base with +-20 % jitter
        assert RETRY_BASE_SECONDS * 0.8 <= delay <= RETRY_BASE_SECONDS * 1.2


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_attachment_path(stack: Stack, case: Case) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, at_provider=case.at_provider)
    assert att.provider_file_id is not None
    if case.fault is not None:
        stack.fake.inject(case.fault)
    assert await stack.delete_attachment(att)

    outcome = only(await stack.deliver(AQ))

    row = await stack.att(att)
    await _check_common(stack, case, att.provider_file_id, row)
    assert stack.metric("cleanup_latency_seconds_count", op="attachment_cleanup") == 1
    retries, dead = await stack.retry_rows(), await stack.dead_letters()
    if case.end == "done":
        assert outcome == Ok()
        assert (retries, dead) == ([], [])
    elif case.end == "retry":
        retry = retry_of(outcome)
        assert retry.reason.value == case.outcome
        assert retry.retry_after_seconds == case.retry_after
        _check_retry_row(retries, AQ, case)
        assert dead == []
    else:
        assert "provider refused the delete" in reject_of(outcome).reason
        assert retries == []
        assert len(dead) == 1
        assert dead[0]["queue"] == AQ
        assert "HTTP 400" in dead[0]["last_error"]
        assert_secret_free(dead[0]["last_error"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_chat_path(stack: Stack, case: Case) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, at_provider=case.at_provider)
    assert att.provider_file_id is not None
    if case.fault is not None:
        stack.fake.inject(case.fault)
    await stack.delete_chat(chat)

    outcome = only(await stack.deliver(CQ))

    row = await stack.att(att)
    await _check_common(stack, case, att.provider_file_id, row)
    assert stack.metric("cleanup_latency_seconds_count", op="chat_cleanup") == 1
    retries, dead = await stack.retry_rows(), await stack.dead_letters()
    assert dead == []  # a terminal attachment failure never dead-letters the chat message
    if case.end == "retry":
        retry = retry_of(outcome)
        assert retry.reason.value == case.outcome
        assert retry.retry_after_seconds == case.retry_after
        _check_retry_row(retries, CQ, case)
    else:  # done, or failed: every attachment is terminal, so the chat message is finished
        assert outcome == Ok()
        assert retries == []
