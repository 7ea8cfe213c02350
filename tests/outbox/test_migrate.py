"""`migrate` (§3): idempotent, safe when replicas start at once, accepts the original's DDL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from worker.config import QueueConfig
from worker.errors import PartitionCountMismatch
from worker.runtime.migrate import migrate, migration_files, pending_migrations

from .helpers import AQ, CQ, Recorder, count, drain, make_engine, rows

QUEUES = [QueueConfig(AQ), QueueConfig(CQ)]
ORIGINAL = Path(__file__).parents[1] / "fixtures" / "original_outbox.sql"
SCHEMA = [m.name for m in migration_files(with_app_schema=False)]


async def _connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def _queue_rows(conn) -> dict[str, int]:
    return {
        table: await count(conn, table)
        for table in (
            "modkit_outbox_partitions",
            "modkit_outbox_processor",
            "modkit_outbox_vacuum_counter",
            "cleanup_worker_migrations",
        )
    }


async def test_migrate_twice_applies_nothing_the_second_time(empty_db):
    async with await _connect(empty_db) as conn:
        assert await pending_migrations(conn) == SCHEMA
        first = await migrate(conn, queues=QUEUES)
        assert list(first.applied) == SCHEMA
        assert first.queues == (AQ, CQ)
        assert await pending_migrations(conn) == []
        before = await _queue_rows(conn)
        second = await migrate(conn, queues=QUEUES)
        assert second.applied == ()
        assert await _queue_rows(conn) == before
        assert before["modkit_outbox_partitions"] == 8
        # The app schema is applied only when asked for.
        assert await count(conn, "pg_tables WHERE tablename = 'attachments'") == 0
        third = await migrate(conn, queues=QUEUES, with_app_schema=True)
        assert third.applied == ("app/001_chat_service.sql",)
        assert await count(conn, "pg_tables WHERE tablename = 'attachments'") == 1


async def test_concurrent_migrations_all_succeed_with_one_set_of_rows(empty_db):
    connections = [await _connect(empty_db) for _ in range(5)]
    try:
        reports = await asyncio.gather(
            *(migrate(c, queues=QUEUES, with_app_schema=True) for c in connections)
        )
    finally:
        for c in connections:
            await c.close()
    applied = [r.applied for r in reports]
    assert sum(1 for a in applied if a) == 1  # exactly one replica did the work
    assert sorted(applied, key=len)[-1] == (*SCHEMA, "app/001_chat_service.sql")
    async with await _connect(empty_db) as conn:
        assert await _queue_rows(conn) == {
            "modkit_outbox_partitions": 8,
            "modkit_outbox_processor": 8,
            "modkit_outbox_vacuum_counter": 8,
            "cleanup_worker_migrations": 4,
        }


async def test_migrate_accepts_the_original_librarys_database(empty_db):
    async with await _connect(empty_db) as conn:
        await conn.execute(ORIGINAL.read_text().encode())
        report = await migrate(conn, queues=QUEUES, with_app_schema=True)
        assert list(report.applied)[: len(SCHEMA)] == SCHEMA
        partitions = await rows(
            conn, "SELECT queue, count(*) AS n FROM modkit_outbox_partitions GROUP BY queue"
        )
        assert {r["queue"]: r["n"] for r in partitions} == {AQ: 4, CQ: 4}
        assert await count(conn, "modkit_outbox_incoming") == 1

    async with AsyncConnectionPool(
        empty_db, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    ) as pool, await _connect(empty_db) as conn:  # fmt: skip
        handler = Recorder()
        engine = make_engine(pool, {AQ: handler, CQ: Recorder()})
        report = await drain(engine, AQ)
        assert report.handled == 1
        [message] = handler.seen
        assert (message.queue, message.partition, message.seq) == (AQ, 2, 1)
        assert message.payload == b'{"original": true}'
        assert message.payload_type == "application/json"
        assert await count(conn, "modkit_outbox_processor WHERE processed_seq = 1") == 1


async def test_migrate_refuses_a_different_partition_count_and_applies_nothing(empty_db):
    async with await _connect(empty_db) as conn:
        await conn.execute(ORIGINAL.read_text().encode())
        with pytest.raises(PartitionCountMismatch):
            await migrate(conn, queues=[QueueConfig(AQ, partitions=8), QueueConfig(CQ)])
        # One transaction: nothing of the failed run stayed.
        assert await count(conn, "pg_tables WHERE tablename LIKE 'cleanup_worker_%'") == 0
        assert await count(conn, "modkit_outbox_partitions") == 4
