"""Queue names, partitions and registration (the original library's rules)."""

from __future__ import annotations

import re
from uuid import UUID

from worker.db import Conn
from worker.db.queries import q
from worker.errors import InvalidQueueName, PartitionCountMismatch, QueueNotRegistered

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,1022}[A-Za-z0-9])?$")


def validate_queue_name(name: str) -> str:
    if not _QUEUE_NAME.match(name):
        raise InvalidQueueName(
            f"invalid queue name {name[:80]!r}: use 1-1024 of [A-Za-z0-9._-], "
            "starting and ending with a letter or digit"
        )
    return name


def validate_partition_count(partitions: int) -> int:
    if partitions < 1 or partitions > 64 or partitions & (partitions - 1):
        raise ValueError(f"partition count must be a power of two in 1..64, got {partitions}")
    return partitions


def partition_for(key: UUID, partitions: int) -> int:
    """The original producer's partitioning: the UUID as a 128-bit integer modulo the count."""
    return key.int % partitions


async def register_queue(conn: Conn, queue: str, partitions: int) -> None:
    """Create the partition, processor and vacuum-counter rows of a queue (idempotent)."""
    validate_queue_name(queue)
    validate_partition_count(partitions)
    existing = await partition_ids(conn, queue)
    if existing and len(existing) != partitions:
        raise PartitionCountMismatch(
            f"queue {queue!r} is registered with {len(existing)} partitions, config says "
            f"{partitions}: set the queue's partitions to {len(existing)} (changing the count "
            "would re-route messages of a tenant or chat to another partition)"
        )
    params = {"queue": queue, "partitions": partitions}
    await conn.execute(q("insert_partitions"), params)
    await conn.execute(q("insert_processors"), params)
    await conn.execute(q("insert_vacuum_counters"), params)


async def partition_ids(conn: Conn, queue: str) -> list[int]:
    """Partition row ids of a queue, indexed by partition number."""
    cur = await conn.execute(q("queue_partitions"), {"queue": queue})
    return [row[0] for row in await cur.fetchall()]


async def require_partition_ids(conn: Conn, queue: str) -> list[int]:
    ids = await partition_ids(conn, queue)
    if not ids:
        raise QueueNotRegistered(f"queue {queue!r} is not registered: run `cleanup-worker migrate`")
    return ids
