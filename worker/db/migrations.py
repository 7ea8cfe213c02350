"""The migrations repository: ``cleanup_worker_migrations`` (which DDL files were applied),
the migration lock, the catalog's view of the app indexes, and one concurrent index build.

``runtime.migrate`` decides what to apply and build, and when (the catalog is the
coordination); this owns the statements (``sql/queries/migrate.sql``) and says how a build
ended, so that psycopg's exceptions stay in ``worker.db``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from worker.db.pool import Conn
from worker.db.queries import q
from worker.errors import SchemaError

# Another replica began the same build (the name) or one on the same table (a deadlock, which
# PostgreSQL resolves by failing one of the two) at the same moment.
_LOST_RACE = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.DuplicateTable,
    psycopg.errors.DeadlockDetected,
)


async def build_concurrently(conn: Conn, statements: Sequence[bytes], *, what: str) -> bool:
    """Run ``statements`` (DROP/CREATE INDEX CONCURRENTLY, outside a transaction); False when
    another session won a race for the same index or table (look at the catalog again).

    A build canceled by a timeout is a SchemaError naming ``what``: the next migrate builds it
    again, and retrying now under the same timeout would only cancel it again.
    """
    try:
        for statement in statements:
            await conn.execute(statement)
    except _LOST_RACE:
        return False
    except psycopg.errors.QueryCanceled as exc:
        raise SchemaError(
            f"building {what} was canceled ({str(exc).strip().splitlines()[0]}); the next "
            "migrate builds it again: give migrate's role no statement_timeout, or let a DBA "
            "build it (docs/deploy.md)"
        ) from None
    return True


async def lock_and_create_table(conn: Conn) -> None:
    """Inside the caller's transaction: take the migration lock (one replica migrates at a
    time) and create the bookkeeping table if it is missing."""
    await conn.execute(q("lock_migrations"))
    await conn.execute(q("create_migrations_table"))


async def applied(conn: Conn) -> dict[str, str]:
    """Name -> checksum of every file applied so far; empty before the first migrate."""
    cur = await conn.execute(q("migrations_table_exists"))
    row = await cur.fetchone()
    if not (row and row[0]):
        return {}
    cur = await conn.execute(q("applied_migrations"))
    return {name: checksum for name, checksum in await cur.fetchall()}


async def record(conn: Conn, name: str, checksum: str) -> None:
    await conn.execute(q("record_migration"), {"name": name, "checksum": checksum})


async def app_index_states(
    conn: Conn, names: Sequence[str], tables: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Per index (in the order given): name, table present, may build (owns the table),
    present, valid, being built by another session."""
    params = {"names": list(names), "tables": list(tables)}
    cur = await conn.execute(q("app_index_states"), params)
    return await cur.fetchall()
