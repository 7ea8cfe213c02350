"""The handlers' reads and writes of chat-service rows (``sql/queries/cleanup.sql``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from worker.db.pool import translate_errors
from worker.db.queries import q


@dataclass(frozen=True)
class PendingAttachment:
    id: UUID
    tenant_id: UUID
    storage_backend: str
    provider_file_id: str | None


@dataclass(frozen=True)
class TakenAttachment:
    status: str | None  # None: the attachment no longer exists
    chat_deleted: bool


@dataclass(frozen=True)
class UnfinishedAttachments:
    pending: int
    failed: int


@dataclass(frozen=True)
class VectorStoreRow:
    id: UUID
    tenant_id: UUID
    vector_store_id: str | None
    provider: str


class CleanupRepository:
    """System-scope access (no tenant filter), as the original repositories' *_system methods."""

    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def _rows(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with translate_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(q(query), params)
                return await cur.fetchall() if cur.description else []

    async def _count(self, query: str, params: dict[str, Any]) -> int:
        with translate_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(q(query), params)
                return cur.rowcount

    async def chat_is_deleted(self, chat_id: UUID) -> bool:
        rows = await self._rows("chat_is_deleted", {"chat_id": chat_id})
        return bool(rows[0][0])

    async def take_attachment(self, attachment_id: UUID, chat_id: UUID) -> TakenAttachment:
        """Takes the attachment into cleanup and reads its chat's state: one round trip, not two."""
        params = {"attachment_id": attachment_id, "chat_id": chat_id}
        [(status, chat_deleted)] = await self._rows("take_attachment", params)
        return TakenAttachment(status, bool(chat_deleted))

    async def adopt_chat_attachments(self, chat_id: UUID) -> int:
        return await self._count("adopt_chat_attachments", {"chat_id": chat_id})

    async def mark_done(self, attachment_id: UUID) -> bool:
        return await self._count("mark_cleanup_done", {"attachment_id": attachment_id}) == 1

    async def record_attempt(
        self, attachment_id: UUID, error: str, *, max_attempts: int, permanent: bool = False
    ) -> str | None:
        """Count a failed attempt: 'pending', 'failed', or None if it was no longer pending."""
        params = {
            "attachment_id": attachment_id,
            "error": error,
            "max_attempts": max_attempts,
            "permanent": permanent,
        }
        rows = await self._rows("record_cleanup_attempt", params)
        return rows[0][0] if rows else None

    async def pending_attachments(self, chat_id: UUID) -> list[PendingAttachment]:
        rows = await self._rows("pending_attachments_of_chat", {"chat_id": chat_id})
        return [PendingAttachment(*row) for row in rows]

    async def unfinished_attachments(self, chat_id: UUID) -> UnfinishedAttachments:
        """Pending and failed counts in one round trip (the re-check before a store delete)."""
        params = {"chat_id": chat_id}
        [(pending, failed)] = await self._rows("unfinished_attachments_of_chat", params)
        return UnfinishedAttachments(int(pending), int(failed))

    async def vector_store(self, chat_id: UUID) -> VectorStoreRow | None:
        rows = await self._rows("vector_store_of_chat", {"chat_id": chat_id})
        return VectorStoreRow(*rows[0]) if rows else None

    async def delete_vector_store_row(self, row_id: UUID) -> None:
        await self._count("delete_vector_store_row", {"id": row_id})
