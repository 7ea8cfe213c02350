"""Two engines in two OS processes draining one database (§4.3, §4.8)."""

from __future__ import annotations

import json

import pytest

from worker.outbox.enqueue import enqueue

from .helpers import AQ, CQ, count, finish, payload, rows


@pytest.mark.slow
async def test_two_processes_drain_concurrently_without_sharing_a_partition(db, conn, spawn):
    await conn.execute(
        "CREATE TABLE drain_log (id BIGSERIAL PRIMARY KEY, pid INT NOT NULL, queue TEXT NOT NULL,"
        " partition INT NOT NULL, seq BIGINT NOT NULL, payload BYTEA NOT NULL,"
        " entered TIMESTAMPTZ NOT NULL, exited TIMESTAMPTZ)"
    )
    total = 240
    async with conn.transaction():
        for n in range(total):
            await enqueue(conn, (AQ, CQ)[n % 2], (n // 2) % 4, payload(n))

    common = ["--peers", "2", "--expected", str(total), "--lease-seconds", "10", "--batch", "4"]
    first = await spawn("drain", db, *common)
    second = await spawn("drain", db, *common)
    await finish(first)
    await finish(second)

    handled = await rows(conn, "SELECT * FROM drain_log WHERE exited IS NOT NULL")
    numbers = sorted(json.loads(bytes(r["payload"]))["n"] for r in handled)
    assert numbers == list(range(total))  # every message, each exactly once
    assert await count(conn, "drain_log WHERE exited IS NULL") == 0
    pids = {r["pid"] for r in handled}
    assert pids == {first.pid, second.pid}  # both processes did real work

    overlaps = await rows(
        conn,
        "SELECT a.queue, a.partition, a.seq AS a_seq, b.seq AS b_seq"
        " FROM drain_log a JOIN drain_log b"
        "   ON a.queue = b.queue AND a.partition = b.partition AND a.pid < b.pid"
        " WHERE a.entered < b.exited AND b.entered < a.exited",
    )
    assert overlaps == []

    # Partitions changed hands over time (the lease is per batch, not per process).
    switched = await rows(
        conn,
        "SELECT queue, partition, count(DISTINCT pid) AS holders FROM drain_log"
        " GROUP BY queue, partition HAVING count(DISTINCT pid) > 1",
    )
    assert switched, "no partition was processed by both processes"
    assert await count(conn, "modkit_outbox_processor WHERE locked_by IS NOT NULL") == 0
    assert await count(conn, "modkit_outbox_processor WHERE attempts <> 0") == 0
