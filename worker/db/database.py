"""The one object the layers above use to reach PostgreSQL (docs/ARCHITECTURE.md, "Data access").

Procrastinate's manager-over-connector shape: ``Database`` wraps the pool, and every connection
or transaction it hands out translates psycopg's errors into the product's error tree
(``pool.translate_errors``) for the whole block, the caller's statements included. The CLI's
one-shot commands get the same from ``open_connection``. Nothing above ``worker.db`` imports
psycopg or catches its exceptions (import-linter contract ``driver-in-data-access``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import TypeAlias

import psycopg_pool

from worker.db.pool import Conn, connect, missing_privilege_is_config, translate_errors
from worker.db.queries import q

AsyncConnectionPool: TypeAlias = psycopg_pool.AsyncConnectionPool
"""The pool type, for annotations above the data-access layer (built by ``pool.open_pool``)."""


class Database:
    """A pool whose connections speak the product's errors: DatabaseUnavailable (back off and
    retry), SchemaError (run migrate); any other driver error is a bug and stays raw."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the pool's own wait)
    ) -> AsyncIterator[Conn]:
        """A pooled autocommit connection; each statement commits on its own."""
        with translate_errors():
            async with self.pool.connection(timeout=timeout) as conn:
                yield conn

    @asynccontextmanager
    async def transaction(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the pool's own wait)
    ) -> AsyncIterator[Conn]:
        """A pooled connection inside one transaction: committed when the block ends, rolled
        back when it raises."""
        async with self.connection(timeout=timeout) as conn, conn.transaction():
            yield conn


@asynccontextmanager
async def open_connection(
    dsn: str,
    *,
    key: str = "database.dsn",
    timeout_seconds: float = 10.0,
    missing_privilege_hint: str | None = None,
) -> AsyncIterator[Conn]:
    """One connection for a one-shot command, closed at the end, errors translated throughout.

    A DSN the server refuses is a ConfigError naming ``key`` (``pool.connect``). With
    ``missing_privilege_hint``, a privilege the role lacks is a ConfigError too, naming ``key``
    and the hint: no retry can grant it.
    """
    privileges = (
        missing_privilege_is_config(key, missing_privilege_hint)
        if missing_privilege_hint
        else nullcontext()
    )
    conn = await connect(dsn, timeout_seconds=timeout_seconds, key=key)
    with translate_errors(), privileges:
        async with conn:
            yield conn


async def is_read_only(conn: Conn) -> bool:
    """The server refuses writes (a standby, or a failover in progress): not ready."""
    cur = await conn.execute(q("transaction_read_only"))
    row = await cur.fetchone()
    return row is not None and row[0] == "on"


async def check_reachable(dsn: str, *, timeout_seconds: float = 10.0) -> None:
    """Connect once and close: before a command builds its app, a DSN the server refuses is a
    ConfigError (exit 2) and an unreachable database DatabaseUnavailable (exit 3)."""
    await (await connect(dsn, timeout_seconds=timeout_seconds)).close()
