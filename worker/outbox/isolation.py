"""Poison-pill isolation (SPEC §13): a message that kills its handler's process is found and
dead-lettered while its neighbours proceed.

A batch whose previous lease ended without an ack (the holder crashed, or lost the lease) is
*suspect*: one of its messages may have killed the process. Its messages are handled one at a
time, each recorded as started (committed) before its handler runs and as finished after it
returned. A message that started more often than it finished took the process down while it
was the only one running; after ``max_crashes`` such deaths it is dead-lettered unhandled.

Cost: nothing on a batch whose previous lease ended cleanly (the hot path); two statements
per message of a suspect batch, which exists only after a crash or a lost lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace

import structlog

from worker.db import AsyncConnectionPool, Database
from worker.db.queries import q
from worker.errors import DatabaseUnavailable
from worker.models import Reject, Retry, RetryReason
from worker.outbox.delivery import Envelope, Handled, Runner

log = structlog.get_logger("worker.outbox")


async def run_alone(
    runner: Runner,
    pool: AsyncConnectionPool,
    envelopes: Sequence[Envelope],
    abort: asyncio.Event,
    *,
    max_crashes: int,
    alone: asyncio.Lock,
) -> list[Handled]:
    """Handle suspect envelopes one at a time, refusing those that killed the process before.

    ``alone`` is the process's one lock for suspect handling, shared by all its lanes: two
    suspect messages of different partitions running at once would both be charged with a
    death only one of them caused (a healthy message dead-lettered as a poison pill)."""
    if envelopes:
        log.warning("handling_alone", messages=len(envelopes), reason="previous lease not acked")
    results = []
    for envelope in envelopes:
        async with alone:
            if abort.is_set():
                interrupted = Retry(RetryReason.INTERRUPTED, "worker shutting down")
                results.append(Handled(envelope, interrupted, 0.0))
                continue
            results.append(await _run_one_alone(runner, pool, envelope, abort, max_crashes))
    return results


async def _run_one_alone(
    runner: Runner,
    pool: AsyncConnectionPool,
    envelope: Envelope,
    abort: asyncio.Event,
    max_crashes: int,
) -> Handled:
    try:
        crashes = await _started(pool, envelope)
    except DatabaseUnavailable as exc:  # unrecorded, it must not run: a crash would go unseen
        return Handled(envelope, Retry(RetryReason.DATABASE, str(exc)), 0.0)
    message = replace(envelope.message, delivery=envelope.message.delivery + crashes)
    envelope = replace(envelope, message=message)
    if crashes >= max_crashes:
        log.error("poison_message", queue=message.queue, partition=message.partition,
                  seq=message.seq, crashes=crashes)  # fmt: skip
        reason = (
            f"handling it killed the worker process {crashes} times"
            f" (outbox.max_handler_crashes = {max_crashes}); not handled again"
        )
        return Handled(envelope, Reject(reason), 0.0)
    [handled] = await runner.run_all([envelope], abort)
    # Unrecorded, it counts as one crash too many at worst; the ack tells whether any of it stuck.
    with contextlib.suppress(DatabaseUnavailable):
        await _finished(pool, envelope)
    return handled


async def _started(pool: AsyncConnectionPool, envelope: Envelope) -> int:
    """Record that handling starts; how often it started before without finishing."""
    params = {"partition_id": envelope.partition_id, "seq": envelope.message.seq}
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("delivery_started"), params)
        row = await cur.fetchone()
    assert row is not None  # an upsert ... RETURNING of one row
    return int(row[0])


async def _finished(pool: AsyncConnectionPool, envelope: Envelope) -> None:
    params = {"partition_id": envelope.partition_id, "seq": envelope.message.seq}
    async with Database(pool).connection() as conn:
        await conn.execute(q("delivery_finished"), params)
