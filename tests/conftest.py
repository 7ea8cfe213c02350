"""Shared fixtures: a real PostgreSQL the suite starts itself, a fresh database per test.

The server comes from ``cwlab.postgres`` (a DSN from CLEANUP_WORKER_TEST_DSN, else the
embedded wheel, else system binaries, else Docker). Each test gets its own database copied from
a migrated template, so tests are isolated and fast.

``CLEANUP_WORKER_TEST_VIA=pgbouncer`` routes every DSN a test is handed (``db``, ``empty_db``,
``conn``, ``pool``, ``client_dsn``, ``role_dsn``) through a real PgBouncer in transaction pooling
mode (``tests/pgbouncer.py``), as production often runs; administration (CREATE/DROP DATABASE,
roles, the template's migration) still goes to the server directly.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest
import structlog
from pgbouncer import PgBouncer, PgBouncerUnavailable, via_pgbouncer
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from cwlab.postgres import PostgresServer, start_postgres, stop_servers_on_sigterm
from worker.config import Config
from worker.db import Conn
from worker.db.pool import connection_kwargs
from worker.observability.logging import LIBRARY_LOGGERS
from worker.runtime.migrate import migrate

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
    stop_servers_on_sigterm()  # pytest owns this process's signals: SIGTERM stops our servers
    with start_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """A PgBouncer (transaction pooling) in front of ``pg_server``.

    Tests about PgBouncer use it in any mode; where it cannot be had they are skipped, unless
    the suite was asked to run through it (then that is an error).
    """
    try:
        bouncer = PgBouncer(pg_server)
    except PgBouncerUnavailable as exc:
        if via_pgbouncer():
            raise
        pytest.skip(f"no PgBouncer: {exc}")
    yield bouncer
    bouncer.close()


ClientDsn = Callable[[str], str]


@pytest.fixture(scope="session")
def client_dsn(pg_server: PostgresServer, request: pytest.FixtureRequest) -> ClientDsn:
    """database name -> the DSN a test (and the CLI or daemon it starts) connects with."""
    if via_pgbouncer():
        bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
        return bouncer.dsn
    return pg_server.dsn


RoleDsn = Callable[..., str]


@pytest.fixture(scope="session")
def role_dsn(pg_server: PostgresServer, request: pytest.FixtureRequest) -> RoleDsn:
    """``role_dsn(db, role, password, "NOSUPERUSER ...")``: creates (or alters) a login role and
    returns ``db``'s DSN as that role, through PgBouncer too when the suite runs through it
    (PgBouncer keeps the SCRAM keys of a user it has seen: give a role one password only)."""

    def make(db: str, role: str, password: str, attributes: str = "") -> str:
        verb = "CREATE"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                verb = "ALTER"
            admin.execute(f"{verb} ROLE {role} LOGIN {attributes} PASSWORD '{password}'".encode())
        if via_pgbouncer():
            bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
            bouncer.add_user(role, password)
        return make_conninfo(db, user=role, password=password)

    return make


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
def empty_db(pg_server: PostgresServer, client_dsn: ClientDsn) -> Iterator[str]:
    """DSN of a new, empty database (for migrate tests)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(pg_server, f'CREATE DATABASE "{name}"')
    yield client_dsn(name)
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(pg_server: PostgresServer, template_db: str, client_dsn: ClientDsn) -> Iterator[str]:
    """DSN of a fresh database copied from the migrated template."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield client_dsn(name)
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def conn(db: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(db, **connection_kwargs()) as connection:
        yield connection


@pytest.fixture
async def pool(db: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(
        db, min_size=1, max_size=8, kwargs=connection_kwargs(), open=False
    ) as p:
        yield p
