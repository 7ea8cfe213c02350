"""Deletion receipts (SPEC §14): read them for ``cleanup-worker receipts``, prune old ones.

The handlers write receipts (``sql/queries/cleanup.sql``, in the statement that completes the
row); this module only reads and prunes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from worker.db import AsyncConnectionPool, Conn, Database
from worker.db.queries import q

PRUNE_CHUNK = 5000


@dataclass(frozen=True)
class ReceiptFilter:
    tenant_id: UUID | None = None
    chat_id: UUID | None = None
    attachment_id: UUID | None = None
    since: datetime | None = None
    limit: int = 1000


@dataclass(frozen=True)
class ReceiptRow:
    id: int
    object_kind: str
    object_id: str
    tenant_id: UUID
    chat_id: UUID | None
    attachment_id: UUID | None
    backend: str
    route: str
    http_status: int | None
    outcome: str
    request_id: str | None
    deleted_at: datetime
    worker_id: str

    def as_json(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, UUID | datetime) else v) for k, v in asdict(self).items()
        }


async def list_receipts(conn: Conn, where: ReceiptFilter) -> list[ReceiptRow]:
    """Receipts matching every given filter, newest first, at most ``where.limit``."""
    cur = await conn.execute(q("list_receipts"), asdict(where))
    return [ReceiptRow(*row) for row in await cur.fetchall()]


async def prune_receipts(
    pool: AsyncConnectionPool, *, retention_days: int, chunk: int = PRUNE_CHUNK
) -> int:
    """Delete receipts (and reconcile reports) older than the retention in bounded chunks,
    each its own transaction; returns how many receipts went."""
    params = {"retention_days": retention_days, "limit": chunk}
    total = 0
    async with Database(pool).connection() as conn:
        while True:
            cur = await conn.execute(q("prune_receipts_chunk"), params)
            row = await cur.fetchone()  # autocommit: each chunk commits on its own
            done = int(row[0]) if row else 0
            total += done
            if done < chunk:
                break
        await conn.execute(q("prune_reconcile_reports"), params)
    return total
