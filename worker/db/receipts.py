"""The receipts repository (SPEC §14): ``cleanup_worker_receipts`` and the reconcile reports
pruned with them.

The handlers write a receipt in the statement that completes its row (``sql/queries/cleanup.sql``,
through ``handlers.repository``); this lists them for ``cleanup-worker receipts``, prunes old
ones, and writes reconcile's receipts for unreferenced files it deleted (no row to complete).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from worker.db.database import AsyncConnectionPool, Database
from worker.db.pool import Conn
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


async def insert_receipt(conn: Conn, receipt: dict[str, Any]) -> None:
    """A receipt on its own (``insert_receipt``): object, tenant, backend, route, HTTP status,
    outcome, request id, worker id."""
    await conn.execute(q("insert_receipt"), receipt)
