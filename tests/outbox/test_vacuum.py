"""Vacuum (§4.7): deletes processed outgoing + body rows only, driven by the counter."""

from __future__ import annotations

from worker.models import Message, Ok, Reject

from .helpers import AQ, CQ, Recorder, count, dead_letters, drain, enqueue_many, make_engine, rows


async def _counters(conn) -> dict[tuple[str, int], int]:
    found = await rows(
        conn,
        "SELECT p.queue, p.partition, v.counter FROM modkit_outbox_vacuum_counter v"
        " JOIN modkit_outbox_partitions p ON p.id = v.partition_id",
    )
    return {(r["queue"], r["partition"]): r["counter"] for r in found}


async def test_vacuum_deletes_only_processed_rows(pool, conn):
    engine = make_engine(pool, {AQ: Recorder(), CQ: Recorder()})
    await enqueue_many(conn, AQ, 0, range(4))
    await drain(engine, AQ)
    # Sequenced but not processed yet.
    await enqueue_many(conn, AQ, 0, range(4, 7))
    await enqueue_many(conn, CQ, 1, range(7, 9))
    await engine.sequence()
    assert await count(conn, "modkit_outbox_outgoing") == 9

    assert await engine.vacuum() == 4
    left = await rows(
        conn,
        "SELECT p.queue, p.partition, o.seq FROM modkit_outbox_outgoing o"
        " JOIN modkit_outbox_partitions p ON p.id = o.partition_id"
        " JOIN modkit_outbox_body b ON b.id = o.body_id ORDER BY p.queue, p.partition, o.seq",
    )
    assert [(r["queue"], r["partition"], r["seq"]) for r in left] == [
        (AQ, 0, 5), (AQ, 0, 6), (AQ, 0, 7), (CQ, 1, 1), (CQ, 1, 2),
    ]  # fmt: skip
    assert await count(conn, "modkit_outbox_body") == 5
    assert set((await _counters(conn)).values()) == {0}
    assert await engine.vacuum() == 0

    # The rest is handled after the vacuum, and vacuumed next time.
    handler = Recorder()
    later = make_engine(pool, {AQ: handler, CQ: handler})
    await drain(later, AQ)
    await drain(later, CQ)
    assert handler.numbers() == list(range(4, 9))
    assert await later.vacuum() == 5
    assert await count(conn, "modkit_outbox_outgoing") == 0
    assert await count(conn, "modkit_outbox_body") == 0


async def test_vacuum_skips_when_nothing_was_processed(pool, conn):
    engine = make_engine(pool, {AQ: Recorder()})
    await enqueue_many(conn, AQ, 2, range(3))
    await engine.sequence()
    assert await engine.vacuum() == 0
    assert await count(conn, "modkit_outbox_outgoing") == 3
    assert await count(conn, "modkit_outbox_body") == 3
    assert set((await _counters(conn)).values()) == {0}


async def test_counter_counts_acks_and_settles_after_vacuum(pool, conn):
    engine = make_engine(pool, {AQ: Recorder()}, batch_size=2)
    await enqueue_many(conn, AQ, 3, range(5))
    await drain(engine, AQ)
    assert (await _counters(conn))[(AQ, 3)] == 3  # three acks: 2 + 2 + 1
    assert await engine.vacuum() == 5
    assert set((await _counters(conn)).values()) == {0}


async def test_vacuum_in_small_chunks_deletes_everything_processed(pool, conn):
    from worker.outbox.maintenance import vacuum

    engine = make_engine(pool, {AQ: Recorder()})
    await enqueue_many(conn, AQ, 1, range(7))
    await drain(engine, AQ)
    assert await vacuum(pool, chunk=2) == 7
    assert await count(conn, "modkit_outbox_outgoing") == 0
    assert await count(conn, "modkit_outbox_body") == 0


async def test_end_to_end_enqueue_through_vacuum_leaves_nothing(pool, conn):
    engine = make_engine(pool, {AQ: Recorder()})
    await enqueue_many(conn, AQ, 0, range(3))
    await drain(engine, AQ)
    await engine.vacuum()
    for table in ("incoming", "outgoing", "body", "dead_letters"):
        assert await count(conn, f"modkit_outbox_{table}") == 0
    [row] = await rows(
        conn,
        "SELECT processed_seq FROM modkit_outbox_processor WHERE processed_seq > 0",
    )
    assert row["processed_seq"] == 3


async def test_dead_letters_and_retry_rows_survive_vacuum(pool, conn):
    from worker.models import Retry, RetryReason

    def decide(message: Message):
        return {1: Reject("bad"), 2: Retry(RetryReason.TIMEOUT, "slow")}.get(message.seq, Ok())

    engine = make_engine(pool, {AQ: Recorder(decide)})
    await enqueue_many(conn, AQ, 0, range(3))
    await drain(engine, AQ)
    assert await engine.vacuum() == 3
    assert await count(conn, "modkit_outbox_body") == 0
    [dead] = await dead_letters(conn)
    assert bytes(dead["payload"]) == b'{"n": 0}'
    [parked] = await rows(conn, "SELECT payload FROM cleanup_worker_retries")
    assert bytes(parked["payload"]) == b'{"n": 1}'
