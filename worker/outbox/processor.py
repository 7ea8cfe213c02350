"""Partition processing (SPEC §4.3-4.5): lease, read a batch, handle it, ack under the lease.

One ack transaction per batch: advance the cursor past the whole batch (guarded by the lease's
fencing token and the cursor position the lease read), then persist dead letters and parked
retries. A retried message never holds its partition back; it waits in the retry table instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from worker.db import AsyncConnectionPool, Database
from worker.db.queries import q
from worker.models import Message, Ok
from worker.outbox.delivery import Envelope, Settled, outcome_params

Extend = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class PartitionLease:
    queue: str
    partition_id: int
    partition: int
    processed_seq: int  # the cursor this acquisition read; its ack moves it from here only
    attempts: int  # raised by every lease: >1 means an earlier holder crashed or lost it
    token: str  # locked_by of this acquisition: worker id + a UUID per acquisition (fencing)


async def lease_partitions(
    pool: AsyncConnectionPool, queue: str, *, worker_id: str, lease_seconds: float, limit: int
) -> list[PartitionLease]:
    params = {
        "queue": queue,
        "worker_id": worker_id,
        "lease_seconds": lease_seconds,
        "limit": limit,
    }
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("lease_partitions"), params)
        rows = await cur.fetchall()
    return [PartitionLease(queue, *row) for row in rows]


async def read_batch(
    pool: AsyncConnectionPool, lease: PartitionLease, *, limit: int
) -> list[Envelope]:
    params = {"partition_id": lease.partition_id, "after_seq": lease.processed_seq, "limit": limit}
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("read_batch"), params)
        rows = await cur.fetchall()
    return [
        Envelope(
            Message(
                lease.queue,
                lease.partition,
                seq,
                bytes(payload),
                payload_type,
                created_at,
                delivery=1,  # + the crashes it caused, if suspect (isolation.py)
            ),
            partition_id=lease.partition_id,
            dead_letter_id=dead_letter_id,
            suspect=lease.attempts > 1,  # the previous acquisition ended without an ack
        )
        for seq, payload, payload_type, created_at, dead_letter_id in rows
    ]


async def extend_lease(
    pool: AsyncConnectionPool, lease: PartitionLease, *, lease_seconds: float
) -> bool:
    """Heartbeat one lease; False once this acquisition no longer holds the partition."""
    params = {**_guard(lease), "lease_seconds": lease_seconds}
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("extend_lease"), params)
        return await cur.fetchone() is not None


def _guard(lease: PartitionLease) -> dict[str, object]:
    """What identifies one acquisition of a lease: its partition and fencing token."""
    return {"partition_id": lease.partition_id, "token": lease.token}


async def release_lease(pool: AsyncConnectionPool, lease: PartitionLease) -> None:
    async with Database(pool).connection() as conn:
        await conn.execute(q("release_lease"), _guard(lease))


async def ack_batch(
    pool: AsyncConnectionPool, lease: PartitionLease, settled: Sequence[Settled]
) -> bool:
    """Advance past the batch and persist its outcomes; False if the lease was lost.

    The cursor moves only from the position this lease read (compare-and-set, not GREATEST):
    if anything else moved it, the batch's outcomes describe rows someone else has settled, and
    writing them (dead letters, retries) would duplicate or contradict that work.
    """
    last_seq = max(s.handled.envelope.message.seq for s in settled)
    worth_writing = [
        s for s in settled if not isinstance(s.verdict, Ok) or s.handled.envelope.dead_letter_id
    ]
    guard = {**_guard(lease), "last_seq": last_seq, "read_seq": lease.processed_seq}
    async with Database(pool).connection() as conn:
        if not worth_writing:
            # The usual case: one statement, atomic by itself; BEGIN and COMMIT would
            # double the ack's round trips for nothing.
            cur = await conn.execute(q("advance_cursor"), guard)
            row = await cur.fetchone()
            return bool(row and row[0])
        async with conn.transaction():
            cur = await conn.execute(q("advance_cursor"), guard)
            row = await cur.fetchone()
            if not row or row[0] == 0:
                return False  # lost: nothing written; the batch is delivered again
            await conn.execute(q("record_outcomes"), outcome_params(worth_writing))
    return True
