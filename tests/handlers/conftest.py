"""Fixtures of the handler tests: a real ``FakeOpenAI`` and the real app built by ``open_app``.

``db`` is overridden here: instead of a new database per test (0.3-1 s each on a busy machine),
the handler tests share one database copied from the migrated template and empty it before
every test (every table except the queue registration, cursors reset): the same starting state,
about five times faster.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import psycopg
import pytest

from cwlab.fake_openai import FakeOpenAI
from cwlab.postgres import PostgresServer
from handlers.support import KEYS, Stack, build_config
from worker.db import Conn
from worker.db.pool import connection_kwargs
from worker.runtime.app import open_app

MakeStack = Callable[..., Awaitable[Stack]]

# Queue registration and the migrations record survive a reset; everything else is emptied.
RESET = b"""
DO $$
DECLARE tables text;
BEGIN
    SELECT string_agg(format('%I', tablename), ', ') INTO tables
    FROM pg_tables
    WHERE schemaname = current_schema()
      AND tablename NOT IN ('modkit_outbox_partitions', 'modkit_outbox_processor',
                            'modkit_outbox_vacuum_counter', 'cleanup_worker_migrations');
    EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY';
END $$;
UPDATE modkit_outbox_partitions SET sequence = 0;
UPDATE modkit_outbox_processor
SET processed_seq = 0, attempts = 0, last_error = NULL, locked_by = NULL, locked_until = NULL;
UPDATE modkit_outbox_vacuum_counter SET counter = 0;
"""


@pytest.fixture(scope="session")
def handlers_db(
    pg_server: PostgresServer, template_db: str, client_dsn: Callable[[str], str]
) -> Iterator[str]:
    name = f"handlers_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'.encode())
    yield client_dsn(name)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def db(handlers_db: str) -> str:
    """The shared handler-test database, emptied: as fresh as the root ``db`` fixture's."""
    with psycopg.connect(handlers_db, **connection_kwargs()) as conn:
        conn.execute(RESET)
    return handlers_db


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """The upstream: accepts only the configured keys (a wrong key is a real 401)."""
    with FakeOpenAI(api_keys=KEYS.values()) as server:
        yield server


@pytest.fixture
async def make_stack(db: str, conn: Conn, fake: FakeOpenAI) -> AsyncIterator[MakeStack]:
    """Builds the app with ``open_app`` (``build_config`` keywords, ``environ``); closed after."""
    async with AsyncExitStack() as exits:

        async def make(*, environ: dict[str, str] | None = None, **overrides: Any) -> Stack:
            config = build_config(db, fake, **overrides)
            env = dict(KEYS) if environ is None else environ
            app = await exits.enter_async_context(open_app(config, environ=env))
            return Stack(app, fake, conn)

        yield make


@pytest.fixture
async def stack(make_stack: MakeStack) -> Stack:
    return await make_stack()
