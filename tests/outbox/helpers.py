"""Shared helpers of the engine tests: settings, recording handlers, row readers."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg.rows import dict_row

from worker.db import Conn
from worker.models import Message, Ok, Outcome
from worker.outbox.delivery import RedeliveryPolicy
from worker.outbox.engine import Engine, EngineSettings, RoundReport
from worker.outbox.enqueue import enqueue

AQ = "mini-chat.attachment_cleanup"
CQ = "mini-chat.chat_cleanup"


def settings(**overrides: Any) -> EngineSettings:
    """Short leases and small delays, so the suite stays fast."""
    base = EngineSettings(
        batch_size=100,
        lease_seconds=5.0,
        concurrency=16,
        retry=RedeliveryPolicy(base_seconds=1.0, max_seconds=8.0, max_deliveries=5),
        handler_budget_seconds=5.0,
    )
    return replace(base, **overrides)


def payload(n: int, **extra: Any) -> bytes:
    return json.dumps({"n": n, **extra}).encode()


def number(message: Message) -> int:
    return int(json.loads(message.payload)["n"])


@dataclass
class Recorder:
    """A handler that remembers every delivery and answers with ``decide`` (Ok by default)."""

    decide: Callable[[Message], Outcome | Awaitable[Outcome]] | None = None
    seen: list[Message] = field(default_factory=list)

    async def __call__(self, message: Message) -> Outcome:
        self.seen.append(message)
        if self.decide is None:
            return Ok()
        outcome = self.decide(message)
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        return outcome  # type: ignore[return-value]

    def seqs(self, partition: int | None = None) -> list[int]:
        return sorted(m.seq for m in self.seen if partition is None or m.partition == partition)

    def numbers(self) -> list[int]:
        return sorted(number(m) for m in self.seen)


def make_engine(pool: Any, handlers: dict[str, Any], seed: int = 7, **overrides: Any) -> Engine:
    return Engine(pool, handlers, settings(**overrides), rng=random.Random(seed))


async def enqueue_many(
    conn: Conn, queue: str, partition: int, numbers: range | list[int]
) -> list[int]:
    return [await enqueue(conn, queue, partition, payload(n)) for n in numbers]


async def drain(engine: Engine, queue: str, *, rounds: int = 50) -> RoundReport:
    """Sequence, then process rounds until a round handles nothing."""
    await engine.sequence()
    total = RoundReport()
    for _ in range(rounds):
        report = await engine.process_partitions(queue, max_partitions=64)
        total.merge(report)
        if report.handled == 0 and report.leases_lost == 0:
            return total
    raise AssertionError(f"queue {queue} not drained after {rounds} rounds")


async def rows(conn: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def scalar(conn: Conn, query: str, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def partition_id(conn: Conn, queue: str, partition: int) -> int:
    return int(
        await scalar(
            conn,
            "SELECT id FROM modkit_outbox_partitions WHERE queue = %s AND partition = %s",
            (queue, partition),
        )
    )


async def processor_row(conn: Conn, queue: str, partition: int) -> dict[str, Any]:
    found = await rows(
        conn,
        "SELECT pr.*, pr.locked_until > now() AS lease_live FROM modkit_outbox_processor pr"
        " JOIN modkit_outbox_partitions p ON p.id = pr.partition_id"
        " WHERE p.queue = %s AND p.partition = %s",
        (queue, partition),
    )
    assert len(found) == 1
    return found[0]


async def dead_letters(conn: Conn) -> list[dict[str, Any]]:
    return await rows(
        conn,
        "SELECT d.*, p.queue, p.partition FROM modkit_outbox_dead_letters d"
        " JOIN modkit_outbox_partitions p ON p.id = d.partition_id ORDER BY d.id",
    )


async def retry_rows(conn: Conn) -> list[dict[str, Any]]:
    return await rows(
        conn,
        "SELECT r.*, p.queue, p.partition,"
        " extract(epoch FROM r.not_before - clock_timestamp())::float8 AS due_in"
        " FROM cleanup_worker_retries r"
        " JOIN modkit_outbox_partitions p ON p.id = r.partition_id ORDER BY r.partition_id, r.seq",
    )


async def make_retries_due(conn: Conn) -> None:
    await conn.execute(
        "UPDATE cleanup_worker_retries SET not_before = now() - interval '1 millisecond'"
    )


async def count(conn: Conn, table: str) -> int:
    return int(await scalar(conn, f"SELECT count(*) FROM {table}"))  # test-only table names


async def expire_lease(conn: Conn, queue: str, partition: int) -> None:
    await conn.execute(
        "UPDATE modkit_outbox_processor SET locked_until = now() - interval '1 second'"
        " WHERE partition_id = (SELECT id FROM modkit_outbox_partitions"
        " WHERE queue = %s AND partition = %s)",
        (queue, partition),
    )


async def finish(process: asyncio.subprocess.Process, within: float = 60.0) -> str:
    """Wait for a spawned process; fail with its stderr unless it exited 0. Returns stdout."""
    stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return stdout.decode()
