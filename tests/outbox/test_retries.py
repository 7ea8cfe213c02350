"""Parked retries (§4.5): backoff, Retry-After hints, max deliveries, the retrier's own leases."""

from __future__ import annotations

import random

import pytest

from worker.models import Message, Ok, Reject, Retry, RetryReason
from worker.outbox import retrier
from worker.outbox.delivery import RedeliveryPolicy

from .helpers import (
    AQ,
    CQ,
    Recorder,
    dead_letters,
    drain,
    enqueue_many,
    make_engine,
    make_retries_due,
    payload,
    retry_rows,
)

SEED = 20240601


def _always_retry(hint: float | None = None):
    def decide(message: Message):
        return Retry(RetryReason.SERVER_ERROR, f"503 on delivery {message.delivery}", hint)

    return decide


def test_policy_grows_exponentially_with_jitter_and_respects_cap_and_hint():
    policy = RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=10, jitter=0.2)
    rng = random.Random(1)
    for delivery, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        samples = [policy.delay_seconds(delivery, None, rng) for _ in range(200)]
        assert min(samples) >= nominal * 0.8 - 1e-9
        assert max(samples) <= min(nominal * 1.2, policy.max_seconds) + 1e-9
        assert len(set(samples)) > 50  # jittered, not constant
    assert policy.delay_seconds(1, 30.0, rng) == 30.0  # Retry-After above the backoff wins
    assert policy.delay_seconds(1, 0.01, rng) >= 0.8  # ... and below it changes nothing
    assert policy.delay_seconds(20, 600.0, rng) == 600.0  # a hint may exceed the cap
    # No overflow for absurd delivery counts.
    assert policy.delay_seconds(10_000, None, rng) <= policy.max_seconds


async def test_backoff_grows_with_deliveries(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    retry = RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=10)
    engine = make_engine(pool, {AQ: Recorder(_always_retry())}, seed=SEED, retry=retry)
    expected_rng = random.Random(SEED)

    await drain(engine, AQ)
    observed: list[tuple[int, float]] = []
    for delivery in range(1, 7):
        [parked] = await retry_rows(conn)
        assert parked["deliveries"] == delivery
        assert parked["last_error"] == f"server_error: 503 on delivery {delivery}"
        expected = retry.delay_seconds(delivery, None, expected_rng)
        assert parked["due_in"] == pytest.approx(expected, abs=0.3)
        observed.append((delivery, parked["due_in"]))
        # Not due yet: the retrier leaves it alone.
        assert (await engine.process_retries(limit=10)).handled == 0
        await make_retries_due(conn)
        report = await engine.process_retries(limit=10)
        assert report.handled == 1

    for delivery, due_in in observed:
        nominal = min(8.0, 2.0 ** (delivery - 1))
        assert nominal * 0.8 - 0.3 <= due_in <= min(nominal * 1.2, 8.0) + 0.05
    # Grows until the cap: every step at least 4/3 of the last (2 x 0.8 / 1.2) below it.
    assert observed[1][1] > observed[0][1] * 1.2
    assert observed[2][1] > observed[1][1] * 1.2


async def test_backoff_respects_a_not_before_hint(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    await enqueue_many(conn, AQ, 1, range(1, 2))

    def decide(message: Message):
        hint = 30.0 if message.partition == 0 else 0.05
        return Retry(RetryReason.RATE_LIMITED, "429", hint)

    engine = make_engine(pool, {AQ: Recorder(decide)})
    await drain(engine, AQ)
    by_partition = {r["partition"]: r for r in await retry_rows(conn)}
    assert 29.5 <= by_partition[0]["due_in"] <= 30.05  # Retry-After honoured
    assert 0.5 <= by_partition[1]["due_in"] <= 1.25  # a small hint does not shorten the backoff


async def test_max_deliveries_dead_letters_with_the_last_error(pool, conn):
    await enqueue_many(conn, CQ, 2, range(1))
    retry = RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=3)
    handler = Recorder(_always_retry())
    engine = make_engine(pool, {CQ: handler}, retry=retry)
    await drain(engine, CQ)
    for delivery in (2, 3):
        await make_retries_due(conn)
        report = await engine.process_retries(limit=10)
        assert report.handled == 1
        assert report.dead_lettered == (1 if delivery == 3 else 0)
    assert [m.delivery for m in handler.seen] == [1, 2, 3]

    assert await retry_rows(conn) == []
    [dead] = await dead_letters(conn)
    assert (dead["queue"], dead["partition"], dead["seq"]) == (CQ, 2, 1)
    assert "max deliveries (3)" in dead["last_error"]
    assert "503 on delivery 3" in dead["last_error"]
    assert dead["attempts"] == 3
    assert bytes(dead["payload"]) == payload(0)
    await make_retries_due(conn)
    assert (await engine.process_retries(limit=10)).handled == 0


async def test_ok_from_the_retrier_deletes_the_retry_row(pool, conn):
    await enqueue_many(conn, AQ, 0, range(3))

    def decide(message: Message):
        if message.delivery == 1 and message.seq == 2:
            return Retry(RetryReason.CONNECTION, "reset")
        return Ok()

    handler = Recorder(decide)
    engine = make_engine(pool, {AQ: handler})
    await drain(engine, AQ)
    assert [r["seq"] for r in await retry_rows(conn)] == [2]
    await make_retries_due(conn)
    report = await engine.process_retries(limit=10)
    assert report.handled == 1
    assert report.leases_lost == 0
    assert await retry_rows(conn) == []
    assert await dead_letters(conn) == []
    assert sorted((m.seq, m.delivery) for m in handler.seen) == [(1, 1), (2, 1), (2, 2), (3, 1)]


async def test_reject_from_the_retrier_dead_letters_and_deletes_the_row(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))

    def decide(message: Message):
        if message.delivery == 1:
            return Retry(RetryReason.CONNECTION, "reset")
        return Reject("gone for good")

    engine = make_engine(pool, {AQ: Recorder(decide)})
    await drain(engine, AQ)
    await make_retries_due(conn)
    report = await engine.process_retries(limit=10)
    assert report.dead_lettered == 1
    assert await retry_rows(conn) == []
    [dead] = await dead_letters(conn)
    assert (dead["seq"], dead["last_error"], dead["attempts"]) == (1, "gone for good", 2)


async def test_lost_lease_on_retry_rows_writes_nothing(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))

    calls = 0

    async def decide(message: Message):
        nonlocal calls
        calls += 1
        if calls == 1:
            return Retry(RetryReason.SERVER_ERROR, "first")
        if calls == 2:
            # Another replica takes the row over while we work on it.
            await conn.execute("UPDATE cleanup_worker_retries SET locked_by = 'thief'")
        return Reject("would be dead-lettered")

    handler = Recorder(decide)
    engine = make_engine(pool, {AQ: handler})
    await drain(engine, AQ)
    await make_retries_due(conn)
    report = await engine.process_retries(limit=10)
    assert report.leases_lost == 1
    assert report.dead_lettered == 0
    assert await dead_letters(conn) == []
    [parked] = await retry_rows(conn)
    assert parked["locked_by"] == "thief"
    assert parked["last_error"] == "server_error: first"  # the lost outcome was not written
    assert parked["deliveries"] == 2  # the lease itself counted a delivery

    # The thief dies; its lease expires and the row is delivered again.
    await conn.execute(
        "UPDATE cleanup_worker_retries SET locked_until = now() - interval '1 second'"
    )
    report = await engine.process_retries(limit=10)
    assert report.dead_lettered == 1
    # Delivery 2 left no outcome (its lease was lost), so its number is used again: lease
    # churn does not use up the message's deliveries.
    assert [m.delivery for m in handler.seen] == [1, 2, 2]
    assert await retry_rows(conn) == []


async def test_retry_rows_held_by_another_worker_are_skipped(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    engine = make_engine(pool, {AQ: Recorder(_always_retry())})
    await drain(engine, AQ)
    await make_retries_due(conn)
    await conn.execute(
        "UPDATE cleanup_worker_retries SET locked_by = 'busy',"
        " locked_until = now() + interval '1 minute' WHERE seq = 1"
    )
    other = Recorder()
    report = await make_engine(pool, {AQ: other}).process_retries(limit=10)
    assert report.handled == 1
    assert [m.seq for m in other.seen] == [2]


async def test_next_retry_due_is_when_the_earliest_parked_message_not_leased_is(pool, conn):
    """What an idle retrier sleeps until (daemon): None with nothing parked, the earliest
    not_before of the rows it could lease, and rows another worker holds are not waited for."""
    engine = make_engine(pool, {AQ: Recorder(_always_retry(hint=30.0))})
    assert await engine.next_retry_due() is None
    await enqueue_many(conn, AQ, 0, range(2))
    await drain(engine, AQ)  # both parked, 30 s or more away
    earliest = min(r["due_in"] for r in await retry_rows(conn))
    assert (await engine.next_retry_due() or 0.0) == pytest.approx(earliest, abs=1.0)
    await make_retries_due(conn)
    assert (await engine.next_retry_due() or 1.0) <= 0.0  # overdue
    await retrier.lease_due_retries(pool, [AQ], worker_id="other", lease_seconds=30, limit=10)
    assert await engine.next_retry_due() is None
