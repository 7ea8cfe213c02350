"""Per-message delivery counts (SPEC §13): lease churn never uses up a message's deliveries.

A lease that expires (a crash, a takeover) is the partition's business; a message's delivery
count only grows when an outcome of that message was persisted, or when handling it alone
killed the process (poison-pill isolation, see test_poison.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from psycopg_pool import AsyncConnectionPool
from structlog.testing import capture_logs

from worker.models import Message, Retry, RetryReason
from worker.observability.logging import merge_log_context
from worker.outbox import processor, retrier
from worker.outbox.capacity import Capacity
from worker.outbox.delivery import Runner
from worker.outbox.isolation import run_alone

from .helpers import (
    AQ,
    Recorder,
    count,
    dead_letters,
    drain,
    enqueue_many,
    expire_lease,
    make_engine,
    make_retries_due,
    processor_row,
    retry_rows,
)

CHURN = 7  # expired leases before a healthy replica gets the message (max_deliveries is 5)


def _transient(message: Message) -> Retry:
    return Retry(RetryReason.SERVER_ERROR, "503")


async def test_expired_partition_leases_do_not_use_up_a_messages_deliveries(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    engine = make_engine(pool, {AQ: (handler := Recorder(_transient))})
    await engine.sequence()
    for n in range(CHURN):  # replicas lease, read and die (or are frozen) before any outcome
        [lease] = await processor.lease_partitions(
            pool, AQ, worker_id=f"churn-{n}", lease_seconds=30, limit=1
        )
        assert len(await processor.read_batch(pool, lease, limit=100)) == 2
        await expire_lease(conn, AQ, 0)
    assert (await processor_row(conn, AQ, 0))["attempts"] == CHURN

    with capture_logs(processors=[merge_log_context]) as logs:
        report = await drain(engine, AQ)

    assert report.handled == 2
    assert [m.delivery for m in handler.seen] == [1, 1]
    assert await dead_letters(conn) == []  # a first transient error is retried, not fatal
    assert [r["deliveries"] for r in await retry_rows(conn)] == [1, 1]
    assert (await processor_row(conn, AQ, 0))["attempts"] == 0
    # Handled alone, and the log says why delivery 1 is not the first handling.
    assert [e["messages"] for e in logs if e["event"] == "handling_alone"] == [2]
    handled = [e for e in logs if e["event"] == "message_handled"]
    assert [(e["seq"], e["delivery"], e.get("redelivered")) for e in handled] == [
        (1, 1, True),
        (2, 1, True),
    ]


async def test_expired_retry_row_leases_do_not_use_up_a_messages_deliveries(pool, conn):
    await enqueue_many(conn, AQ, 0, range(1))
    engine = make_engine(pool, {AQ: (handler := Recorder(_transient))})
    await drain(engine, AQ)  # delivery 1 -> parked
    for n in range(CHURN):  # the parked message's row lease is taken and lost, no outcome
        await make_retries_due(conn)
        assert await retrier.lease_due_retries(
            pool, [AQ], worker_id=f"churn-{n}", lease_seconds=30, limit=10
        )
        await conn.execute("UPDATE cleanup_worker_retries SET locked_until = now() - interval '1s'")
    await make_retries_due(conn)

    report = await engine.process_retries(limit=10)

    assert report.handled == 1
    assert [m.delivery for m in handler.seen] == [1, 2]
    assert await dead_letters(conn) == []
    assert [r["deliveries"] for r in await retry_rows(conn)] == [2]


async def test_a_suspect_message_is_not_handled_while_its_start_cannot_be_recorded(pool, conn):
    """Handled unrecorded, a message that kills the process would never be caught: it is
    retried instead (reason database) and its handler is not called."""
    await enqueue_many(conn, AQ, 0, range(1))
    await make_engine(pool, {AQ: None}).sequence()
    [lease] = await processor.lease_partitions(pool, AQ, worker_id="W", lease_seconds=30, limit=1)
    [envelope] = await processor.read_batch(pool, lease, limit=10)
    handler = Recorder()
    runner = Runner({AQ: handler}, Capacity(4), budget_seconds=5.0)
    unreachable = "postgresql://nobody@/cw?host=/nonexistent/cleanup-worker-sock&port=5432"
    async with AsyncConnectionPool(
        unreachable, min_size=0, max_size=1, timeout=0.5, open=False
    ) as down:
        [handled] = await run_alone(
            runner,
            down,
            [replace(envelope, suspect=True)],
            asyncio.Event(),
            max_crashes=3,
            alone=asyncio.Lock(),
        )
    assert handler.seen == []
    assert isinstance(handled.outcome, Retry)
    assert handled.outcome.reason is RetryReason.DATABASE
    assert "database unavailable" in handled.outcome.detail


async def test_parked_message_that_killed_the_process_is_dead_lettered_its_neighbour_proceeds(
    pool, conn
):
    """The retry path isolates like the partition path: rows whose lease expired are handled
    alone, and one with max_handler_crashes recorded deaths is dead-lettered unhandled."""
    await enqueue_many(conn, AQ, 0, range(2))
    first = make_engine(pool, {AQ: Recorder(_transient)})
    await drain(first, AQ)  # both parked after delivery 1
    await make_retries_due(conn)
    await retrier.lease_due_retries(pool, [AQ], worker_id="died", lease_seconds=30, limit=10)
    await conn.execute("UPDATE cleanup_worker_retries SET locked_until = now() - interval '1s'")
    # Handled alone twice before, seq 1 never finished: it took the process down both times.
    await conn.execute(
        "INSERT INTO cleanup_worker_deliveries (partition_id, seq, started, finished)"
        " SELECT partition_id, seq, 2, CASE WHEN seq = 1 THEN 0 ELSE 2 END"
        " FROM cleanup_worker_retries"
    )
    engine = make_engine(pool, {AQ: (handler := Recorder())}, max_handler_crashes=2)

    report = await engine.process_retries(limit=10)

    assert report.handled == 2
    assert [(m.seq, m.delivery) for m in handler.seen] == [(2, 2)]  # never blamed
    [dead] = await dead_letters(conn)
    assert (dead["seq"], dead["attempts"]) == (1, 4)  # 2 deliveries + 2 deaths
    assert dead["last_error"] == (
        "handling it killed the worker process 2 times"
        " (outbox.max_handler_crashes = 2); not handled again"
    )
    assert await retry_rows(conn) == []
    assert await count(conn, "cleanup_worker_deliveries") == 0
