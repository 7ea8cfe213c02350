"""Deferred messages (SPEC §15): parked for their tenant's fair turn, spending no delivery.

A handler answers ``Retry(DEFERRED, not_before)`` when its tenant already has its share of a
busy provider route (``RouteLimiter``). Such a message was not handled: it is parked for exactly
the hinted time, its next delivery has the same number, and it is never dead-lettered for it.
"""

from __future__ import annotations

import pytest
from psycopg_pool import AsyncConnectionPool

from worker.db import Conn
from worker.models import Message, Ok, Outcome, Retry, RetryReason
from worker.outbox.delivery import RedeliveryPolicy

from .helpers import (
    AQ,
    Recorder,
    dead_letters,
    drain,
    enqueue_many,
    make_engine,
    make_retries_due,
    retry_rows,
)


def _deferred(seconds: float) -> Retry:
    return Retry(RetryReason.DEFERRED, "openai: tenant has its share queued (5)", seconds)


async def test_a_deferred_message_is_parked_for_its_turn_without_spending_a_delivery(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    await enqueue_many(conn, AQ, 0, range(1))
    answers: list[Outcome] = [_deferred(7.5), _deferred(0.2), Ok()]
    handler = Recorder(lambda _message: answers.pop(0))
    engine = make_engine(pool, {AQ: handler})

    report = await drain(engine, AQ)
    [parked] = await retry_rows(conn)
    assert parked["due_in"] == pytest.approx(7.5, abs=0.3)  # exactly its turn: no backoff
    assert parked["reason"] == "deferred"
    assert parked["deliveries"] == 1
    assert [type(s.verdict) for s in report.settled] == [Retry]

    for _ in range(2):
        await make_retries_due(conn)
        assert (await engine.process_retries(limit=10)).handled == 1

    assert [m.delivery for m in handler.seen] == [1, 1, 1]  # the deferrals used none
    assert await retry_rows(conn) == []
    assert await dead_letters(conn) == []


async def test_deferral_never_dead_letters_and_a_real_retry_still_counts(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    await enqueue_many(conn, AQ, 1, range(1))
    retry = RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=2)

    def decide(message: Message) -> Retry:
        if len(handler.seen) in (2, 4):  # a real failure between deferrals
            return Retry(RetryReason.SERVER_ERROR, "503")
        return _deferred(0.1)

    handler = Recorder(decide)
    engine = make_engine(pool, {AQ: handler}, retry=retry)
    await drain(engine, AQ)
    for _ in range(5):
        await make_retries_due(conn)
        await engine.process_retries(limit=10)

    # Deliveries: 1 (deferred), 1 (503), 2 (deferred at max_deliveries: still parked),
    # 2 (503 at max_deliveries: dead letter). Deferrals never end a message.
    assert [m.delivery for m in handler.seen] == [1, 1, 2, 2]
    [dead] = await dead_letters(conn)
    assert "max deliveries (2)" in dead["last_error"]
    assert await retry_rows(conn) == []
