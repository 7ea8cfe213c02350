"""One taxonomy of database errors (SPEC §11, §13): "not usable right now" is DatabaseUnavailable
(the daemon backs off and retries), a missing table is SchemaError, anything else is a bug and
stays raw (the daemon crashes on it). Every error here is raised by the real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from cwlab.postgres import PostgresServer, start_postgres
from worker.db import Conn
from worker.db.pool import Pool, open_pool, translate_errors
from worker.errors import DatabaseUnavailable, SchemaError

# One SQLSTATE per class (or per code, where only the code means unavailable) of the taxonomy.
UNAVAILABLE = {
    "08006": "connection failure",
    "08P01": "protocol violation (PgBouncer's own errors)",
    "25006": "read-only transaction: failover to a standby or read-only node",
    "25P03": "idle-in-transaction session timeout",
    "40001": "serialization failure",
    "40P01": "deadlock detected",
    "53300": "too many connections",
    "55P03": "lock not available",
    "57014": "query canceled (statement_timeout)",
    "57P01": "admin shutdown",
    "57P03": "cannot connect now (starting up, recovery)",
    "58030": "I/O error",
    "72000": "snapshot too old",
}
BUGS = {
    "0A000": "feature not supported",
    "22P02": "invalid text representation",
    "23505": "unique violation",
    "25P02": "in failed transaction",
    "42601": "syntax error",
    "54001": "statement too complex",
    "XX000": "internal error",
}


async def _raise_sqlstate(conn: Conn, sqlstate: str) -> None:
    """The server itself raises an error with ``sqlstate`` (not a Python stand-in)."""
    await conn.execute(
        f"DO $$ BEGIN RAISE EXCEPTION 'injected {sqlstate}' USING ERRCODE = '{sqlstate}';"
        " END $$".encode()
    )


@pytest.mark.parametrize("sqlstate", sorted(UNAVAILABLE), ids=lambda s: f"{s}-{UNAVAILABLE[s]}")
async def test_not_usable_now_is_database_unavailable_naming_the_cause(
    conn: Conn, sqlstate: str
) -> None:
    with pytest.raises(DatabaseUnavailable) as caught, translate_errors():
        await _raise_sqlstate(conn, sqlstate)
    assert f"injected {sqlstate}" in str(caught.value)
    assert f"SQLSTATE {sqlstate}" in str(caught.value)


@pytest.mark.parametrize("sqlstate", sorted(BUGS), ids=lambda s: f"{s}-{BUGS[s]}")
async def test_other_database_errors_are_bugs_and_stay_raw(conn: Conn, sqlstate: str) -> None:
    with pytest.raises(psycopg.Error) as caught, translate_errors():
        await _raise_sqlstate(conn, sqlstate)
    assert caught.value.sqlstate == sqlstate
    assert not isinstance(caught.value, DatabaseUnavailable)


async def test_missing_table_is_a_schema_error(conn: Conn) -> None:
    with pytest.raises(SchemaError, match="cleanup-worker migrate"), translate_errors():
        await conn.execute("SELECT * FROM no_such_table")


# -- the same conditions, produced the way production meets them ---------------------------------


async def test_write_on_a_read_only_database_is_unavailable(conn: Conn) -> None:
    await conn.execute("SET default_transaction_read_only = on")
    with pytest.raises(DatabaseUnavailable, match="read-only transaction"), translate_errors():
        await conn.execute("CREATE TABLE t_written (id int)")


async def test_terminated_backend_is_unavailable(conn: Conn, db: str) -> None:
    pid = conn.info.backend_pid
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(DatabaseUnavailable, match="database unavailable"), translate_errors():
        await conn.execute("SELECT 1")


async def test_statement_timeout_is_unavailable(conn: Conn) -> None:
    await conn.execute("SET statement_timeout = '50ms'")
    with pytest.raises(DatabaseUnavailable, match="SQLSTATE 57014"), translate_errors():
        await conn.execute("SELECT pg_sleep(2)")


async def test_real_serialization_failure_is_unavailable(db: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(db) as a,
        await psycopg.AsyncConnection.connect(db) as b,
    ):
        await a.execute("CREATE TABLE IF NOT EXISTS t_ser (id int primary key, v int)")
        await a.execute("INSERT INTO t_ser VALUES (1, 0)")
        await a.commit()
        for c in (a, b):
            await c.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            await c.execute("SELECT v FROM t_ser WHERE id = 1")
        await a.execute("UPDATE t_ser SET v = 1 WHERE id = 1")
        await a.commit()
        with pytest.raises(DatabaseUnavailable, match="SQLSTATE 40001"), translate_errors():
            await b.execute("UPDATE t_ser SET v = 2 WHERE id = 1")


# -- a stopped server: the pool's timeout names why it could not connect ------------------------


@pytest.fixture
async def own_server() -> AsyncIterator[PostgresServer]:
    """A server of this test's own, so stopping it leaves the session's server alone."""
    server = await asyncio.to_thread(start_postgres)
    if not server.restartable:
        await asyncio.to_thread(server.close)
        pytest.skip(f"a {server.kind} PostgreSQL cannot be stopped and started here")
    yield server
    await asyncio.to_thread(server.close)


async def test_pool_timeout_while_the_server_is_down_names_the_cause(
    own_server: PostgresServer,
) -> None:
    async with open_pool(own_server.dsn(), min_size=1, max_size=2, timeout_seconds=2) as pool:
        with translate_errors():
            async with pool.connection() as c:
                await c.execute("SELECT 1")
        await asyncio.to_thread(own_server.stop)
        try:
            # The connection in hand meets the shutdown (57P01); the next wait for one times out.
            causes = [await _unavailable_cause(pool) for _ in range(2)]
        finally:
            await asyncio.to_thread(own_server.start)
    # libpq's reason, not only "couldn't get a connection after 2.00 sec".
    assert "couldn't get a connection" in causes[-1], causes
    assert "No such file or directory" in causes[-1] or "Connection refused" in causes[-1], causes


async def _unavailable_cause(pool: Pool) -> str:
    with pytest.raises(DatabaseUnavailable) as caught, translate_errors():
        async with pool.connection() as c:
            await c.execute("SELECT 1")
    return str(caught.value)
