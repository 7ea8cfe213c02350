"""Second OS processes for the multi-process tests: ``python _procs.py MODE DSN [args]``.

Both modes first register in ``proc_ready`` and wait until ``--peers`` processes have, so they
really run at the same time.

* ``sequence DSN --peers N``: run the sequencer in a loop until ``proc_stop`` has a row; print
  how many rows it moved.
* ``drain DSN --peers N --expected M``: run a full engine on both cleanup queues until M
  messages were handled and nothing is left; the handler logs enter/exit times per message in
  ``drain_log``.
* ``poison DSN --peers 1 --max-crashes N``: run an engine on the attachment queue until its
  partitions are processed; the handler SIGKILLs its own process on a payload with
  ``"poison": true`` and logs every other message it handled in ``poison_log``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time

from psycopg_pool import AsyncConnectionPool

from worker.db.pool import connection_kwargs
from worker.models import Message, Ok
from worker.outbox.delivery import RedeliveryPolicy
from worker.outbox.engine import Engine, EngineSettings
from worker.outbox.maintenance import sequence_queues

QUEUES = ["mini-chat.attachment_cleanup", "mini-chat.chat_cleanup"]
DEADLINE_SECONDS = 60.0


async def _one(pool: AsyncConnectionPool, query: str, params: tuple = ()) -> object:
    async with pool.connection() as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return row[0] if row else None


async def _barrier(pool: AsyncConnectionPool, peers: int) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO proc_ready (pid) VALUES (%s)", (os.getpid(),))
    deadline = time.monotonic() + DEADLINE_SECONDS
    while await _one(pool, "SELECT count(*) FROM proc_ready") < peers:
        if time.monotonic() > deadline:
            raise SystemExit("peers never showed up")
        await asyncio.sleep(0.01)


async def sequence(dsn: str, peers: int) -> None:
    moved = 0
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=2, kwargs=connection_kwargs(), open=False
    ) as pool:
        await _barrier(pool, peers)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not await _one(pool, "SELECT count(*) > 0 FROM proc_stop"):
            moved += await sequence_queues(pool, QUEUES)
            if time.monotonic() > deadline:
                raise SystemExit("never told to stop")
    print(moved)


async def drain(dsn: str, peers: int, expected: int, lease_seconds: float, batch: int) -> None:
    pid = os.getpid()
    rng = random.Random(pid)
    async with AsyncConnectionPool(
        dsn, min_size=2, max_size=12, kwargs=connection_kwargs(), open=False
    ) as pool:

        async def handler(message: Message) -> Ok:
            log_id = await _one(
                pool,
                "INSERT INTO drain_log (pid, queue, partition, seq, payload, entered)"
                " VALUES (%s, %s, %s, %s, %s, clock_timestamp()) RETURNING id",
                (pid, message.queue, message.partition, message.seq, message.payload),
            )
            await asyncio.sleep(rng.uniform(0.001, 0.01))
            await _one(
                pool,
                "UPDATE drain_log SET exited = clock_timestamp() WHERE id = %s RETURNING id",
                (log_id,),
            )
            return Ok()

        settings = EngineSettings(
            batch_size=batch,
            lease_seconds=lease_seconds,
            concurrency=8,
            retry=RedeliveryPolicy(base_seconds=1.0, max_seconds=2.0, max_deliveries=5),
            handler_budget_seconds=lease_seconds,
        )
        engine = Engine(pool, dict.fromkeys(QUEUES, handler), settings)
        await _barrier(pool, peers)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            await engine.sequence()
            for queue in QUEUES:
                await engine.process_partitions(queue, max_partitions=2)
            done = await _one(
                pool,
                "SELECT (SELECT count(*) FROM drain_log WHERE exited IS NOT NULL) >= %s"
                " AND NOT EXISTS (SELECT 1 FROM modkit_outbox_incoming)"
                " AND NOT EXISTS (SELECT 1 FROM modkit_outbox_processor pr"
                "   JOIN modkit_outbox_partitions p ON p.id = pr.partition_id"
                "   WHERE pr.processed_seq < p.sequence)",
                (expected,),
            )
            if done:
                return
            if time.monotonic() > deadline:
                raise SystemExit("did not drain in time")


async def poison(dsn: str, max_crashes: int) -> None:
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=6, kwargs={"autocommit": True}, open=False
    ) as pool:

        async def handler(message: Message) -> Ok:
            if json.loads(message.payload).get("poison"):
                os.kill(os.getpid(), signal.SIGKILL)  # a segfault, an OOM kill: no outcome
            await _one(
                pool,
                "INSERT INTO poison_log (pid, seq, delivery) VALUES (%s, %s, %s) RETURNING pid",
                (os.getpid(), message.seq, message.delivery),
            )
            return Ok()

        settings = EngineSettings(
            batch_size=100,
            lease_seconds=30.0,
            concurrency=8,
            retry=RedeliveryPolicy(base_seconds=1.0, max_seconds=2.0, max_deliveries=5),
            handler_budget_seconds=30.0,
            max_handler_crashes=max_crashes,
        )
        engine = Engine(pool, {QUEUES[0]: handler}, settings)
        await _barrier(pool, 1)
        await engine.sequence()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while await _one(
            pool,
            "SELECT EXISTS (SELECT 1 FROM modkit_outbox_processor pr"
            " JOIN modkit_outbox_partitions p ON p.id = pr.partition_id"
            " WHERE p.queue = %s AND pr.processed_seq < p.sequence)",
            (QUEUES[0],),
        ):
            await engine.process_partitions(QUEUES[0], max_partitions=4)
            if time.monotonic() > deadline:
                raise SystemExit("did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sequence", "drain", "poison"])
    parser.add_argument("dsn")
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--expected", type=int, default=0)
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--max-crashes", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "sequence":
        asyncio.run(sequence(args.dsn, args.peers))
    elif args.mode == "poison":
        asyncio.run(poison(args.dsn, args.max_crashes))
    else:
        asyncio.run(drain(args.dsn, args.peers, args.expected, args.lease_seconds, args.batch))


if __name__ == "__main__":
    sys.exit(main())
