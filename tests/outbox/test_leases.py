"""Partition leases: acquire, release, idle polls, crashes, lost leases, heartbeats (§4.3-4.4)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from psycopg_pool import AsyncConnectionPool

from worker.db.pool import connection_kwargs
from worker.models import Message, Ok, Reject, Retry, RetryReason
from worker.outbox import processor
from worker.outbox.engine import Engine

from .helpers import (
    AQ,
    CQ,
    Recorder,
    count,
    dead_letters,
    drain,
    enqueue_many,
    expire_lease,
    make_engine,
    processor_row,
    retry_rows,
    rows,
    settings,
)


async def _crash(pool, worker_id: str, expected_seqs: list[int]) -> bool:
    """Lease the queue's only busy partition and read its batch, then never ack (a crash).
    Returns whether the batch was suspect (its previous lease had ended without an ack)."""
    leases = await processor.lease_partitions(
        pool, AQ, worker_id=worker_id, lease_seconds=30, limit=4
    )
    assert len(leases) == 1
    batch = await processor.read_batch(pool, leases[0], limit=100)
    assert [e.message.seq for e in batch] == expected_seqs
    assert {e.message.delivery for e in batch} == {1}  # lease churn is not a delivery
    return batch[0].suspect


async def test_lease_held_during_batch_and_released_after_ack(pool, conn):
    await enqueue_many(conn, AQ, 1, range(2))
    during: list[dict] = []

    async def handler(message: Message):
        during.append(await processor_row(conn, AQ, 1))
        return Ok()

    engine = make_engine(pool, {AQ: handler})
    report = await drain(engine, AQ)
    assert report.handled == 2
    assert report.leases_lost == 0
    assert len(during) == 2
    for row in during:
        assert row["locked_by"].startswith(engine.worker_id + "/")  # + this acquisition
        assert row["lease_live"] is True
        assert row["attempts"] == 1
        assert row["processed_seq"] == 0
    after = await processor_row(conn, AQ, 1)
    assert after["processed_seq"] == 2
    assert after["attempts"] == 0
    assert after["locked_by"] is None
    assert after["locked_until"] is None
    assert after["last_error"] is None


async def test_idle_polls_do_not_raise_attempts_or_write_processor_rows(pool, conn):
    # One partition already processed (work done, cursor at the end), the rest never used.
    await enqueue_many(conn, AQ, 0, range(2))
    engine = make_engine(pool, {AQ: Recorder(), CQ: Recorder()})
    await drain(engine, AQ)
    query = (
        "SELECT partition_id, xmin::text AS xmin, attempts, locked_by FROM modkit_outbox_processor"
    )
    before = await rows(conn, query + " ORDER BY partition_id")

    for _ in range(5):
        assert await engine.sequence() == 0
        for queue in (AQ, CQ):
            report = await engine.process_partitions(queue, max_partitions=8)
            assert report.handled == 0
            assert report.partitions == 0

    after = await rows(conn, query + " ORDER BY partition_id")
    assert after == before  # same row versions: not even rewritten
    assert {row["attempts"] for row in after} == {0}
    assert {row["locked_by"] for row in after} == {None}


async def test_crash_leaves_attempts_and_lock_then_next_owner_handles_the_batch_alone(pool, conn):
    await enqueue_many(conn, AQ, 2, range(2))
    engine = make_engine(pool, {AQ: (handler := Recorder())})
    await engine.sequence()
    assert await _crash(pool, "crashed-worker", [1, 2]) is False

    row = await processor_row(conn, AQ, 2)
    assert row["attempts"] == 1
    assert row["locked_by"].startswith("crashed-worker/")
    assert row["processed_seq"] == 0

    # While the dead worker's lease runs, nobody else gets the partition.
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert report.handled == 0
    assert handler.seen == []

    await expire_lease(conn, AQ, 2)
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert report.handled == 2
    # Delivered again, one by one (isolation.py), still as the messages' first deliveries.
    assert [m.delivery for m in handler.seen] == [1, 1]
    row = await processor_row(conn, AQ, 2)
    assert (row["processed_seq"], row["attempts"], row["locked_by"]) == (2, 0, None)
    assert await count(conn, "cleanup_worker_deliveries") == 0  # forgotten with the ack


async def test_multiple_crashes_accumulate_attempts_but_not_deliveries(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    engine = make_engine(pool, {AQ: (handler := Recorder())})
    await engine.sequence()
    assert await _crash(pool, "crash-1", [1]) is False
    await expire_lease(conn, AQ, 0)
    assert await _crash(pool, "crash-2", [1]) is True
    row = await processor_row(conn, AQ, 0)
    assert (row["attempts"], row["processed_seq"]) == (2, 0)
    assert row["locked_by"].startswith("crash-2/")

    await expire_lease(conn, AQ, 0)
    await drain(engine, AQ)
    assert [m.delivery for m in handler.seen] == [1]  # no handling of it ever finished or died
    row = await processor_row(conn, AQ, 0)
    assert (row["attempts"], row["locked_by"], row["processed_seq"]) == (0, None, 1)


async def test_success_after_crash_resets_attempts_for_the_next_batch(pool, conn):
    await enqueue_many(conn, AQ, 3, range(1))
    recorded: list[int] = []  # delivery rows of the message while its handler runs

    async def look(message: Message):
        cur = await conn.execute(
            "SELECT count(*) FROM cleanup_worker_deliveries WHERE seq = %s", (message.seq,)
        )
        recorded.append((await cur.fetchone())[0])
        return Ok()

    engine = make_engine(pool, {AQ: (handler := Recorder(look))})
    await engine.sequence()
    await _crash(pool, "crash-1", [1])
    await expire_lease(conn, AQ, 3)
    await drain(engine, AQ)
    assert (await processor_row(conn, AQ, 3))["attempts"] == 0

    await enqueue_many(conn, AQ, 3, range(1, 2))
    await drain(engine, AQ)
    assert [m.delivery for m in handler.seen] == [1, 1]
    assert recorded == [1, 0]  # the suspect batch is recorded as it runs, the next one is not


async def test_lost_lease_rolls_the_ack_back_and_the_batch_is_delivered_again(pool, conn):
    await enqueue_many(conn, AQ, 1, range(3))
    taken = asyncio.Event()

    async def handler(message: Message):
        if recorder.seqs().count(message.seq) == 1:  # its first handling
            if not taken.is_set():
                # Another replica takes the partition over while the batch runs.
                await conn.execute(
                    "UPDATE modkit_outbox_processor SET locked_by = 'thief'"
                    " WHERE locked_by IS NOT NULL"
                )
                taken.set()
            # Outcomes that would write rows if the ack went through.
            return {1: Reject("bad"), 2: Retry(RetryReason.SERVER_ERROR, "503"), 3: Ok()}[
                message.seq
            ]
        return Ok()

    recorder = Recorder(handler)
    engine = make_engine(pool, {AQ: recorder})
    await engine.sequence()
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert len(recorder.seen) == 3
    assert report.leases_lost == 1
    assert report.dead_lettered == 0

    row = await processor_row(conn, AQ, 1)
    assert row["processed_seq"] == 0
    assert row["locked_by"] == "thief"
    assert await dead_letters(conn) == []
    assert await retry_rows(conn) == []
    assert await count(conn, "modkit_outbox_vacuum_counter WHERE counter > 0") == 0

    # The thief dies too; the batch comes back to whoever leases next.
    await expire_lease(conn, AQ, 1)
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert report.handled == 3
    assert report.leases_lost == 0
    assert sorted((m.seq, m.delivery) for m in recorder.seen) == [
        (1, 1), (1, 1), (2, 1), (2, 1), (3, 1), (3, 1),
    ]  # fmt: skip
    row = await processor_row(conn, AQ, 1)
    assert (row["processed_seq"], row["locked_by"], row["attempts"]) == (3, None, 0)


async def test_lost_lease_by_concurrent_sql_update(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(message: Message):
        started.set()
        await release.wait()
        return Reject("would be dead-lettered")

    engine = make_engine(pool, {AQ: handler})
    await engine.sequence()
    task = asyncio.create_task(engine.process_partitions(AQ, max_partitions=4))
    await asyncio.wait_for(started.wait(), 5)
    await conn.execute(
        "UPDATE modkit_outbox_processor SET locked_by = 'other-replica',"
        " locked_until = now() + interval '1 minute' WHERE locked_by LIKE %s",
        (engine.worker_id + "/%",),
    )
    release.set()
    report = await asyncio.wait_for(task, 10)
    assert report.leases_lost == 1
    assert await dead_letters(conn) == []
    assert (await processor_row(conn, AQ, 0))["processed_seq"] == 0


@pytest.mark.slow
async def test_slow_batch_keeps_its_lease_through_heartbeats(pool, conn):
    lease = 1.5
    await enqueue_many(conn, AQ, 2, range(1))
    entered = asyncio.Event()

    async def slow(message: Message):
        entered.set()
        await asyncio.sleep(3 * lease)
        return Ok()

    owner = make_engine(pool, {AQ: slow}, lease_seconds=lease, handler_budget_seconds=20.0)
    other = make_engine(pool, {AQ: (intruder := Recorder())}, lease_seconds=lease)
    assert owner.worker_id != other.worker_id
    await owner.sequence()
    task = asyncio.create_task(owner.process_partitions(AQ, max_partitions=4))
    await asyncio.wait_for(entered.wait(), 5)

    polls = 0
    while not task.done():
        report = await other.process_partitions(AQ, max_partitions=4)
        assert report.handled == 0
        row = await processor_row(conn, AQ, 2)
        if not task.done():
            assert row["locked_by"].startswith(owner.worker_id + "/")
        polls += 1
        await asyncio.sleep(0.1)

    report = task.result()
    assert polls >= 10  # the other engine really kept polling past the lease
    assert report.handled == 1
    assert report.leases_lost == 0
    assert intruder.seen == []
    row = await processor_row(conn, AQ, 2)
    assert (row["processed_seq"], row["locked_by"], row["attempts"]) == (1, None, 0)


async def test_release_without_progress_gives_the_attempt_back(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    engine = make_engine(pool, {AQ: Recorder()})
    await engine.sequence()
    [lease] = await processor.lease_partitions(pool, AQ, worker_id="me", lease_seconds=30, limit=4)
    assert (lease.partition, lease.processed_seq, lease.attempts) == (0, 0, 1)
    # Only the holder (this acquisition's token) can release.
    await processor.release_lease(pool, replace(lease, token="somebody-else"))
    assert (await processor_row(conn, AQ, 0))["locked_by"] == lease.token
    await processor.release_lease(pool, lease)
    row = await processor_row(conn, AQ, 0)
    assert (row["attempts"], row["locked_by"], row["locked_until"]) == (0, None, None)
    assert row["processed_seq"] == 0
    # Free again at once: the next round takes it without waiting for an expiry.
    report = await engine.process_partitions(AQ, max_partitions=4)
    assert report.handled == 1


@pytest.mark.slow
@pytest.mark.parametrize("own_lease_pool", [True, False], ids=["lease-pool", "shared-pool"])
async def test_handlers_holding_every_pooled_connection_do_not_starve_the_heartbeat(
    db, pool, conn, own_lease_pool
):
    """Handlers busy on the database (here: one holding the only pooled connection past three
    leases) must not stop the heartbeat. On the shared pool it does, and the lease is taken
    over (the control case, proving the test can see the failure)."""
    lease = 1.0
    await enqueue_many(conn, AQ, 3, range(1))
    entered = asyncio.Event()
    async with (
        AsyncConnectionPool(
            db, min_size=1, max_size=1, kwargs=connection_kwargs(), open=False
        ) as handlers_pool,
        AsyncConnectionPool(
            db, min_size=1, max_size=2, kwargs=connection_kwargs(), open=False
        ) as lease_pool,
    ):

        async def busy(message: Message):
            async with handlers_pool.connection():
                entered.set()
                await asyncio.sleep(3 * lease)
            return Ok()

        owner = Engine(
            handlers_pool,
            {AQ: busy},
            settings(lease_seconds=lease, handler_budget_seconds=20.0),
            lease_pool=lease_pool if own_lease_pool else None,
        )
        other = make_engine(pool, {AQ: (intruder := Recorder())}, lease_seconds=lease)
        await other.sequence()
        task = asyncio.create_task(owner.process_partitions(AQ, max_partitions=4))
        await asyncio.wait_for(entered.wait(), 5)
        while not task.done():
            await other.process_partitions(AQ, max_partitions=4)
            await asyncio.sleep(0.1)
        report = task.result()
    if own_lease_pool:
        assert (report.handled, report.leases_lost, intruder.seen) == (1, 0, [])
    else:
        assert report.leases_lost == 1
        assert len(intruder.seen) == 1
