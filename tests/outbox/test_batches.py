"""What a batch does with each outcome: rejects, retries, handler crashes and hangs (§4.4-4.5)."""

from __future__ import annotations

import asyncio
import time

from worker.models import Message, Ok, Reject, Retry, RetryReason
from worker.outbox.maintenance import sequence_queues

from .helpers import (
    AQ,
    CQ,
    Recorder,
    dead_letters,
    drain,
    enqueue_many,
    make_engine,
    payload,
    processor_row,
    retry_rows,
)


def _reject_seq(*seqs: int):
    def decide(message: Message):
        return Reject(f"poison at seq {message.seq}") if message.seq in seqs else Ok()

    return decide


async def test_poison_message_is_isolated(pool, conn):
    await enqueue_many(conn, AQ, 1, range(4))
    handler = Recorder(_reject_seq(2))
    engine = make_engine(pool, {AQ: handler}, batch_size=1)
    report = await drain(engine, AQ)
    assert report.handled == 4
    assert report.dead_lettered == 1
    assert handler.seqs() == [1, 2, 3, 4]  # each handled exactly once

    row = await processor_row(conn, AQ, 1)
    assert (row["processed_seq"], row["attempts"], row["locked_by"]) == (4, 0, None)
    [dead] = await dead_letters(conn)
    assert (dead["queue"], dead["partition"], dead["seq"]) == (AQ, 1, 2)
    assert bytes(dead["payload"]) == payload(1)  # seq 2 carries the second enqueued payload
    assert dead["payload_type"] == "application/json"
    assert dead["last_error"] == "poison at seq 2"
    assert dead["status"] == "pending"
    assert dead["attempts"] == 1
    body_created = next(m.created_at for m in handler.seen if m.seq == 2)
    assert dead["created_at"] == body_created
    assert await retry_rows(conn) == []


async def test_partial_reject_in_one_batch_dead_letters_only_that_message(pool, conn):
    await enqueue_many(conn, AQ, 0, range(5))
    handler = Recorder(_reject_seq(3))
    engine = make_engine(pool, {AQ: handler})
    await engine.sequence()
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert report.handled == 5
    assert report.partitions == 1
    assert report.leases_lost == 0
    assert [d["seq"] for d in await dead_letters(conn)] == [3]
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 5


async def test_reject_at_first_dead_letters_only_the_poison(pool, conn):
    await enqueue_many(conn, AQ, 0, range(3))
    handler = Recorder(_reject_seq(1))
    engine = make_engine(pool, {AQ: handler})
    await drain(engine, AQ)
    assert [d["seq"] for d in await dead_letters(conn)] == [1]
    assert handler.seqs() == [1, 2, 3]
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 3


async def test_retried_message_does_not_stop_later_messages_of_its_partition(pool, conn):
    await enqueue_many(conn, AQ, 3, range(6))

    def decide(message: Message):
        if message.seq == 1:
            return Retry(RetryReason.RATE_LIMITED, "429 from provider")
        return Ok()

    handler = Recorder(decide)
    engine = make_engine(pool, {AQ: handler})
    await engine.sequence()
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert handler.seqs() == [1, 2, 3, 4, 5, 6]  # all in the same round
    assert report.handled == 6

    row = await processor_row(conn, AQ, 3)
    assert (row["processed_seq"], row["attempts"], row["locked_by"]) == (6, 0, None)
    [parked] = await retry_rows(conn)
    assert (parked["partition"], parked["seq"], parked["deliveries"]) == (3, 1, 1)
    assert parked["reason"] == "rate_limited"
    assert parked["last_error"] == "rate_limited: 429 from provider"
    assert bytes(parked["payload"]) == payload(0)
    assert parked["locked_by"] is None
    assert await dead_letters(conn) == []
    # Nothing more to do on the partition itself: the retry waits in its own table.
    assert (await drain(engine, AQ)).handled == 0


async def test_messages_of_a_batch_run_concurrently(pool, conn):
    await enqueue_many(conn, AQ, 0, range(8))

    async def slow(message: Message):
        await asyncio.sleep(0.4)
        return Ok()

    engine = make_engine(pool, {AQ: Recorder(slow)}, concurrency=8)
    await engine.sequence()
    started = time.monotonic()
    report = await engine.process_partitions(AQ, max_partitions=4)
    elapsed = time.monotonic() - started
    assert report.handled == 8
    assert elapsed < 1.6, elapsed  # serially it would take 3.2 s


async def test_concurrency_limit_bounds_handlers_in_flight(pool, conn):
    await enqueue_many(conn, AQ, 0, range(6))
    await enqueue_many(conn, AQ, 1, range(6, 12))
    in_flight = 0
    peak = 0

    async def tracked(message: Message):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return Ok()

    engine = make_engine(pool, {AQ: Recorder(tracked)}, concurrency=3)
    report = await drain(engine, AQ)
    assert report.handled == 12
    assert peak == 3


async def test_handler_that_raises_becomes_retry_and_the_partition_continues(pool, conn):
    await enqueue_many(conn, AQ, 2, range(3))

    def decide(message: Message):
        if message.seq == 2:
            raise RuntimeError("handler bug")
        return Ok()

    handler = Recorder(decide)
    engine = make_engine(pool, {AQ: handler})
    await engine.sequence()
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert handler.seqs() == [1, 2, 3]
    outcomes = {s.handled.envelope.message.seq: s.handled.outcome for s in report.settled}
    assert outcomes[1] == Ok()
    assert outcomes[3] == Ok()
    assert isinstance(outcomes[2], Retry)
    assert outcomes[2].reason is RetryReason.HANDLER_ERROR
    assert (await processor_row(conn, AQ, 2))["processed_seq"] == 3
    [parked] = await retry_rows(conn)
    assert (parked["seq"], parked["reason"]) == (2, "handler_error")
    assert "RuntimeError" in parked["last_error"]


async def test_handler_that_hangs_past_the_budget_becomes_retry(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    cancelled: list[int] = []

    async def decide(message: Message):
        if message.seq == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(message.seq)
                raise
        return Ok()

    engine = make_engine(pool, {AQ: Recorder(decide)}, handler_budget_seconds=0.3)
    await engine.sequence()
    started = time.monotonic()
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert time.monotonic() - started < 3
    outcomes = {s.handled.envelope.message.seq: s.handled.outcome for s in report.settled}
    assert outcomes[2] == Ok()
    assert isinstance(outcomes[1], Retry)
    assert outcomes[1].reason is RetryReason.HANDLER_TIMEOUT
    assert cancelled == [1]
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 2
    [parked] = await retry_rows(conn)
    assert (parked["seq"], parked["reason"]) == (1, "handler_timeout")


async def test_message_of_a_queue_without_a_handler_is_dead_lettered(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    # This engine handles only the chat queue, yet is asked to process the attachment queue.
    engine = make_engine(pool, {CQ: Recorder()})
    assert await sequence_queues(pool, [AQ]) == 1
    await drain(engine, AQ)
    [dead] = await dead_letters(conn)
    assert dead["seq"] == 1
    assert "no handler" in dead["last_error"]
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 1


async def test_abort_mid_batch_parks_unfinished_messages_as_due_retries(pool, conn):
    await enqueue_many(conn, AQ, 1, range(3))
    hanging = 0
    both_hanging = asyncio.Event()
    cancelled: list[int] = []

    async def decide(message: Message):
        nonlocal hanging
        if message.seq == 1:
            return Ok()
        hanging += 1
        if hanging == 2:
            both_hanging.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(message.seq)
            raise
        return Ok()

    engine = make_engine(pool, {AQ: Recorder(decide)}, handler_budget_seconds=60.0)
    await engine.sequence()
    abort = asyncio.Event()
    task = asyncio.create_task(engine.process_partitions(AQ, max_partitions=4, abort=abort))
    await asyncio.wait_for(both_hanging.wait(), 5)
    abort.set()
    report = await asyncio.wait_for(task, 5)

    assert sorted(cancelled) == [2, 3]
    outcomes = {s.handled.envelope.message.seq: s.handled.outcome for s in report.settled}
    assert outcomes[1] == Ok()
    for seq in (2, 3):
        assert isinstance(outcomes[seq], Retry)
        assert outcomes[seq].reason is RetryReason.INTERRUPTED
    row = await processor_row(conn, AQ, 1)
    assert (row["processed_seq"], row["locked_by"], row["locked_until"]) == (3, None, None)
    parked = await retry_rows(conn)
    assert [(r["seq"], r["reason"]) for r in parked] == [(2, "interrupted"), (3, "interrupted")]
    for r in parked:
        assert r["due_in"] < 0.5  # due again at once

    # Whoever runs next picks them up immediately.
    done = Recorder()
    successor = make_engine(pool, {AQ: done})
    report = await successor.process_retries(limit=10)
    assert sorted(m.seq for m in done.seen) == [2, 3]
    assert [m.delivery for m in done.seen] == [2, 2]
    assert await retry_rows(conn) == []


async def test_handler_returning_a_non_outcome_is_a_handler_error_not_a_stuck_partition(pool, conn):
    await enqueue_many(conn, AQ, 0, range(3))

    def decide(message: Message):
        return None if message.seq == 2 else Ok()  # a handler bug: forgot to return

    engine = make_engine(pool, {AQ: Recorder(decide)})
    await engine.sequence()
    report = await engine.process_partitions(AQ, max_partitions=4)
    outcomes = {s.handled.envelope.message.seq: s.handled.outcome for s in report.settled}
    assert outcomes[1] == Ok()
    assert outcomes[3] == Ok()
    assert isinstance(outcomes[2], Retry)
    assert outcomes[2].reason is RetryReason.HANDLER_ERROR
    row = await processor_row(conn, AQ, 0)
    assert (row["processed_seq"], row["locked_by"]) == (3, None)
    [parked] = await retry_rows(conn)
    assert parked["seq"] == 2
    assert "NoneType" in parked["last_error"]


async def _enqueue_as_another_producer(conn, queue: str, partition: int, data: bytes) -> None:
    """Write body + incoming rows directly, as the chat service's producer does (no limit)."""
    await conn.execute(
        "WITH body AS (INSERT INTO modkit_outbox_body (payload, payload_type)"
        "   VALUES (%s, 'application/json') RETURNING id)"
        " INSERT INTO modkit_outbox_incoming (partition_id, body_id)"
        " SELECT p.id, body.id FROM body, modkit_outbox_partitions p"
        " WHERE p.queue = %s AND p.partition = %s",
        (data, queue, partition),
    )


async def test_payload_over_64_kib_is_dead_lettered_unparsed_and_its_neighbours_proceed(pool, conn):
    limit = 64 * 1024
    huge = b'{"n": 1, "pad": "' + b"x" * (50 * 1024 * 1024) + b'"}'  # 50 MB of valid JSON
    just_over = payload(2, pad="y" * limit)
    exactly = payload(3, pad="")
    exactly = exactly[:-1] + b" " * (limit - len(exactly)) + b"}"
    assert (len(huge) > limit, len(just_over) > limit, len(exactly)) == (True, True, limit)
    for data in (payload(0), huge, just_over, exactly):
        await _enqueue_as_another_producer(conn, AQ, 1, data)
    handler = Recorder()
    report = await drain(make_engine(pool, {AQ: handler}), AQ)

    assert report.handled == 4
    assert handler.seqs() == [1, 4]  # the handler never saw the oversized two
    dead = await dead_letters(conn)
    assert [(d["seq"], d["last_error"]) for d in dead] == [
        (2, f"payload of {len(huge)} bytes exceeds the {limit}-byte limit (not parsed)"),
        (3, f"payload of {len(just_over)} bytes exceeds the {limit}-byte limit (not parsed)"),
    ]
    assert bytes(dead[0]["payload"]) == huge  # kept whole for the operator: nothing lost
    assert (await processor_row(conn, AQ, 1))["processed_seq"] == 4
