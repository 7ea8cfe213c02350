"""`cleanup-worker migrate`: apply ``sql/schema`` (and ``sql/app`` on request), register queues.

Idempotent and safe when many replicas start at once: one transaction under an advisory lock.
Every DDL file is ``IF NOT EXISTS``; a file is executed only when it is new or changed, so a
restart takes no locks on the chat service's busy outbox tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg.rows import dict_row

from worker.config import QueueConfig
from worker.db import Conn
from worker.db.queries import q, sql_dir
from worker.outbox.queues import register_queue


@dataclass(frozen=True)
class MigrationFile:
    name: str  # e.g. "schema/001_outbox.sql"
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    applied: tuple[str, ...]
    queues: tuple[str, ...]


def migration_files(*, with_app_schema: bool) -> list[MigrationFile]:
    groups = ["schema", "app"] if with_app_schema else ["schema"]
    root = sql_dir()
    return [
        MigrationFile(f"{group}/{path.name}", path.read_text())
        for group in groups
        for path in sorted((root / group).glob("*.sql"))
    ]


async def migrate(
    conn: Conn,
    *,
    queues: Sequence[QueueConfig],
    with_app_schema: bool = False,
) -> MigrationReport:
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(q("lock_migrations"))
        await conn.execute(q("create_migrations_table"))
        done = await _applied(conn)
        for migration in migration_files(with_app_schema=with_app_schema):
            if done.get(migration.name) == migration.checksum:
                continue
            await conn.execute(migration.text.encode())
            await conn.execute(
                q("record_migration"), {"name": migration.name, "checksum": migration.checksum}
            )
            applied.append(migration.name)
        for queue in queues:
            await register_queue(conn, queue.name, queue.partitions)
    return MigrationReport(applied=tuple(applied), queues=tuple(qc.name for qc in queues))


async def pending_migrations(conn: Conn) -> list[str]:
    """Schema files not applied (or changed since): non-empty means not ready."""
    cur = await conn.execute(q("migrations_table_exists"))
    row = await cur.fetchone()
    done = await _applied(conn) if row and row[0] else {}
    return [
        m.name for m in migration_files(with_app_schema=False) if done.get(m.name) != m.checksum
    ]


async def _applied(conn: Conn) -> dict[str, str]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("applied_migrations"))
        return {row["name"]: row["checksum"] for row in await cur.fetchall()}
