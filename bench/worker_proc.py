"""A worker process of the harness: ``python -m bench.worker_proc MODE CONFIG [options]``.

Modes (the real product runs as ``python -m worker run`` instead):

``noop``      the product's daemon (lanes, sequencer, retrier, vacuum) with a handler that
              returns Ok at once: queue overhead only (B1, B7).
``original``  the original's processing model with the real handlers (B3), see ``original``.
``sql``       the engine's statements alone, one connection per loop, no handler, no
              per-message Python: what the database can do (B7).
``pgqueuer``  PGQueuer draining no-op jobs on the same database (B1).

Each prints ``ready`` once connected and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.original import OriginalModel
from worker.config import Config, load_config
from worker.db.queries import q
from worker.handlers.attachment import AttachmentCleanupHandler
from worker.handlers.chat import ChatCleanupHandler
from worker.handlers.files import CleanupContext
from worker.handlers.repository import CleanupRepository
from worker.models import Handler, Message, Ok, Outcome
from worker.observability.logging import configure_logging
from worker.outbox.engine import Engine, EngineSettings, new_worker_id
from worker.runtime.app import App, open_app
from worker.runtime.daemon import Daemon

LEASE_SECONDS = 30.0


async def noop_handler(message: Message) -> Outcome:
    return Ok()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _ready() -> None:
    print("ready", flush=True)


async def run_noop(config: Config) -> int:
    async with open_app(config, environ=dict(os.environ)) as app:
        handlers = dict.fromkeys(app.queues, noop_handler)
        settings = EngineSettings.from_config(config.outbox)
        engine = Engine(app.pool, handlers, settings, lease_pool=app.engine.lease_pool)
        return await Daemon(dataclasses.replace(app, engine=engine)).run()


def real_handlers(app: App) -> dict[str, Handler]:
    """The product's two handlers, built as ``open_app`` builds them."""
    config = app.config
    ctx = CleanupContext(
        CleanupRepository(app.pool), app.gateway, app.metrics,
        max_attempts=config.cleanup.max_attempts,
    )  # fmt: skip
    return {
        config.outbox.attachment_queue.name: AttachmentCleanupHandler(ctx),
        config.outbox.chat_queue.name: ChatCleanupHandler(
            ctx, file_concurrency=config.cleanup.file_concurrency
        ),
    }


async def run_original(config: Config) -> int:
    async with open_app(config, environ=dict(os.environ)) as app:
        model = OriginalModel(app.pool, real_handlers(app), worker_id=new_worker_id())
        stop = _stop_on_signals()
        await app.pool.wait()
        _ready()
        await model.run(stop)
    return 0


async def run_sql(config: Config, *, loops: int) -> int:
    """Lease, read and ack in ``loops`` concurrent loops over the attachment queue."""
    queue = config.outbox.attachment_queue.name
    worker_id = new_worker_id()
    stop = _stop_on_signals()
    async with AsyncConnectionPool(
        config.database.dsn, min_size=loops, max_size=loops, kwargs={"autocommit": True}
    ) as pool:
        _ready()

        async def loop() -> None:
            async with pool.connection() as conn:
                while not stop.is_set():
                    if not await _sql_round(conn, queue, worker_id, config.outbox.batch_size):
                        await asyncio.sleep(0.01)

        await asyncio.gather(*(loop() for _ in range(loops)))
    return 0


async def _sql_round(
    conn: psycopg.AsyncConnection[tuple[object, ...]], queue: str, worker_id: str, batch: int
) -> bool:
    lease_params = {"queue": queue, "worker_id": worker_id, "lease_seconds": LEASE_SECONDS,
                    "limit": 1}  # fmt: skip
    cur = await conn.execute(q("lease_partitions"), lease_params)
    lease = await cur.fetchone()
    if lease is None:
        return False
    partition_id, _, processed_seq, _, token = lease
    read = {"partition_id": partition_id, "after_seq": processed_seq, "limit": batch}
    cur = await conn.execute(q("read_batch"), read)
    rows = await cur.fetchall()
    guard = {"partition_id": partition_id, "token": token}
    if not rows:
        await conn.execute(q("release_lease"), guard)
        return False
    async with conn.transaction():
        await conn.execute(
            q("advance_cursor"), guard | {"last_seq": rows[-1][0], "read_seq": processed_seq}
        )
    return True


async def run_pgqueuer(config: Config, *, batch_size: int) -> int:
    from pgqueuer import PsycopgDriver, Queries, QueueManager
    from pgqueuer.models import Job

    stop = _stop_on_signals()
    conn = await psycopg.AsyncConnection.connect(config.database.dsn, autocommit=True)
    async with conn:
        manager = QueueManager(Queries(PsycopgDriver(conn)))

        @manager.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        async def stop_manager() -> None:
            await stop.wait()
            manager.shutdown.set()

        stopper = asyncio.create_task(stop_manager())
        _ready()
        await manager.run(batch_size=batch_size)
        stopper.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_proc")
    parser.add_argument("mode", choices=["noop", "original", "sql", "pgqueuer"])
    parser.add_argument("config", type=Path)
    parser.add_argument("--loops", type=int, default=4, help="sql: concurrent loops")
    parser.add_argument("--batch-size", type=int, default=10, help="pgqueuer: batch size")
    args = parser.parse_args(argv)
    config = load_config(args.config, environ=os.environ)
    obs = config.observability
    configure_logging(log_format=obs.log_format, level=obs.log_level)
    match args.mode:
        case "noop":
            return asyncio.run(run_noop(config))
        case "original":
            return asyncio.run(run_original(config))
        case "sql":
            return asyncio.run(run_sql(config, loops=args.loops))
        case _:
            return asyncio.run(run_pgqueuer(config, batch_size=args.batch_size))


if __name__ == "__main__":
    sys.exit(main())
