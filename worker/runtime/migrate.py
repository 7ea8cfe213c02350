"""`cleanup-worker migrate`: apply ``sql/schema`` (and ``sql/app`` on request), register queues,
then build the indexes of ``sql/app_indexes`` on the chat service's tables.

Idempotent and safe when many replicas start at once: one transaction under an advisory lock.
Every DDL file is ``IF NOT EXISTS``; a file is executed only when it is new or changed, so a
restart takes no locks on the chat service's busy outbox tables.

The indexes are built after that transaction, each with CREATE INDEX CONCURRENTLY (which cannot
run inside one), so the chat service keeps writing while a large table is indexed. No lock is
held across statements (none would survive PgBouncer's transaction pooling); the catalog is the
coordination instead: a valid index is left alone; while an index build runs on its table in
another session (another replica, a DBA) it waits, as two concurrent builds on one table
deadlock; an INVALID one nobody is building, left by an interrupted build, is dropped and built
again. Two replicas starting the same build at once: one wins, the other looks again. Only the
table's owner may index it: under another role the indexes are left to the owner (reported).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from worker.config import QueueConfig
from worker.db import Conn, migrations
from worker.db.migrations import build_concurrently
from worker.db.queries import parse_queries, sql_dir
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
    indexes: tuple[str, ...] = ()  # app indexes this run built (or rebuilt)
    # App indexes still missing or INVALID because this role does not own their table.
    left_to_owner: tuple[str, ...] = ()


@dataclass(frozen=True)
class AppIndex:
    """An index the worker needs on a chat-service table (a block of ``sql/app_indexes``)."""

    name: str
    table: str
    purpose: str
    create: str  # CREATE INDEX CONCURRENTLY IF NOT EXISTS ...


@dataclass(frozen=True)
class IndexState:
    index: AppIndex
    table_present: bool
    may_build: bool  # this role owns the table (only an owner may index it)
    present: bool
    valid: bool
    building: bool  # another session is building an index on its table

    @property
    def problem(self) -> str | None:
        """'missing' or 'invalid' where the worker's statements would scan the table; None when
        the index is usable or its table does not exist (then there is nothing to scan)."""
        if not self.table_present or self.valid:
            return None
        return "invalid" if self.present else "missing"

    @property
    def repair(self) -> str:
        """The statement(s) a DBA runs to make it usable, on one line."""
        create = " ".join(self.index.create.split())
        if self.present:
            return f"DROP INDEX CONCURRENTLY IF EXISTS {self.index.name}; {create}"
        return create


_TABLE = re.compile(r"\bON\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)
# How often a replica looks again at an index another session is building.
BUILD_POLL_SECONDS = 0.5


@cache
def app_indexes() -> tuple[AppIndex, ...]:
    """The blocks of ``sql/app_indexes/*.sql``: one source for migrate, the checks and the docs."""
    found: list[AppIndex] = []
    for path in sorted((sql_dir() / "app_indexes").glob("*.sql")):
        for block in parse_queries(path.read_text()).values():
            table = _TABLE.search(block.text)
            if table is None:
                raise ValueError(f"{path.name}: {block.name} names no table (ON <table>)")
            found.append(AppIndex(block.name, table[1], block.doc, block.text))
    return tuple(found)


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
    build_app_indexes: bool = True,
) -> MigrationReport:
    """``conn`` must be in autocommit mode (the worker's connections are): the index builds
    run outside any transaction."""
    applied = await _apply_files(conn, queues=queues, with_app_schema=with_app_schema)
    built: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    if build_app_indexes:
        built = await ensure_app_indexes(conn)
        left = tuple(s.index.name for s in await index_states(conn) if s.problem)
    return MigrationReport(applied, tuple(qc.name for qc in queues), built, left)


async def _apply_files(
    conn: Conn, *, queues: Sequence[QueueConfig], with_app_schema: bool
) -> tuple[str, ...]:
    applied: list[str] = []
    async with conn.transaction():
        await migrations.lock_and_create_table(conn)
        done = await migrations.applied(conn)
        for migration in migration_files(with_app_schema=with_app_schema):
            if done.get(migration.name) == migration.checksum:
                continue
            await conn.execute(migration.text.encode())
            await migrations.record(conn, migration.name, migration.checksum)
            applied.append(migration.name)
        for queue in queues:
            await register_queue(conn, queue.name, queue.partitions)
    return tuple(applied)


async def index_states(conn: Conn) -> list[IndexState]:
    """The catalog's view of every app index, in ``sql/app_indexes`` order."""
    indexes = app_indexes()
    names, tables = [i.name for i in indexes], [i.table for i in indexes]
    rows = await migrations.app_index_states(conn, names, tables)
    states = []
    for index, (_, table, may_build, present, valid, building) in zip(indexes, rows, strict=True):
        states.append(
            IndexState(index, bool(table), bool(may_build), bool(present), bool(valid),
                       bool(building))
        )  # fmt: skip
    return states


async def ensure_app_indexes(conn: Conn) -> tuple[str, ...]:
    """Build every app index that is missing or left INVALID; the names of those built.
    An index on a table this role does not own is left as it is: only the owner may build
    it, and the worker works without it, only slower (check-config says what to run)."""
    built = []
    for index in app_indexes():
        if await _ensure_index(conn, index):
            built.append(index.name)
    return tuple(built)


async def _ensure_index(conn: Conn, index: AppIndex) -> bool:
    """Make ``index`` valid; True when this session built it. Loops until the catalog says
    it is valid: after its own build, after waiting for another's, after losing a race."""
    built = False
    while True:
        state = await _state(conn, index)
        if not state.table_present or state.valid or not state.may_build:
            return built
        if state.building:  # another session builds on this table: wait (or the two deadlock)
            await asyncio.sleep(BUILD_POLL_SECONDS)
            continue
        statements = [index.create.encode()]
        if state.present:  # INVALID and nobody builds: an interrupted build's leftover
            statements.insert(0, f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}".encode())
        what = f"index {index.name} on {index.table}"
        if not await build_concurrently(conn, statements, what=what):
            continue  # another replica started at the same moment: look again
        built = True


async def _state(conn: Conn, index: AppIndex) -> IndexState:
    return next(s for s in await index_states(conn) if s.index == index)


async def pending_migrations(conn: Conn) -> list[str]:
    """Schema files not applied (or changed since): non-empty means not ready."""
    done = await migrations.applied(conn)
    return [
        m.name for m in migration_files(with_app_schema=False) if done.get(m.name) != m.checksum
    ]
