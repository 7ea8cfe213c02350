"""The connection pool and the translation of psycopg's connection errors."""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
import psycopg_pool

from worker.config import redact
from worker.db import Conn
from worker.errors import ConfigError, DatabaseUnavailable, SchemaError


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn "cannot reach / lost the database" into DatabaseUnavailable; bugs stay raw."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError(
            f"database schema missing ({_first_line(exc)}): run `cleanup-worker migrate`"
        ) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
        raise DatabaseUnavailable(f"database unavailable: {redact(_first_line(exc))}") from exc


@contextmanager
def missing_privilege_is_config(key: str, hint: str) -> Iterator[None]:
    """The role of ``key``'s DSN lacks a privilege: a configuration error (exit 2) that names
    the key and what to do (``hint``); no retry can grant it."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(f"{key}: {redact(_first_line(exc))}; {hint}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def connection_kwargs() -> dict[str, Any]:
    """Keyword arguments of every connection the worker opens (pools and single ones alike).

    ``autocommit``: transactions are explicit (``conn.transaction()``). ``prepare_threshold``
    None: no server-side prepared statements. Behind PgBouncer in transaction pooling mode
    (Debian's 1.18 has no prepared-statement support) consecutive transactions of one client
    run on different server connections, so psycopg's automatic ``_pg3_N`` statements collide
    (DuplicatePreparedStatement) or vanish; SPEC §13.
    """
    return {"autocommit": True, "prepare_threshold": None}


# A connection handed back to the pool less than this long ago is lent again without a check.
CHECK_IDLE_SECONDS = 2.0


class _RecentlyReturned:
    """Checks a pooled connection (an empty query) only when it has sat idle for a while.

    Checking every checkout cost one extra round trip per statement, i.e. half of all round
    trips on the hot path. A connection just returned after a successful statement is almost
    surely alive; one that broke is discarded by the pool on return (bad status), and a query
    on one that broke since fails as DatabaseUnavailable, which every caller already retries.
    """

    def __init__(self) -> None:
        self._returned_at: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    async def returned(self, conn: Conn) -> None:
        self._returned_at[conn] = time.monotonic()

    async def check(self, conn: Conn) -> None:
        returned_at = self._returned_at.get(conn)
        if returned_at is None or time.monotonic() - returned_at >= CHECK_IDLE_SECONDS:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    timeout_seconds: float = 10.0,
    name: str = "cleanup-worker",
) -> AsyncIterator[psycopg_pool.AsyncConnectionPool]:
    """An autocommit pool; transactions are explicit (``conn.transaction()``).

    ``open(wait=False)``: the daemon must start, and report not-ready, while the database is
    down; the pool keeps reconnecting in the background.
    """
    recent = _RecentlyReturned()
    pool = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_seconds,
        open=False,
        kwargs=connection_kwargs(),
        name=name,
        check=recent.check,
        reset=recent.returned,
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()


# A failed connection attempt carries no SQLSTATE: its text is all there is. These are the
# server's, PgBouncer's and libpq's wordings for "these settings can never work": credentials
# refused (password, SASL/scram, pg_hba, unknown role) and option values libpq rejects.
_MISCONFIGURED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|no password supplied|password is required"
    r"|role \"[^\"]*\" does not exist|invalid \w+ value|Servname not supported",
    re.IGNORECASE,
)


async def connect(dsn: str, *, timeout_seconds: float = 10.0, key: str = "database.dsn") -> Conn:
    """One autocommit connection, for CLI commands that need no pool.

    A DSN the server refuses (or libpq cannot use) raises ConfigError naming ``key``: retrying
    cannot help, so it is exit 2 rather than "database unavailable" (exit 3).
    """
    try:
        with translate_errors():
            return await psycopg.AsyncConnection.connect(
                dsn, connect_timeout=max(1, int(timeout_seconds)), **connection_kwargs()
            )
    except psycopg.ProgrammingError as exc:  # libpq cannot parse it
        raise ConfigError(
            f"{key}: not a usable PostgreSQL DSN: {redact(_first_line(exc))}"
        ) from None
    except DatabaseUnavailable as exc:
        cause = exc.__cause__
        if cause is None or not _MISCONFIGURED.search(str(cause)):
            raise
        raise ConfigError(
            f"{key}: the database refused it ({redact(_first_line(cause))}); "
            "check the user, password and options (password not shown)"
        ) from None
