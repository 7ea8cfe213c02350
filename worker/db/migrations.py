"""Migration bookkeeping the driver must see: concurrent index builds and their races.

``runtime.migrate`` decides what to build and when (the catalog is the coordination); this
runs one build and says how it ended, so that psycopg's exceptions stay in ``worker.db``.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from worker.db.pool import Conn
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
