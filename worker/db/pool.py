"""The connection pool and the one classification of database errors (SPEC §11, §13)."""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Self, TypeAlias

import psycopg
import psycopg_pool
from psycopg.rows import TupleRow

from worker.config import redact_passwords
from worker.errors import ConfigError, DatabaseUnavailable, SchemaError

Conn: TypeAlias = psycopg.AsyncConnection[TupleRow]

# "The database is not usable right now": back off and retry, it will pass (or page someone
# through CleanupWorkerDatabaseDown). By SQLSTATE class, plus single codes of other classes.
UNAVAILABLE_SQLSTATE_CLASSES: Mapping[str, str] = {
    "08": "connection exception (also PgBouncer's own errors, 08P01)",
    "40": "transaction rollback: serialization failure, deadlock",
    "53": "insufficient resources: too many connections, disk full, out of memory",
    "57": "operator intervention: admin/crash shutdown, cannot connect now, query canceled",
    "58": "system error: I/O error",
    "72": "snapshot too old",
}
UNAVAILABLE_SQLSTATES: Mapping[str, str] = {
    "25006": "read-only transaction: failover to a standby or a read-only node",
    "25P03": "idle-in-transaction session timeout: the server closed the session",
    "25P04": "transaction timeout: the server closed the session",
    "55P03": "lock not available (lock_timeout)",
}


def is_unavailable(exc: psycopg.Error) -> bool:
    """Whether ``exc`` means "not usable right now" rather than a bug in the worker.

    Without a SQLSTATE the error is the client's own: a lost or refused connection, a pool
    timeout (OperationalError, InterfaceError). Every other error (syntax, constraint, data,
    internal) is a bug: retrying would loop on it, so the daemon crashes instead.
    """
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in UNAVAILABLE_SQLSTATE_CLASSES or state in UNAVAILABLE_SQLSTATES


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn "the database is not usable now" into DatabaseUnavailable naming the cause; a
    missing table into SchemaError; bugs stay raw."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError(
            f"database schema missing ({_first_line(exc)}): run `cleanup-worker migrate`"
        ) from exc
    except psycopg.Error as exc:
        if not is_unavailable(exc):
            raise
        raise DatabaseUnavailable(f"database unavailable: {describe(exc)}") from exc


def describe(exc: psycopg.Error) -> str:
    """The server's or libpq's reason in one line, with the SQLSTATE when there is one."""
    text = redact_passwords(_first_line(exc))
    return f"{text} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else text


@contextmanager
def missing_privilege_is_config(key: str, hint: str) -> Iterator[None]:
    """The role of ``key``'s DSN lacks a privilege: a configuration error (exit 2) that names
    the key and what to do (``hint``); no retry can grant it."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(f"{key}: {redact_passwords(_first_line(exc))}; {hint}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, to register with the log redactor; None without one, or when
    libpq cannot parse the DSN (``load_config`` rejects those; masked by pattern anyway)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(password) if password else None


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


class Pool(psycopg_pool.AsyncConnectionPool):
    """A pool whose timeout says why it had no connection to give.

    psycopg_pool reconnects in the background and, when a caller's wait runs out, raises only
    "couldn't get a connection after N sec": the reason (refused, no such socket, password,
    server shutting down) went to a library log line, and the worker's logs, ``/readyz`` and
    errors could not name it. This pool remembers the last failed attempt to connect (cleared
    by the next success) and adds it to the timeout.
    """

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        self.connect_failure: str | None = None
        super().__init__(conninfo, connection_class=self._remembering_connection(), **kwargs)

    def _remembering_connection(self) -> type[psycopg.AsyncConnection[Any]]:
        pool = self

        class RememberingConnection(psycopg.AsyncConnection[Any]):
            @classmethod
            async def connect(cls, *args: Any, **kwargs: Any) -> Self:
                try:
                    conn = await super().connect(*args, **kwargs)
                except psycopg.Error as exc:
                    pool.connect_failure = describe(exc)
                    raise
                pool.connect_failure = None
                return conn

        return RememberingConnection

    async def getconn(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg_pool's own signature)
    ) -> psycopg.AsyncConnection[Any]:
        try:
            return await super().getconn(timeout)
        except psycopg_pool.PoolTimeout as exc:
            if self.connect_failure is None:  # busy, not broken: the timeout says it all
                raise
            raise psycopg_pool.PoolTimeout(f"{exc}: {self.connect_failure}") from exc


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    timeout_seconds: float = 10.0,
    name: str = "cleanup-worker",
) -> AsyncIterator[Pool]:
    """An autocommit pool; transactions are explicit (``conn.transaction()``).

    ``open(wait=False)``: the daemon must start, and report not-ready, while the database is
    down; the pool keeps reconnecting in the background.
    """
    recent = _RecentlyReturned()
    pool = Pool(
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
            f"{key}: not a usable PostgreSQL DSN: {redact_passwords(_first_line(exc))}"
        ) from None
    except DatabaseUnavailable as exc:
        cause = exc.__cause__
        if cause is None or not _MISCONFIGURED.search(str(cause)):
            raise
        raise ConfigError(
            f"{key}: the database refused it ({redact_passwords(_first_line(cause))}); "
            "check the user, password and options (password not shown)"
        ) from None
