"""Sequencer and vacuum: the outbox's housekeeping (SPEC §4.2, §4.7)."""

from __future__ import annotations

from collections.abc import Sequence

from worker.db import AsyncConnectionPool, Conn, Database
from worker.db.queries import q

SEQUENCE_CHUNK = 1000
VACUUM_CHUNK = 5000


async def sequence_queues(pool: AsyncConnectionPool, queues: Sequence[str]) -> int:
    """Sequence every partition of ``queues`` that has incoming rows; returns rows moved."""
    moved = 0
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("partitions_with_incoming"), {"queues": list(queues)})
        partition_ids = [row[0] for row in await cur.fetchall()]
        for partition_id in partition_ids:
            moved += await _in_chunks(conn, "sequence_partition", partition_id, SEQUENCE_CHUNK)
    return moved


async def _in_chunks(conn: Conn, query: str, partition_id: int, chunk: int) -> int:
    """Run a chunked statement on one partition until a chunk comes back short; the total."""
    total = 0
    while True:
        cur = await conn.execute(q(query), {"partition_id": partition_id, "limit": chunk})
        row = await cur.fetchone()
        done = int(row[0]) if row else 0
        total += done
        if done < chunk:
            return total


async def vacuum(pool: AsyncConnectionPool, *, chunk: int = VACUUM_CHUNK) -> int:
    """Delete processed outgoing rows and their bodies in bounded chunks; returns rows deleted."""
    deleted = 0
    async with Database(pool).connection() as conn:
        cur = await conn.execute(q("vacuum_candidates"))
        candidates = await cur.fetchall()
        for partition_id, seen in candidates:
            deleted += await _in_chunks(conn, "vacuum_chunk", partition_id, chunk)
            await conn.execute(q("vacuum_settle"), {"partition_id": partition_id, "seen": seen})
    return deleted
