"""The sequencer (§4.2): dense per-partition seqs in enqueue order, safe beside other sequencers."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from psycopg_pool import AsyncConnectionPool

from worker.db.pool import connection_kwargs
from worker.outbox.enqueue import enqueue
from worker.outbox.maintenance import sequence_queues

from .helpers import AQ, CQ, count, enqueue_many, finish, payload, rows, scalar


async def _sequenced(conn, queue: str, partition: int) -> list[tuple[int, int]]:
    """(seq, n) of a partition's outgoing rows, by seq."""
    found = await rows(
        conn,
        "SELECT o.seq, b.payload FROM modkit_outbox_outgoing o"
        " JOIN modkit_outbox_partitions p ON p.id = o.partition_id"
        " JOIN modkit_outbox_body b ON b.id = o.body_id"
        " WHERE p.queue = %s AND p.partition = %s ORDER BY o.seq",
        (queue, partition),
    )
    return [(r["seq"], json.loads(bytes(r["payload"]))["n"]) for r in found]


async def _sequence_counter(conn, queue: str, partition: int) -> int:
    return int(
        await scalar(
            conn,
            "SELECT sequence FROM modkit_outbox_partitions WHERE queue = %s AND partition = %s",
            (queue, partition),
        )
    )


async def test_sequencer_preserves_enqueue_order(pool, conn):
    order = [(0, 10), (1, 11), (0, 12), (0, 13), (1, 14), (0, 15), (3, 16)]
    for partition, n in order:
        await enqueue(conn, AQ, partition, payload(n))
    assert await sequence_queues(pool, [AQ]) == len(order)
    assert await _sequenced(conn, AQ, 0) == [(1, 10), (2, 12), (3, 13), (4, 15)]
    assert await _sequenced(conn, AQ, 1) == [(1, 11), (2, 14)]
    assert await _sequenced(conn, AQ, 3) == [(1, 16)]
    assert await _sequenced(conn, AQ, 2) == []
    assert await count(conn, "modkit_outbox_incoming") == 0
    assert await _sequence_counter(conn, AQ, 0) == 4


async def test_consecutive_runs_produce_contiguous_seqs(pool, conn):
    await enqueue_many(conn, CQ, 2, range(3))
    assert await sequence_queues(pool, [CQ]) == 3
    assert await sequence_queues(pool, [CQ]) == 0
    await enqueue_many(conn, CQ, 2, range(3, 7))
    assert await sequence_queues(pool, [CQ]) == 4
    assert await _sequenced(conn, CQ, 2) == [(i + 1, i) for i in range(7)]
    assert await _sequence_counter(conn, CQ, 2) == 7


async def test_sequencer_only_touches_the_queues_it_is_given(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    await enqueue_many(conn, CQ, 0, range(2, 5))
    assert await sequence_queues(pool, [CQ]) == 3
    assert await count(conn, "modkit_outbox_incoming") == 2
    assert await sequence_queues(pool, [AQ, CQ]) == 2


async def test_large_backlog_is_sequenced_in_chunks_without_gaps(pool, conn):
    await conn.execute(
        "WITH b AS (INSERT INTO modkit_outbox_body (payload, payload_type)"
        " SELECT convert_to(json_build_object('n', g)::text, 'UTF8'), 'application/json'"
        " FROM generate_series(0, 2499) g RETURNING id)"
        " INSERT INTO modkit_outbox_incoming (partition_id, body_id)"
        " SELECT (SELECT id FROM modkit_outbox_partitions WHERE queue = %s AND partition = 1),"
        " b.id FROM b ORDER BY b.id",
        (AQ,),
    )
    assert await sequence_queues(pool, [AQ]) == 2500
    sequenced = await _sequenced(conn, AQ, 1)
    assert [seq for seq, _ in sequenced] == list(range(1, 2501))
    assert [n for _, n in sequenced] == list(range(2500))


async def test_sequencer_skips_a_partition_another_sequencer_holds(pool, conn, db):
    await enqueue_many(conn, AQ, 0, range(2))
    await enqueue_many(conn, AQ, 1, range(2, 3))
    async with AsyncConnectionPool(
        db, min_size=1, max_size=1, kwargs=connection_kwargs(), open=False
    ) as other:
        async with other.connection() as holder, holder.transaction():
            # The chat service's own sequencer holds partition 0 right now.
            await holder.execute(
                "SELECT id FROM modkit_outbox_partitions WHERE queue = %s AND partition = 0"
                " FOR UPDATE",
                (AQ,),
            )
            assert await asyncio.wait_for(sequence_queues(pool, [AQ]), 5) == 1
        assert await sequence_queues(pool, [AQ]) == 2
    assert await _sequenced(conn, AQ, 0) == [(1, 0), (2, 1)]


@pytest.mark.slow
async def test_concurrent_sequencers_never_duplicate_or_lose(pool, conn, db, spawn):
    total = 400
    partitions = [(AQ, p) for p in range(4)] + [(CQ, p) for p in range(4)]
    producing = asyncio.Event()
    moved_in_tasks = 0

    async def sequencer_task() -> None:
        nonlocal moved_in_tasks
        async with AsyncConnectionPool(
            db, min_size=1, max_size=1, kwargs=connection_kwargs(), open=False
        ) as own:
            while producing.is_set():
                moved = await sequence_queues(own, [AQ, CQ])
                moved_in_tasks += moved  # not `+= await`: that reads the total before awaiting
                await asyncio.sleep(0)

    process = await spawn("sequence", db, "--peers", "2")
    # Both sides wait at a barrier, so the other process runs while we produce.
    await conn.execute("INSERT INTO proc_ready (pid) VALUES (0)")
    for _ in range(600):
        if await count(conn, "proc_ready") == 2:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the sequencer process never started")
    producing.set()
    tasks = [asyncio.create_task(sequencer_task()) for _ in range(3)]

    rng = random.Random(5)
    expected: dict[tuple[str, int], list[int]] = {key: [] for key in partitions}
    n = 0
    async with (
        AsyncConnectionPool(
            db, min_size=1, max_size=1, kwargs=connection_kwargs(), open=False
        ) as producer_pool,
        producer_pool.connection() as producer,
    ):
        while n < total:
            async with producer.transaction():
                for _ in range(rng.randint(1, 3)):
                    queue, partition = rng.choice(partitions)
                    await enqueue(producer, queue, partition, payload(n))
                    expected[(queue, partition)].append(n)
                    n += 1
            await asyncio.sleep(0)

    producing.clear()
    await asyncio.gather(*tasks)
    await conn.execute("INSERT INTO proc_stop VALUES (1)")
    moved_in_process = int((await finish(process)).strip())
    leftover = await sequence_queues(pool, [AQ, CQ])
    assert moved_in_tasks + moved_in_process + leftover == n
    assert moved_in_tasks > 0
    assert moved_in_process > 0  # the other OS process really took part

    assert await count(conn, "modkit_outbox_incoming") == 0
    assert await count(conn, "modkit_outbox_outgoing") == n
    assert await scalar(conn, "SELECT count(DISTINCT body_id) FROM modkit_outbox_outgoing") == n
    for (queue, partition), numbers in expected.items():
        sequenced = await _sequenced(conn, queue, partition)
        assert [seq for seq, _ in sequenced] == list(range(1, len(numbers) + 1))
        assert [m for _, m in sequenced] == numbers  # enqueue (commit) order
        assert await _sequence_counter(conn, queue, partition) == len(numbers)
