"""The backlog repository: what is left to do, read from the outbox, retry, dead-letter and
chat-service tables (``sql/queries/status.sql``) for ``status``, the backlog gauges and ``drain``.

Reads only, each on the caller's connection (from ``Database`` or ``open_connection``, which
translate errors); ``runtime.status`` puts them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from worker.db.pool import Conn
from worker.db.queries import q


@dataclass(frozen=True)
class PartitionStatus:
    queue: str
    partition: int
    messages: int  # outbox messages not yet processed (incoming + after the cursor)
    oldest_age_seconds: float | None
    processed_seq: int
    attempts: int
    last_error: str | None
    leased_by: str | None
    lease_expires_in_seconds: float | None


@dataclass(frozen=True)
class RetryStatus:
    queue: str
    due: int
    parked: int
    oldest_age_seconds: float | None
    next_due_in_seconds: float | None  # the next parked (not yet due) one; None if none waits


@dataclass(frozen=True)
class DeadLetterStatus:
    queue: str
    status: str
    count: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class TenantStatus:
    """One tenant's cleanup left: attachment rows (not messages) and vector stores."""

    tenant_id: UUID
    attachments_pending: int
    attachments_failed: int
    vector_stores_left: int


async def _rows(conn: Conn, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(q(name), params)
    return await cur.fetchall()


async def partitions(conn: Conn, queues: Sequence[str]) -> list[PartitionStatus]:
    rows = await _rows(conn, "partition_backlog", {"queues": list(queues)})
    return [PartitionStatus(*row) for row in rows]


async def retries(conn: Conn, queues: Sequence[str]) -> list[RetryStatus]:
    rows = await _rows(conn, "retry_backlog", {"queues": list(queues)})
    return [RetryStatus(*row) for row in rows]


async def dead_letters(conn: Conn, queues: Sequence[str]) -> list[DeadLetterStatus]:
    rows = await _rows(conn, "dead_letter_backlog", {"queues": list(queues)})
    return [DeadLetterStatus(*row) for row in rows]


async def attachment_debt(conn: Conn) -> dict[str, int]:
    """Pending and failed rows, exact and index-backed (the gauges read this every few seconds)."""
    return {status: int(n) for status, n in await _rows(conn, "attachment_debt", {})}


async def attachment_history(conn: Conn, *, exact_up_to: int) -> tuple[dict[str, int], list[str]]:
    """Done and never-started ('none') rows, counted while the table holds at most
    ``exact_up_to`` rows (the planner's count: no scan). On a larger one only done, as the
    planner's estimate (a frequent value: its estimate is close), and the keys estimated;
    never-started rows would be a guess there (soft-deleted and never cleaned are correlated,
    the planner assumes they are not), so they are left to ``reconcile``, which finds their
    files."""
    [(rows,)] = await _rows(conn, "attachments_row_estimate", {})
    if rows > exact_up_to:
        return {"done": await _estimated_rows(conn, "attachments_done")}, ["done"]
    counted = await _rows(conn, "attachment_history_counts", {})
    return {status: int(n) for status, n in counted}, []


async def _estimated_rows(conn: Conn, name: str) -> int:
    """The planner's row estimate for a named statement, which is not run."""
    cur = await conn.execute(b"EXPLAIN (FORMAT JSON) " + q(name))
    [(plan,)] = await cur.fetchall()
    return int(plan[0]["Plan"]["Plan Rows"])


async def outstanding_vector_stores(conn: Conn) -> int:
    return int((await _rows(conn, "outstanding_vector_stores", {}))[0][0])


async def top_tenants(conn: Conn, limit: int) -> list[TenantStatus]:
    return [TenantStatus(*row) for row in await _rows(conn, "tenant_backlog", {"limit": limit})]


async def database_now(conn: Conn) -> datetime:
    """The server's clock: ``drain`` compares row times with it, never with the local clock."""
    [(now,)] = await _rows(conn, "database_now", {})
    assert isinstance(now, datetime)
    return now


async def attachments_failed_since(conn: Conn, since: datetime) -> int:
    rows = await _rows(conn, "attachments_failed_since", {"since": since})
    return int(rows[0][0]) if rows else 0
