"""The connection pool and the translation of psycopg's connection errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
import psycopg_pool

from worker.config import redact
from worker.db import Conn
from worker.errors import DatabaseUnavailable, SchemaError


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@asynccontextmanager
async def open_pool(
    dsn: str, *, min_size: int, max_size: int, timeout_seconds: float = 10.0
) -> AsyncIterator[psycopg_pool.AsyncConnectionPool]:
    """An autocommit pool; transactions are explicit (``conn.transaction()``).

    ``open(wait=False)``: the daemon must start, and report not-ready, while the database is
    down; the pool keeps reconnecting in the background.
    """
    pool = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_seconds,
        open=False,
        kwargs={"autocommit": True},
        name="cleanup-worker",
        check=psycopg_pool.AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()


async def connect(dsn: str, *, timeout_seconds: float = 10.0) -> Conn:
    """One autocommit connection, for CLI commands that need no pool."""
    with translate_errors():
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=max(1, int(timeout_seconds))
        )
