"""`migrate` builds the indexes the worker needs on the chat service's tables (issue 16).

The chat service creates its tables with its own DDL, which lacks them; `migrate` builds them
with CREATE INDEX CONCURRENTLY after its transaction, leaves valid ones alone, redoes one an
interrupted build left INVALID, and waits for (never drops) one another replica is building.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cwlab.postgres import PostgresServer
from worker.config import Config
from worker.db.pool import connection_kwargs
from worker.errors import SchemaError
from worker.runtime.migrate import app_indexes, index_states, migrate

CONFIG = Config()
QUEUES = [CONFIG.outbox.attachment_queue, CONFIG.outbox.chat_queue]
NAMES = [index.name for index in app_indexes()]
LIVE_FILE = "idx_attachments_live_provider_file"


async def _connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, **connection_kwargs())


async def _chat_service_database(dsn: str) -> None:
    """The worker's schema and the chat service's tables as its own DDL creates them."""
    async with await _connect(dsn) as conn:
        await migrate(conn, queues=QUEUES, with_app_schema=True, build_app_indexes=False)


async def _index(conn: psycopg.AsyncConnection, name: str) -> tuple[int, bool, bool] | None:
    """(oid, valid, unique) of an index, None when there is none of that name."""
    cur = await conn.execute(
        "SELECT i.indexrelid::int, i.indisvalid, i.indisunique FROM pg_index i"
        " WHERE i.indexrelid = to_regclass(%s)",
        (name,),
    )
    row = await cur.fetchone()
    return (int(row[0]), bool(row[1]), bool(row[2])) if row else None


async def _appearing(conn: psycopg.AsyncConnection, name: str) -> tuple[int, bool, bool]:
    """The index once it is in the catalog (within 10 s)."""
    for _ in range(200):
        found = await _index(conn, name)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not appear")


async def _seed_attachments(conn: psycopg.AsyncConnection, rows: int, *, shared_file: bool) -> None:
    """Chats and soft-deleted attachments; with ``shared_file`` two rows share a file id."""
    await conn.execute(
        "INSERT INTO chats (id, tenant_id, user_id, model, created_at, updated_at)"
        " SELECT md5('c' || g)::uuid, md5('t')::uuid, md5('u')::uuid, 'm', now(), now()"
        " FROM generate_series(1, %(n)s) g",
        {"n": rows},
    )
    await conn.execute(
        "INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename,"
        " content_type, size_bytes, provider_file_id, status, attachment_kind, created_at)"
        " SELECT md5('a' || g)::uuid, md5('t')::uuid, md5('c' || g)::uuid, md5('u')::uuid,"
        " 'f', 'text/plain', 1,"
        " CASE WHEN %(shared)s AND g <= 2 THEN 'file-shared' ELSE 'file-' || g END,"
        " 'ready', 'document', now()"
        " FROM generate_series(1, %(n)s) g",
        {"n": rows, "shared": shared_file},
    )


async def test_chat_service_ddl_lacks_the_indexes_and_migrate_builds_them_once(empty_db):
    await _chat_service_database(empty_db)
    async with await _connect(empty_db) as conn:
        assert [await _index(conn, name) for name in NAMES] == [None] * len(NAMES)
        assert await _index(conn, "idx_attachments_cleanup") is not None  # the chat service's
        assert [s.problem for s in await index_states(conn)] == ["missing"] * len(NAMES)

        first = await migrate(conn, queues=QUEUES)
        assert first.applied == ()
        assert first.indexes == tuple(NAMES)
        built = {name: await _index(conn, name) for name in NAMES}
        assert all(state is not None and state[1] for state in built.values()), built
        assert [s.problem for s in await index_states(conn)] == [None] * len(NAMES)

        second = await migrate(conn, queues=QUEUES)
        assert (second.applied, second.indexes) == ((), ())
        assert {name: await _index(conn, name) for name in NAMES} == built  # same oids


async def test_skip_app_indexes_builds_nothing(empty_db):
    async with await _connect(empty_db) as conn:
        report = await migrate(conn, queues=QUEUES, build_app_indexes=False)
        assert report.indexes == ()
        # Without the chat service's tables there is nothing to index, and nothing to report.
        assert [s.table_present for s in await index_states(conn)] == [False] * len(NAMES)
        assert [s.problem for s in await index_states(conn)] == [None] * len(NAMES)
        assert (await migrate(conn, queues=QUEUES)).indexes == ()


async def test_a_role_that_does_not_own_the_table_leaves_them_to_its_owner(
    empty_db: str, role_dsn: Callable[..., str]
) -> None:
    """The chat service's role owns its tables; only an owner may index a table. migrate
    builds nothing there, fails nothing (the worker works without them, only slower) and
    names them; check-config gives the statements to the owner."""
    await _chat_service_database(empty_db)
    suffix = uuid.uuid4().hex[:8]
    owner, role = f"cw_chat_{suffix}", f"cw_migrate_{suffix}"
    migrator = role_dsn(empty_db, role, f"m-{suffix}", "NOSUPERUSER")
    async with await _connect(empty_db) as admin:
        await admin.execute(f"CREATE ROLE {owner} NOLOGIN".encode())  # the chat service's role
        for grant in (
            f"ALTER TABLE attachments OWNER TO {owner}",
            f"GRANT CREATE, USAGE ON SCHEMA public TO {role}",
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ):
            await admin.execute(grant.encode())
    async with await _connect(migrator) as conn:
        report = await migrate(conn, queues=QUEUES)
        assert report.indexes == ()
        assert report.left_to_owner == tuple(NAMES)
        assert [(s.may_build, s.problem) for s in await index_states(conn)] == [
            (False, "missing")
        ] * len(NAMES)


async def test_an_interrupted_build_left_invalid_is_dropped_and_redone(empty_db):
    await _chat_service_database(empty_db)
    async with await _connect(empty_db) as conn:
        await _seed_attachments(conn, 10, shared_file=True)
        # A real interrupted CONCURRENTLY build: it fails in its last phase (duplicate key),
        # leaving the index in the catalog, INVALID, under the name migrate builds.
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY idx_attachments_live_provider_file"
                " ON attachments (provider_file_id)"
                " WHERE deleted_at IS NULL AND provider_file_id IS NOT NULL"
            )
        left = await _index(conn, LIVE_FILE)
        assert left is not None
        assert left[1:] == (False, True)  # invalid, unique
        states = {s.index.name: s.problem for s in await index_states(conn)}
        assert states[LIVE_FILE] == "invalid"

        report = await migrate(conn, queues=QUEUES)
        assert LIVE_FILE in report.indexes
        redone = await _index(conn, LIVE_FILE)
        assert redone is not None
        assert redone[1:] == (True, False)  # valid, as sql/ defines it
        assert redone[0] != left[0]
        assert (await migrate(conn, queues=QUEUES)).indexes == ()


async def test_a_canceled_build_is_one_clear_error_and_the_next_migrate_redoes_it(
    empty_db: str, pg_server: PostgresServer
) -> None:
    """A statement_timeout of migrate's role cancels a build that waits for the chat service's
    open transactions: the INVALID leftover is named, and redone by the next migrate."""
    await _chat_service_database(empty_db)
    direct = pg_server.dsn(conninfo_to_dict(empty_db)["dbname"])  # `options`: not via a pooler
    async with await _connect(direct) as holder:
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await holder.execute("SELECT count(*) FROM attachments")
        timed = await psycopg.AsyncConnection.connect(
            direct, options="-c statement_timeout=300", **connection_kwargs()
        )
        async with timed:
            with pytest.raises(SchemaError) as caught:
                await migrate(timed, queues=QUEUES)
        await holder.execute("COMMIT")
    text = str(caught.value)
    assert f"building index {NAMES[0]} on attachments was canceled" in text
    assert "statement timeout" in text
    assert "\n" not in text
    async with await _connect(empty_db) as conn:
        left = [s.problem for s in await index_states(conn)]
        assert left == ["invalid"] + ["missing"] * (len(NAMES) - 1)  # it stopped at the first
        report = await migrate(conn, queues=QUEUES)
        assert report.indexes == tuple(NAMES)
        assert [s.problem for s in await index_states(conn)] == [None] * len(NAMES)


async def test_a_build_in_progress_elsewhere_is_waited_for_not_dropped(empty_db):
    """Replicas starting at once: one builds, another finds the index INVALID while it builds.
    That one must wait for the build, not take it for an interrupted one and drop it."""
    await _chat_service_database(empty_db)
    async with await _connect(empty_db) as holder, await _connect(empty_db) as builder:
        await _seed_attachments(builder, 10, shared_file=False)
        await migrate(builder, queues=QUEUES)  # every index but the one this test races on
        await builder.execute(f"DROP INDEX {LIVE_FILE}")
        # An open snapshot holds a CONCURRENTLY build in its wait phase: the index is in the
        # catalog, INVALID, while the build is still running.
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await holder.execute("SELECT count(*) FROM chats")
        [statement] = [i.create for i in app_indexes() if i.name == LIVE_FILE]
        building = asyncio.create_task(builder.execute(statement.encode()))
        async with await _connect(empty_db) as replica:
            started = await _appearing(replica, LIVE_FILE)
            assert not started[1]
            other = asyncio.create_task(migrate(replica, queues=QUEUES))
            await asyncio.sleep(1.5)
            assert not other.done()  # waiting for the build
            async with await _connect(empty_db) as observer:
                assert await _index(observer, LIVE_FILE) == started  # not dropped
            await holder.execute("COMMIT")
            await asyncio.wait_for(building, timeout=20)
            report = await asyncio.wait_for(other, timeout=20)
        assert report.indexes == ()  # it built nothing: the index was the other's
        finished = await _index(builder, LIVE_FILE)
        assert finished == (started[0], True, False)


async def test_replicas_starting_at_once_end_with_one_valid_set(empty_db):
    await _chat_service_database(empty_db)
    async with await _connect(empty_db) as conn:
        await _seed_attachments(conn, 2_000, shared_file=False)
    connections = [await _connect(empty_db) for _ in range(4)]
    try:
        reports = await asyncio.gather(*(migrate(c, queues=QUEUES) for c in connections))
    finally:
        for c in connections:
            await c.close()
    built = sorted(name for report in reports for name in report.indexes)
    assert set(built) == set(NAMES)
    async with await _connect(empty_db) as conn:
        assert [s.problem for s in await index_states(conn)] == [None] * len(NAMES)
        valid = [(await _index(conn, name) or (0, False, False))[1] for name in NAMES]
        assert valid == [True] * len(NAMES)
