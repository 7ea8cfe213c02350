"""Lease fencing (SPEC §4.3): an old acquisition of a lease can never pass as the current one.

Each test drives the engine's statements step by step through the interleaving that production
produced: a lease expires, another replica takes the partition over and acks, and the SAME
worker leases the partition again; the first acquisition then wakes up and acks, heartbeats or
releases. Every one of its writes must be refused.
"""

from __future__ import annotations

import random

from worker.db.queries import q
from worker.models import Ok, Reject, Retry, RetryReason
from worker.outbox import processor, retrier
from worker.outbox.delivery import Handled, RedeliveryPolicy, Settled, outcome_params, settle

from .helpers import (
    AQ,
    count,
    dead_letters,
    enqueue_many,
    expire_lease,
    make_engine,
    make_retries_due,
    processor_row,
    retry_rows,
)

POLICY = RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=5)


def _settled(envelopes, decide) -> list[Settled]:
    rng = random.Random(1)
    return [settle(Handled(e, decide(e.message.seq), 0.0), POLICY, rng) for e in envelopes]


async def _lease(pool, worker_id: str) -> processor.PartitionLease:
    [lease] = await processor.lease_partitions(
        pool, AQ, worker_id=worker_id, lease_seconds=30, limit=4
    )
    return lease


async def _takeover_then_relet(pool, conn, *, first_batch: int):
    """W leases and reads ``first_batch`` messages; its lease expires; X takes over, handles all
    five and acks; a sixth message arrives; W leases again. Returns W's two acquisitions."""
    await enqueue_many(conn, AQ, 0, range(5))
    engine = make_engine(pool, {AQ: None})
    await engine.sequence()
    old = await _lease(pool, "W")
    old_batch = await processor.read_batch(pool, old, limit=first_batch)
    await expire_lease(conn, AQ, 0)

    other = await _lease(pool, "X")
    other_batch = await processor.read_batch(pool, other, limit=100)
    assert [e.message.seq for e in other_batch] == [1, 2, 3, 4, 5]
    assert await processor.ack_batch(pool, other, _settled(other_batch, lambda _: Ok()))
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 5

    await enqueue_many(conn, AQ, 0, [6])
    await engine.sequence()
    current = await _lease(pool, "W")
    assert current.processed_seq == 5
    return old, old_batch, current


async def test_stale_ack_after_takeover_and_relet_is_refused(pool, conn):
    old, old_batch, current = await _takeover_then_relet(pool, conn, first_batch=2)
    assert [e.message.seq for e in old_batch] == [1, 2]
    before = await processor_row(conn, AQ, 0)

    # The first acquisition wakes up: it rejects seq 1 (X already did it: Ok) and acks seq 2.
    stale = _settled(old_batch, lambda seq: Reject("bad") if seq == 1 else Ok())
    assert await processor.ack_batch(pool, old, stale) is False

    after = await processor_row(conn, AQ, 0)
    assert after["processed_seq"] == 5  # never backwards
    assert after["locked_by"] == before["locked_by"]  # the live lease is still held ...
    assert after["lease_live"] is True
    assert after["attempts"] == before["attempts"]
    assert await dead_letters(conn) == []  # ... and X's Ok stands
    assert await count(conn, "modkit_outbox_vacuum_counter WHERE counter > 1") == 0

    # The current acquisition works on normally.
    batch = await processor.read_batch(pool, current, limit=100)
    assert [e.message.seq for e in batch] == [6]
    assert await processor.ack_batch(pool, current, _settled(batch, lambda _: Ok()))
    row = await processor_row(conn, AQ, 0)
    assert (row["processed_seq"], row["locked_by"], row["attempts"]) == (6, None, 0)


async def test_stale_release_and_heartbeat_do_not_touch_the_current_lease(pool, conn):
    old, _, current = await _takeover_then_relet(pool, conn, first_batch=2)
    held = await processor_row(conn, AQ, 0)

    assert await processor.extend_lease(pool, old, lease_seconds=30) is False
    await processor.release_lease(pool, old)

    row = await processor_row(conn, AQ, 0)
    assert (row["locked_by"], row["attempts"], row["lease_live"]) == (
        held["locked_by"],
        held["attempts"],
        True,
    )
    assert await processor.extend_lease(pool, current, lease_seconds=30) is True


async def test_every_acquisition_gets_its_own_token(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    await enqueue_many(conn, AQ, 1, range(1))
    await make_engine(pool, {AQ: None}).sequence()
    leases = await processor.lease_partitions(pool, AQ, worker_id="W", lease_seconds=30, limit=4)
    assert len(leases) == 2
    for lease in leases:
        await processor.release_lease(pool, lease)
    again = await processor.lease_partitions(pool, AQ, worker_id="W", lease_seconds=30, limit=4)
    tokens = [lease.token for lease in [*leases, *again]]
    assert len(set(tokens)) == 4
    assert all(token.startswith("W/") for token in tokens)
    rows = {(await processor_row(conn, AQ, p))["locked_by"] for p in (0, 1)}
    assert rows == {lease.token for lease in again}


async def test_ack_moves_the_cursor_only_from_the_position_its_lease_read(pool, conn):
    await enqueue_many(conn, AQ, 0, range(3))
    await make_engine(pool, {AQ: None}).sequence()
    lease = await _lease(pool, "W")
    batch = await processor.read_batch(pool, lease, limit=100)
    # Something else moved the cursor under the lease (an operator, the original library).
    await conn.execute("UPDATE modkit_outbox_processor SET processed_seq = 2")
    rejected = _settled(batch, lambda _: Reject("bad"))
    assert await processor.ack_batch(pool, lease, rejected) is False
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 2
    assert await dead_letters(conn) == []


async def test_stale_retry_row_ack_after_takeover_and_relet_is_refused(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    engine = make_engine(pool, {AQ: lambda m: Retry(RetryReason.SERVER_ERROR, "503")})
    await engine.sequence()
    lease = await _lease(pool, "W")
    batch = await processor.read_batch(pool, lease, limit=100)
    parked = _settled(batch, lambda _: Retry(RetryReason.SERVER_ERROR, "503"))
    assert await processor.ack_batch(pool, lease, parked)
    await make_retries_due(conn)

    lease_retries = retrier.lease_due_retries
    [old] = await lease_retries(pool, [AQ], worker_id="W", lease_seconds=30, limit=10)
    await conn.execute("UPDATE cleanup_worker_retries SET locked_until = now() - interval '1s'")
    [other] = await lease_retries(pool, [AQ], worker_id="X", lease_seconds=30, limit=10)
    again = _settled([other], lambda _: Retry(RetryReason.SERVER_ERROR, "503 again"))
    assert await retrier.ack_retries(pool, again) == {other.retry_id}
    await make_retries_due(conn)
    [current] = await lease_retries(pool, [AQ], worker_id="W", lease_seconds=30, limit=10)
    live = (await retry_rows(conn))[0]

    assert await retrier.ack_retries(pool, _settled([old], lambda _: Reject("stale"))) == set()
    assert await dead_letters(conn) == []
    row = (await retry_rows(conn))[0]
    assert (row["locked_by"], row["deliveries"]) == (live["locked_by"], live["deliveries"])
    assert await retrier.extend_retry_leases(pool, [old], lease_seconds=30) == set()
    assert await retrier.extend_retry_leases(pool, [current], lease_seconds=30) == {
        current.retry_id
    }


async def test_dead_letter_is_written_once_per_message_even_if_outcomes_are_recorded_twice(
    pool, conn
):
    await enqueue_many(conn, AQ, 0, range(2))
    await make_engine(pool, {AQ: None}).sequence()
    lease = await _lease(pool, "W")
    batch = await processor.read_batch(pool, lease, limit=100)
    rejected = _settled(batch, lambda _: Reject("bad"))
    for _ in range(2):  # a second ack of the same outcomes (a replay of the ack)
        await conn.execute(q("record_outcomes"), outcome_params(rejected))
    assert sorted(d["seq"] for d in await dead_letters(conn)) == [1, 2]
