"""Parked messages (SPEC §4.5): lease due retry rows one by one, handle them like first deliveries.

Rows are leased per row with FOR UPDATE SKIP LOCKED, so replicas share them and a slow or broken
tenant holds only its own rows, never a partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.db import AsyncConnectionPool, Database
from worker.db.queries import q
from worker.models import Message
from worker.outbox.delivery import Envelope, Settled, outcome_params


async def lease_due_retries(
    pool: AsyncConnectionPool,
    queues: Sequence[str],
    *,
    worker_id: str,
    lease_seconds: float,
    limit: int,
) -> list[Envelope]:
    params = {
        "queues": list(queues),
        "worker_id": worker_id,
        "lease_seconds": lease_seconds,
        "limit": limit,
    }
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("lease_due_retries"), params)
        rows = await cur.fetchall()
    return [
        Envelope(
            Message(queue, partition, seq, bytes(payload), payload_type, created_at, deliveries),
            partition_id=partition_id,
            dead_letter_id=dead_letter_id,
            retry_id=retry_id,
            retry_token=token,
            suspect=suspect,
        )
        for (
            retry_id,
            token,
            suspect,
            queue,
            partition,
            partition_id,
            seq,
            payload,
            payload_type,
            created_at,
            deliveries,
            dead_letter_id,
        ) in rows
    ]


async def next_retry_due(pool: AsyncConnectionPool, queues: Sequence[str]) -> float | None:
    """Seconds until the earliest parked message of ``queues`` is due; None when none is."""
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("next_retry_due"), {"queues": list(queues)})
        row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _held(envelopes: Sequence[Envelope]) -> dict[str, list[Any]]:
    """The (row id, fencing token) pairs of these leased retry rows, as statement arrays."""
    return {
        "ids": [e.retry_id for e in envelopes],
        "tokens": [e.retry_token for e in envelopes],
    }


async def extend_retry_leases(
    pool: AsyncConnectionPool, envelopes: Sequence[Envelope], *, lease_seconds: float
) -> set[int]:
    """Heartbeat leased retry rows; returns the ids these acquisitions still hold."""
    params = {**_held(envelopes), "lease_seconds": lease_seconds}
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("extend_retry_leases"), params)
        return {row[0] for row in await cur.fetchall()}


async def ack_retries(pool: AsyncConnectionPool, settled: Sequence[Settled]) -> set[int | None]:
    """Persist outcomes of the rows these acquisitions still hold; returns their retry ids.

    Rows whose lease was lost are left alone: their new holder finishes them. The fencing token
    makes that hold even when this process has leased the same row again since.
    """
    held_rows = _held([s.handled.envelope for s in settled])
    async with Database(pool).transaction() as conn:
        cur = await conn.execute(q("lock_own_retries"), held_rows)
        held: set[int | None] = {row[0] for row in await cur.fetchall()}
        mine = [s for s in settled if s.handled.envelope.retry_id in held]
        if mine:
            await conn.execute(q("record_outcomes"), outcome_params(mine))
    return held
