"""The reconcile repository (SPEC §14): the rows a provider listing is checked against, the
leaked rows handed back to cleanup, and ``cleanup_worker_reconcile_reports``.

``runtime.reconcile`` classifies and decides; these statements (``sql/queries/reconcile.sql``)
read and write the tables. Each takes a connection from ``Database`` so errors arrive
translated, and ``reset_leaked_attachments`` runs inside the caller's transaction (with the
cleanup messages it enqueues).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

from worker.db.pool import Conn
from worker.db.queries import q
from worker.db.repair import ResetAttachment


@dataclass(frozen=True)
class FileReference:
    """An attachment row that references a listed file, with its chat's state."""

    file_id: str
    attachment_id: UUID
    tenant_id: UUID
    chat_id: UUID
    backend: str
    cleanup_status: str | None
    live: bool
    chat_deleted: bool
    in_flight: bool


class VectorStoreReference(NamedTuple):
    vector_store_id: str
    chat_id: UUID
    tenant_id: UUID
    provider: str
    chat_deleted: bool
    in_flight: bool  # deleted within the grace period: its cleanup may still be running


class LeakedReset(NamedTuple):
    """A leaked file's row put back to pending."""

    row: ResetAttachment
    chat_deleted: bool  # the chat path owns the row: its chat message cleans it


class LatestReport(NamedTuple):
    leaked_files: int
    leaked_vector_stores: int
    unreferenced_files: int
    routes_failed: int
    finished_at: float  # epoch seconds


async def file_references(
    conn: Conn, file_ids: list[str], grace_seconds: float
) -> list[FileReference]:
    params = {"file_ids": file_ids, "grace_seconds": grace_seconds}
    cur = await conn.execute(q("file_references"), params)
    return [FileReference(*row) for row in await cur.fetchall()]


async def vector_store_references(
    conn: Conn, vector_store_ids: list[str], grace_seconds: float
) -> list[VectorStoreReference]:
    params = {"vector_store_ids": vector_store_ids, "grace_seconds": grace_seconds}
    cur = await conn.execute(q("vector_store_references"), params)
    return [VectorStoreReference(*row) for row in await cur.fetchall()]


async def reset_leaked_attachments(conn: Conn, attachment_ids: list[UUID]) -> list[LeakedReset]:
    """Leaked rows back to pending with a fresh attempt budget, while still not live."""
    cur = await conn.execute(q("reconcile_reset_attachments"), {"attachment_ids": attachment_ids})
    return [LeakedReset(ResetAttachment(*row[:6]), row[6]) for row in await cur.fetchall()]


async def deleted_chats(conn: Conn, chat_ids: list[UUID]) -> dict[UUID, UUID]:
    """chat id -> tenant id of those (still) soft-deleted, each once."""
    cur = await conn.execute(q("deleted_chats_of"), {"chat_ids": sorted(set(chat_ids))})
    return {row[0]: row[1] for row in await cur.fetchall()}


async def record_report(conn: Conn, report: dict[str, Any]) -> None:
    """One run's counts and JSON (``record_reconcile_report``)."""
    await conn.execute(q("record_reconcile_report"), report)


async def latest_report(conn: Conn) -> LatestReport | None:
    """The newest report; None while reconcile never ran."""
    cur = await conn.execute(q("latest_reconcile_report"))
    row = await cur.fetchone()
    return LatestReport(*row) if row else None
