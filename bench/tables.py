"""TABLES: chat cleanups on a large chat-service ``attachments`` table vs on an empty one.

Issue 16: the chat service creates its tables with its own DDL, which lacks the indexes the
worker's statements need, so on a large table every chat cleanup scanned ``attachments``.
The same 50 chat cleanups are drained three times, each on a fresh database: with an empty
table; with the filler rows and only the chat service's own indexes ("before"); and with the
filler rows after ``migrate`` built the worker's indexes CONCURRENTLY ("after"). The figure is
after / empty (goal <= 2x). The reads of ``status`` and of the backlog gauges are timed on the
filled table too. The filler's size depends on the scale (2M rows at ``full``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg

from bench import seed, sql
from bench.probes import Database
from bench.results import Measurement, Target
from bench.runs import Plan, Provider, RunResult, drain
from bench.sandbox import BenchEnv, WorkerSettings
from worker.config import Config
from worker.runtime.migrate import app_indexes, migrate
from worker.runtime.status import read_status

BENCH = "TABLES"
CHATS = 50
TABLE_ROWS = {"toy": 20_000, "small": 200_000, "full": 2_000_000}
# Concurrency 64 and no provider rate limit: the run is bound by the database, not the budget.
SETTINGS = WorkerSettings(concurrency=64, provider_max_concurrency=64, provider_max_rps=100_000.0)
QUEUES = [Config().outbox.attachment_queue, Config().outbox.chat_queue]


@dataclass
class _Filler:
    """Fills a fresh database's chat-service tables as the chat service's DDL has them (the
    worker's indexes dropped), then, with ``build``, runs ``migrate`` as a deployment would."""

    rows: int
    build: bool
    build_seconds: float = 0.0
    status_ms: float = 0.0
    gauge_ms: float = 0.0

    async def __call__(self, dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for index in app_indexes():
                await conn.execute(f"DROP INDEX IF EXISTS {index.name}".encode())
            async with conn.transaction():
                await conn.execute(sql.q("fill_chats"), {"chats": self.rows // 10})
                await conn.execute(sql.q("fill_attachments"), {"n": self.rows})
            if self.build:
                started = time.monotonic()
                await migrate(conn, queues=QUEUES)
                self.build_seconds = time.monotonic() - started
            await conn.execute(b"ANALYZE chats")
            await conn.execute(b"ANALYZE attachments")
            self.status_ms = await _timed_ms(conn, all_attachments=True)
            self.gauge_ms = await _timed_ms(conn, all_attachments=False)


async def _timed_ms(conn: psycopg.AsyncConnection, *, all_attachments: bool) -> float:
    """One read of ``status`` (all_attachments) or of the gauges, after a warm-up read."""
    queues = [q.name for q in QUEUES]
    kwargs = {"all_attachments": all_attachments, "with_indexes": all_attachments}
    await read_status(conn, queues, **kwargs)
    started = time.monotonic()
    await read_status(conn, queues, **kwargs)
    return (time.monotonic() - started) * 1000


@dataclass
class _Clock:
    """Seeds the chats and times them from the seed's commit until the last one is clean."""

    chats: int
    per_chat: int
    seeded: float = 0.0
    finished: float = 0.0

    async def seed(self, db: Database) -> None:
        await seed.seed_chats(db.conn, self.chats, attachments_per_chat=self.per_chat)
        self.seeded = time.monotonic()

    async def done(self, db: Database) -> int:
        done = self.chats - await db.scalar("vector_stores_left")
        if done >= self.chats and not self.finished:
            self.finished = time.monotonic()
        return done

    @property
    def seconds(self) -> float:
        return self.finished - self.seeded


async def _cleanups(
    env: BenchEnv, per_chat: int, prepare: Callable[[str], Awaitable[None]] | None
) -> tuple[float, RunResult]:
    clock = _Clock(CHATS, per_chat)
    plan = Plan("real", clock.seed, CHATS, SETTINGS, provider=Provider(), prepare=prepare,
                counter=clock.done)  # fmt: skip
    run = await drain(env, plan)
    return clock.seconds, run


def _state(run: RunResult) -> str:
    """'clean', or 'PROBLEM ...' (the filler's rows are not the run's: only its own debt)."""
    keys = ("vector_stores_left", "dead_letters", "retries")
    bad = {k: run.outcome.get(k, 0) for k in keys if run.outcome.get(k, 0)}
    return "PROBLEM " + ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else "clean"


async def tables_at_scale(env: BenchEnv, scale_name: str, per_chat: int) -> list[Measurement]:
    rows = TABLE_ROWS.get(scale_name, TABLE_ROWS["small"])
    size = f"{rows:,}-row attachments"
    what = f"{CHATS} chat cleanups ({per_chat} files + store)"
    empty, empty_run = await _cleanups(env, per_chat, None)
    before_fill, after_fill = _Filler(rows, build=False), _Filler(rows, build=True)
    before, before_run = await _cleanups(env, per_chat, before_fill)
    after, after_run = await _cleanups(env, per_chat, after_fill)
    return [
        Measurement(BENCH, f"{what}, empty attachments table", empty, "s",
                    detail=_state(empty_run)),
        Measurement(BENCH, f"{what}, {size}, chat service's DDL only", before, "s",
                    detail=_state(before_run)),
        Measurement(BENCH, f"{what}, {size}, after migrate", after, "s",
                    detail=f"migrate built the indexes CONCURRENTLY in "
                           f"{after_fill.build_seconds:.2f}s; {_state(after_run)}"),
        Measurement(BENCH, f"{size} after migrate / empty", after / empty, "ratio",
                    Target("<=", 2.0)),
        Measurement(BENCH, f"{size}, chat service's DDL only / empty", before / empty, "ratio"),
        Measurement(BENCH, f"status read, {size}, after migrate", after_fill.status_ms, "ms",
                    detail=f"chat service's DDL only: {before_fill.status_ms:.0f} ms"),
        Measurement(BENCH, f"backlog gauge read, {size}, after migrate", after_fill.gauge_ms,
                    "ms", detail=f"chat service's DDL only: {before_fill.gauge_ms:.0f} ms"),
    ]  # fmt: skip
