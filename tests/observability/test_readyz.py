"""`/readyz` is single-flight with a short cache: a burst of probes costs one database check, not
one pool connection each (observed: 200 concurrent probes took 101 connections). And it tells the
truth about a database that answers but cannot take writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from worker.config import Config, DatabaseConfig
from worker.observability.http import HealthServer
from worker.runtime import daemon as daemon_module
from worker.runtime.app import open_app
from worker.runtime.daemon import Daemon

PROBES = 200


@pytest.fixture
async def daemon(db: str) -> AsyncIterator[Daemon]:
    """A daemon whose loops do not run: only its readiness is under test."""
    config = Config(database=DatabaseConfig(dsn=db, pool_min_size=1, pool_max_size=50))
    async with open_app(config, environ={}) as app:
        yield Daemon(app)


@pytest.fixture
async def server(daemon: Daemon) -> AsyncIterator[HealthServer]:
    health = HealthServer(
        "127.0.0.1",
        0,
        registry=daemon.app.metrics.registry,
        heartbeat_age=daemon.app.metrics.heartbeat_age,
        max_heartbeat_age_seconds=60,
        readiness=daemon.ready,
    )
    await health.start()
    yield health
    await health.stop()


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body.strip()


def _requests(daemon: Daemon) -> int:
    """Connections asked of the pool so far (each probe check asks for one)."""
    return daemon.app.pool.get_stats().get("requests_num", 0)


async def _backends(db: str) -> int:
    """Server sessions open on the test's database, this one excluded."""
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_a_burst_of_probes_costs_one_check(
    db: str, daemon: Daemon, server: HealthServer
) -> None:
    await daemon.app.pool.wait()  # min_size connections open before counting
    before, sessions_before = _requests(daemon), await _backends(db)

    answers = await asyncio.gather(*(_get(server.port, "/readyz") for _ in range(PROBES)))

    assert answers == [(200, "ready")] * PROBES
    assert _requests(daemon) - before <= 2, daemon.app.pool.get_stats()
    assert await _backends(db) - sessions_before <= 1
    assert daemon.app.pool.get_stats()["pool_size"] <= 2


async def test_the_answer_is_reused_briefly_then_checked_again(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "READINESS_CACHE_SECONDS", 0.3)
    first = _requests(daemon)
    assert await daemon.ready() == (True, "ready")
    checked = _requests(daemon)
    assert checked - first == 1
    await asyncio.gather(*(daemon.ready() for _ in range(50)))
    assert _requests(daemon) == checked  # within the cache: no new check
    await asyncio.sleep(0.4)
    await asyncio.gather(*(daemon.ready() for _ in range(50)))
    assert _requests(daemon) == checked + 1  # expired: one new check for all fifty


async def test_a_probe_that_gives_up_does_not_cancel_the_others_check(daemon: Daemon) -> None:
    waiting = asyncio.ensure_future(daemon.ready())
    await asyncio.sleep(0)  # the shared check has started
    impatient = asyncio.ensure_future(daemon.ready())
    await asyncio.sleep(0)
    impatient.cancel()
    assert await waiting == (True, "ready")


async def test_read_only_database_is_not_ready(db: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    maintenance = psycopg.conninfo.make_conninfo(db, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as admin:
        await admin.execute(
            f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on'.encode()
        )

    # New sessions (a new pool) meet the setting, as clients reconnecting after a failover.
    config = Config(database=DatabaseConfig(dsn=db, pool_min_size=1, pool_max_size=2))
    async with open_app(config, environ={}) as app:
        ready, reason = await Daemon(app).ready()

    assert not ready
    assert "read-only" in reason
    assert reason.startswith("database unavailable")
