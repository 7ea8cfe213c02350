"""Backlogs of tens of thousands of messages, written set-based in one transaction each.

Messages land in ``incoming`` exactly as the chat service's producer leaves them (same payloads,
same partitioning), so a drain includes the sequencer, as in production.
"""

from __future__ import annotations

import uuid

import psycopg

from bench import sql
from bench.sandbox import ATTACHMENT_QUEUE, CHAT_QUEUE, PARTITIONS
from worker.db.queries import q
from worker.outbox.maintenance import SEQUENCE_CHUNK
from worker.outbox.queues import partition_ids

Conn = psycopg.AsyncConnection[tuple[object, ...]]


def balanced_tenants(count: int, partitions: int = PARTITIONS) -> list[uuid.UUID]:
    """``count`` tenant ids, the same number in every partition (uuid int mod partitions)."""
    per_partition = max(1, count // partitions)
    buckets: dict[int, list[uuid.UUID]] = {p: [] for p in range(partitions)}
    while any(len(b) < per_partition for b in buckets.values()):
        tenant = uuid.uuid4()
        bucket = buckets[tenant.int % partitions]
        if len(bucket) < per_partition:
            bucket.append(tenant)
    return [t for b in buckets.values() for t in b]


async def seed_noop(
    conn: Conn, n: int, queue: str = ATTACHMENT_QUEUE, *, sequenced: bool = False
) -> None:
    """``n`` tiny messages; ``sequenced``: already moved to outgoing (by the product's own
    sequencer statement, in the same transaction), for runs that leave the sequencer out."""
    async with conn.transaction():
        await conn.execute(
            sql.q("seed_noop_messages"), {"n": n, "queue": queue, "partitions": PARTITIONS}
        )
        if sequenced:
            for partition_id in await partition_ids(conn, queue):
                while True:
                    cur = await conn.execute(
                        q("sequence_partition"),
                        {"partition_id": partition_id, "limit": SEQUENCE_CHUNK},
                    )
                    row = await cur.fetchone()
                    if row is None or int(row[0]) < SEQUENCE_CHUNK:  # type: ignore[call-overload]
                        break


async def seed_attachments(
    conn: Conn, n: int, *, tenants: int = 64, with_files: bool = True
) -> None:
    """``n`` soft-deleted attachments of live chats and their ``attachment_deleted`` messages;
    ``with_files=False``: attachments that never got a provider file (DB-only cleanups)."""
    ids = balanced_tenants(tenants)
    async with conn.transaction():
        await conn.execute(sql.q("seed_live_chats"), {"tenants": ids})
        await conn.execute(
            sql.q("seed_attachment_messages"),
            {"n": n, "tenants": ids, "queue": ATTACHMENT_QUEUE, "partitions": PARTITIONS,
             "with_files": with_files},
        )  # fmt: skip


async def seed_chats(conn: Conn, n: int, *, attachments_per_chat: int) -> None:
    """``n`` soft-deleted chats with pending attachments and a vector store each."""
    async with conn.transaction():
        await conn.execute(
            sql.q("seed_chat_messages"),
            {"n": n, "per_chat": attachments_per_chat, "queue": CHAT_QUEUE,
             "partitions": PARTITIONS},
        )  # fmt: skip
