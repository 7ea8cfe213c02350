"""Outages told truthfully (SPEC §9, §11, §13): while the database is stopped or has failed over to
a read-only node, the daemon keeps running, ``database_up`` reads 0, ``/readyz`` is 503 and the
log names the cause; nothing says "recovered" until a statement succeeded; afterwards the gauge is
1 again and every message is handled, nothing lost."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dsn import scalar
from pgbouncer import via_pgbouncer

from cli.support import (
    API_KEY,
    DSN_PASSWORD,
    DaemonProcess,
    ahttp_get,
    assert_secret_free,
    base_env,
    cursors_at_end,
    delete_single,
    free_port,
    make_config,
    truth,
    wait_for,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI
from cwlab.postgres import PostgresServer, start_postgres
from worker.config import Config
from worker.runtime.migrate import migrate

pytestmark = pytest.mark.slow

STARTUP_SECONDS = 30.0
GAUGE = "mini_chat_worker_database_up"
# libpq's own words for "nothing listens there" (a socket path, or TCP).
UNREACHABLE = ("No such file or directory", "Connection refused")
MESSAGES = 60

StartDaemon = Callable[[dict[str, Any], dict[str, str | None]], tuple[DaemonProcess, int]]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    started: list[DaemonProcess] = []

    def start(config: dict[str, Any], env: dict[str, str | None]) -> tuple[DaemonProcess, int]:
        port = free_port()
        path = write_config(tmp_path / f"daemon-{len(started)}.yaml", config)
        env = {**env, "CLEANUP_WORKER__OBSERVABILITY__HTTP_PORT": str(port)}
        daemon = DaemonProcess(["--config", str(path)], env, tmp_path / f"d{len(started)}.log")
        started.append(daemon)
        return daemon, port

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def slow_fake() -> Iterator[FakeOpenAI]:
    """Provider answers take 0.3 s: handler slots stay taken while the database goes away."""
    server = FakeOpenAI(api_keys=[API_KEY], latency_seconds=0.3).start()
    yield server
    threading.Thread(target=server.stop, name="fake-openai-stop", daemon=True).start()


@pytest.fixture
async def own_server() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL of this test's own: stopping it leaves the session's server alone."""
    server = await asyncio.to_thread(start_postgres)
    if not server.restartable:
        await asyncio.to_thread(server.close)
        pytest.skip(f"a {server.kind} PostgreSQL cannot be stopped and started here")
    yield server
    await asyncio.to_thread(server.close)


async def _migrated_db(server: PostgresServer) -> str:
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as admin:
        await admin.execute("CREATE DATABASE cw_outage")
    dsn = server.dsn("cw_outage")
    config = Config()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(
            conn,
            queues=[config.outbox.attachment_queue, config.outbox.chat_queue],
            with_app_schema=True,
        )
    return dsn


def _busy_config(fake: FakeOpenAI) -> dict[str, Any]:
    """Few handler slots for many messages: lanes often find every slot taken."""
    config = make_config(fake, batch_size=10, concurrency=4)
    config["database"]["pool_max_size"] = 4
    return config


async def _load(dsn: str, fake: FakeOpenAI) -> None:
    for _ in range(4):
        await delete_single(dsn, fake, MESSAGES // 4)


async def _done(dsn: str) -> int:
    return int(await scalar(dsn, "SELECT count(*) FROM attachments WHERE cleanup_status = 'done'"))


async def _gauge(port: int) -> float | None:
    code, text = await ahttp_get(port, "/metrics")
    assert code == 200, text
    for line in text.splitlines():
        if line.startswith(GAUGE + " "):
            return float(line.split()[-1])
    return None


def _events(daemon: DaemonProcess, *names: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") in names]


async def _ready(port: int, daemon: DaemonProcess, within: float) -> None:
    async def check() -> bool:
        assert daemon.running, f"the daemon exited:\n{daemon.tail()}"
        return (await ahttp_get(port, "/readyz", within=3))[0] == 200

    await wait_for(check, within=within, what="/readyz 200", every=0.2)


async def _watch_outage(
    daemon: DaemonProcess, port: int, seconds: float
) -> tuple[list[float | None], list[tuple[int, str]]]:
    """Scrape the gauge and probe readiness for ``seconds``; the daemon must stay up."""
    gauges: list[float | None] = []
    probes: list[tuple[int, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert daemon.running, f"the daemon exited during the outage:\n{daemon.tail()}"
        gauges.append(await _gauge(port))
        probes.append(await ahttp_get(port, "/readyz", within=4))
        await asyncio.sleep(0.3)
    return gauges, probes


async def _wait_noticed(daemon: DaemonProcess, port: int, within: float) -> None:
    async def noticed() -> bool:
        assert daemon.running, f"the daemon exited:\n{daemon.tail()}"
        return bool(_events(daemon, "database_unavailable")) and await _gauge(port) == 0

    await wait_for(noticed, within=within, what="the outage reported (log and gauge 0)")


async def _finished_cleanly(dsn: str, fake: FakeOpenAI, daemon: DaemonProcess) -> None:
    await wait_for(lambda: _all_done(dsn), within=90, what="every message handled after the outage")
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(within=20) == 0, daemon.tail()
    db_truth = await truth(dsn)
    assert db_truth["attachments"] == {"done": MESSAGES}
    assert db_truth["dead_letters"] == {}
    assert await cursors_at_end(dsn)
    assert fake.files == set()
    assert not _events(daemon, "loop_crashed", "handler_crashed"), daemon.tail()


async def _all_done(dsn: str) -> bool:
    return await _done(dsn) == MESSAGES and (await truth(dsn))["retries"] == {}


async def test_stopped_server_is_reported_truthfully_until_a_statement_succeeds(
    own_server: PostgresServer, slow_fake: FakeOpenAI, start_daemon: StartDaemon
) -> None:
    dsn = await _migrated_db(own_server)
    await _load(dsn, slow_fake)
    # The server trusts local connections; the password is there to be kept out of every cause.
    with_password = psycopg.conninfo.make_conninfo(dsn, password=DSN_PASSWORD)
    daemon, port = start_daemon(_busy_config(slow_fake), base_env(with_password))
    await _ready(port, daemon, STARTUP_SECONDS)
    assert await _gauge(port) == 1
    await wait_for(lambda: _done_at_least(dsn, 8), within=30, what="work before the outage")

    await asyncio.to_thread(own_server.stop)
    try:
        await _wait_noticed(daemon, port, within=30)
        gauges, probes = await _watch_outage(daemon, port, seconds=12)
        recovered_during_outage = _events(daemon, "database_recovered")
    finally:
        await asyncio.to_thread(own_server.start)

    assert set(gauges) == {0.0}, f"database_up during the outage: {gauges}"
    assert recovered_during_outage == [], recovered_during_outage
    assert all(code == 503 for code, _ in probes), probes
    assert any(any(u in body for u in UNREACHABLE) for _, body in probes), probes
    causes = [str(e.get("cause")) for e in _events(daemon, "database_unavailable")]
    assert any(any(u in cause for u in UNREACHABLE) for cause in causes), causes
    assert_secret_free(daemon.output(), *(body for _, body in probes))

    await wait_for(lambda: _gauge_is(port, 1), within=45, what="database_up back to 1")
    assert _events(daemon, "database_recovered"), daemon.tail()
    await _ready(port, daemon, 45)
    await _finished_cleanly(dsn, slow_fake, daemon)


async def _done_at_least(dsn: str, n: int) -> bool:
    return await _done(dsn) >= n


async def _gauge_is(port: int, value: float) -> bool:
    return await _gauge(port) == value


async def _admin(dsn: str, *statements: str) -> None:
    """Run ``statements`` as the superuser on the server's maintenance database."""
    maintenance = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement.encode())


def _fail_over(dbname: str, *, read_only: bool) -> list[str]:
    """The database turns read-only (or writable again) and every session is cut, as when a
    failover moves clients to another node: they reconnect and meet the new state."""
    setting = "SET default_transaction_read_only = on" if read_only else "RESET ALL"
    return [
        f'ALTER DATABASE "{dbname}" {setting}',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'",
    ]


async def test_failover_to_read_only_and_back_loses_nothing(
    db: str, slow_fake: FakeOpenAI, start_daemon: StartDaemon
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    assert isinstance(dbname, str)
    await _load(db, slow_fake)
    daemon, port = start_daemon(_busy_config(slow_fake), base_env(db))
    await _ready(port, daemon, STARTUP_SECONDS)
    await wait_for(lambda: _done_at_least(db, 8), within=30, what="work before the failover")

    await _admin(db, *_fail_over(dbname, read_only=True))
    try:
        await _wait_noticed(daemon, port, within=30)
        gauges, probes = await _watch_outage(daemon, port, seconds=8)
        recovered_during_outage = _events(daemon, "database_recovered")
    finally:
        await _admin(db, *_fail_over(dbname, read_only=False))

    assert set(gauges) == {0.0}, f"database_up while read-only: {gauges}"
    assert recovered_during_outage == [], recovered_during_outage
    assert all(code == 503 for code, _ in probes), probes
    assert any("read-only" in body for _, body in probes), probes
    causes = [str(e.get("cause")) for e in _events(daemon, "database_unavailable")]
    assert any("read-only transaction" in c and "25006" in c for c in causes), causes

    await wait_for(lambda: _gauge_is(port, 1), within=45, what="database_up back to 1")
    await _ready(port, daemon, 45)
    await _finished_cleanly(db, slow_fake, daemon)


async def test_sessions_cut_again_and_again_never_stop_the_daemon(
    db: str, slow_fake: FakeOpenAI, start_daemon: StartDaemon
) -> None:
    """AdminShutdown (57P01) in every kind of statement: backed off and retried, never a crash."""
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    await _load(db, slow_fake)
    daemon, port = start_daemon(_busy_config(slow_fake), base_env(db))
    await _ready(port, daemon, STARTUP_SECONDS)
    for _ in range(6):
        await asyncio.sleep(0.7)
        await _admin(
            db,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'",
        )
        assert daemon.running, daemon.tail()
    causes = [str(e.get("cause")) for e in _events(daemon, "database_unavailable")]
    if not via_pgbouncer():  # PgBouncer replaces a killed idle server connection unseen
        assert any("57P01" in c or "server closed the connection" in c for c in causes), causes
    await _finished_cleanly(db, slow_fake, daemon)
