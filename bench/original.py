"""The original's processing model (modkit-db leased processor, upstream §1.6-1.8), simulated.

One long-lived processor per (queue, partition); a global semaphore lets 4 of them work at once
(``processors(4)``); each leases its partition, reads a batch of 10 and handles the messages
**one after another**; the first Retry stops the batch and everything after it waits (head-of-
line blocking); then it acks the processed prefix under the lease.

It runs on the same tables, with the same handlers, provider and database as this worker, so
the comparison isolates the processing model. It is generous to the original: no pacing sleeps
between batches (the original's min_interval is 100 ms) and the sequencer polls every 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from bench import sql
from worker.db.queries import q
from worker.models import Handler, Message, Retry
from worker.outbox.maintenance import sequence_queues
from worker.outbox.queues import partition_ids

PROCESSORS = 4
BATCH_SIZE = 10
LEASE_SECONDS = 30.0
IDLE_SECONDS = 0.1
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0


@dataclass(frozen=True)
class Partition:
    queue: str
    index: int
    partition_id: int


class OriginalModel:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        handlers: Mapping[str, Handler],
        *,
        worker_id: str,
        processors: int = PROCESSORS,
        batch_size: int = BATCH_SIZE,
    ):
        self._pool = pool
        self._handlers = handlers
        self._worker_id = worker_id
        self._slots = asyncio.Semaphore(processors)
        self._batch_size = batch_size

    async def run(self, stop: asyncio.Event) -> None:
        partitions = await self._partitions()
        loops = [self._processor(p, stop) for p in partitions]
        await asyncio.gather(self._sequencer(stop), *loops)

    async def _partitions(self) -> list[Partition]:
        found: list[Partition] = []
        async with self._pool.connection() as conn:
            for queue in self._handlers:
                ids = await partition_ids(conn, queue)
                found += [Partition(queue, index, pid) for index, pid in enumerate(ids)]
        return found

    async def _sequencer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await sequence_queues(self._pool, list(self._handlers)):
                await _sleep(stop, IDLE_SECONDS)

    async def _processor(self, partition: Partition, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            async with self._slots:
                result = await self._one_batch(partition)
            if result == "retry":
                failures += 1
                backoff = RETRY_BASE_SECONDS * 2 ** (failures - 1)
                await _sleep(stop, min(RETRY_MAX_SECONDS, backoff))
                continue
            failures = 0
            if result == "idle":
                await _sleep(stop, IDLE_SECONDS)

    async def _one_batch(self, partition: Partition) -> str:
        guard: dict[str, object] = {
            "partition_id": partition.partition_id,
            "worker_id": self._worker_id,
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                sql.q("original_lease"), guard | {"lease_seconds": LEASE_SECONDS}
            )
            lease = await cur.fetchone()
            if lease is None:
                return "idle"  # another process holds it
            processed_seq, attempts = lease
            guard["attempts"] = attempts  # the ack guard: this acquisition of the lease
            cur = await conn.execute(
                q("read_batch"),
                {"partition_id": partition.partition_id, "after_seq": processed_seq,
                 "limit": self._batch_size},
            )  # fmt: skip
            rows = await cur.fetchall()
            if not rows:
                await conn.execute(sql.q("original_release"), guard)
                return "idle"
        handler = self._handlers[partition.queue]
        last_done: int | None = None
        stopped_by_retry = False
        for seq, payload, payload_type, created_at, _ in rows:
            message = Message(partition.queue, partition.index, seq, bytes(payload), payload_type,
                              created_at, delivery=attempts)  # fmt: skip
            outcome = await handler(message)
            if isinstance(outcome, Retry):
                stopped_by_retry = True  # head-of-line: the rest of the batch waits
                break
            last_done = seq  # Ok, or Reject (dead-lettered, counts as processed)
        async with self._pool.connection() as conn, conn.transaction():
            if last_done is None:
                await conn.execute(sql.q("original_release"), guard)
            else:
                # Our ack statement: the original's lease has no token, its locked_by is one.
                ack = {"token": self._worker_id, "read_seq": processed_seq, "last_seq": last_done}
                await conn.execute(q("advance_cursor"), guard | ack)
        return "retry" if stopped_by_retry else "busy"


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
