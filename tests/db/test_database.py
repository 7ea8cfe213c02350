"""The data-access boundary (worker/db/database.py): connections and transactions handed out
by ``Database`` and ``open_connection`` speak the product's errors for the whole block, the
caller's own statements included, and a transaction commits or rolls back with its block.
Every error here is raised by the real server."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from worker.db import Database, check_reachable, open_connection
from worker.errors import ConfigError, DatabaseUnavailable, SchemaError


async def _terminate_self(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")


async def _create_then_fail(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute("CREATE TABLE dropped (n int)")
        await conn.execute("SELECT * FROM no_such_table")


async def _unprivileged_role(db: str) -> str:
    """A role (unique: roles are cluster-wide) the test's user may switch to, without CREATE."""
    role = f"cw_unprivileged_{uuid.uuid4().hex[:8]}"
    async with open_connection(db) as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN".encode())
        await admin.execute(f"GRANT {role} TO CURRENT_USER".encode())
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC".encode())
    return role


async def _create_table_as(db: str, role: str, hint: str | None) -> None:
    async with open_connection(db, missing_privilege_hint=hint) as conn:
        await conn.execute(f"SET ROLE {role}".encode())
        await conn.execute("CREATE TABLE not_allowed (n int)")


async def test_a_missing_table_inside_a_connection_block_is_a_schema_error(
    pool: AsyncConnectionPool,
) -> None:
    with pytest.raises(SchemaError, match="cleanup-worker migrate"):
        async with Database(pool).connection() as conn:
            await conn.execute("SELECT * FROM no_such_table")


async def test_a_connection_cut_inside_the_block_is_unavailable(pool: AsyncConnectionPool) -> None:
    with pytest.raises(DatabaseUnavailable, match="terminating connection"):
        async with Database(pool).connection() as conn:
            await _terminate_self(conn)


async def test_a_bug_stays_raw(pool: AsyncConnectionPool) -> None:
    with pytest.raises(psycopg.errors.SyntaxError):
        async with Database(pool).transaction() as conn:
            await conn.execute("SELEC 1")


async def test_a_transaction_commits_with_its_block_and_rolls_back_when_it_raises(
    pool: AsyncConnectionPool,
) -> None:
    database = Database(pool)
    async with database.transaction() as conn:
        await conn.execute("CREATE TABLE kept (n int)")
    with pytest.raises(SchemaError):
        await _create_then_fail(database)
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT array_agg(relname::text ORDER BY relname) FROM pg_class"
            " WHERE relname IN ('kept', 'dropped')"
        )
        assert await cur.fetchone() == (["kept"],)


async def test_open_connection_translates_the_block_and_closes(db: str) -> None:
    with pytest.raises(SchemaError):
        async with open_connection(db) as conn:
            await conn.execute("SELECT * FROM no_such_table")
    assert conn.closed


async def test_open_connection_names_the_key_of_a_dsn_libpq_cannot_parse() -> None:
    with pytest.raises(ConfigError, match=r"^database\.migrate_dsn: not a usable PostgreSQL DSN"):
        await _open_and_close("host", key="database.migrate_dsn")


async def test_a_missing_privilege_with_a_hint_is_a_config_error_naming_key_and_hint(
    db: str,
) -> None:
    role = await _unprivileged_role(db)
    hint = "give it a role that may create tables"
    with pytest.raises(ConfigError, match=rf"^database\.dsn: permission denied.*; {hint}$"):
        await _create_table_as(db, role, hint)


async def test_without_a_hint_a_missing_privilege_stays_a_bug(db: str) -> None:
    role = await _unprivileged_role(db)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await _create_table_as(db, role, None)


async def _open_and_close(dsn: str, *, key: str) -> None:
    async with open_connection(dsn, key=key):
        pass


async def test_check_reachable_opens_and_closes_one_connection(db: str) -> None:
    await check_reachable(db)
    with pytest.raises(DatabaseUnavailable):
        await check_reachable("host=/nonexistent-socket-dir dbname=x", timeout_seconds=1)
