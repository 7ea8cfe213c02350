"""The handlers' reads and writes of chat-service rows (``sql/queries/cleanup.sql``).

The two statements every attachment cleanup makes, the take and the mark-done, are set-based:
the calls of concurrently handled messages in one event-loop turn go out as one statement
(``worker.db.batching``), which never waits for a row lock; a row another transaction holds
is then taken or marked by the single-row statement, which waits as before (SPEC §15).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from worker.db import AsyncConnectionPool, Database
from worker.db.batching import MAX_BATCH, Batcher
from worker.db.queries import q
from worker.handlers.payloads import AttachmentDeleted


@dataclass(frozen=True)
class PendingAttachment:
    id: UUID
    tenant_id: UUID
    storage_backend: str
    provider_file_id: str | None
    live: bool  # not soft-deleted and its chat not deleted (the chat was restored)
    file_in_live_use: bool  # another live attachment references the same provider file


@dataclass(frozen=True)
class StoredAttachment:
    """The attachment row as stored: what cleanup acts on, whatever the message says."""

    tenant_id: UUID
    chat_id: UUID
    storage_backend: str
    provider_file_id: str | None
    deleted: bool  # soft-deleted itself (its chat may be deleted too)


@dataclass(frozen=True)
class TakenAttachment:
    row: StoredAttachment | None  # None: the attachment no longer exists (chat purged)
    status: str | None  # cleanup_status after the take
    taken: bool  # passed every check under the row lock and is in cleanup now
    # Both read the message's ids: equal to the row's whenever the row was taken.
    chat_deleted: bool  # the chat is soft-deleted
    file_in_live_use: bool  # another live attachment references the file


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


@dataclass(frozen=True)
class Receipt:
    """What a deletion receipt records (``cleanup_worker_receipts``, SPEC §14), less the time
    and the worker id, which the database and the repository add."""

    object_id: str
    tenant_id: UUID
    chat_id: UUID | None
    backend: str
    route: str
    http_status: int | None
    outcome: Literal["deleted", "already_gone"]
    request_id: str | None


_NO_RECEIPT = dict.fromkeys(
    ("object_id", "tenant_id", "chat_id", "backend", "route", "http_status", "outcome",
     "request_id")
)  # fmt: skip


@dataclass(frozen=True)
class _DoneCall:
    attachment_id: UUID
    note: str | None
    receipt: Receipt | None


def default_worker_id() -> str:
    """Names the process in receipts when the composition root gives no engine worker id."""
    return f"{socket.gethostname()[:200]}-{os.getpid()}"


class CleanupRepository:
    """System-scope access (no tenant filter), as the original repositories' *_system methods.

    ``worker_id`` is written into every deletion receipt (the engine's id, so a receipt and the
    logs of the process that made the delete point at each other).
    """

    def __init__(self, pool: AsyncConnectionPool, *, worker_id: str | None = None):
        self._db = Database(pool)
        self._worker_id = worker_id or default_worker_id()
        self._takes = Batcher(self._take_batch, key=lambda event: event.attachment_id)
        self._marks = Batcher(self._mark_done_batch, key=lambda call: call.attachment_id)

    def _receipt_params(self, receipt: Receipt | None) -> dict[str, Any]:
        # vars(), not asdict(): asdict deep-copies every UUID (3 % of a cleanup's CPU).
        fields = _NO_RECEIPT if receipt is None else vars(receipt)
        return {**fields, "worker_id": self._worker_id}

    async def _rows(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._db.connection() as conn:
            cur = await conn.execute(q(query), params)
            return await cur.fetchall() if cur.description else []

    async def _count(self, query: str, params: dict[str, Any]) -> int:
        async with self._db.connection() as conn:
            cur = await conn.execute(q(query), params)
            return cur.rowcount

    async def chat_is_deleted(self, chat_id: UUID) -> bool:
        rows = await self._rows("chat_is_deleted", {"chat_id": chat_id})
        return bool(rows[0][0])

    async def take_attachment(self, event: AttachmentDeleted) -> TakenAttachment:
        """Read the row the message names and take it into cleanup if it may be: one statement.

        Race safety: the checks (agrees with the message, not live, not done) and the take are
        one UPDATE, a compare-and-set under the row lock. A restore (``deleted_at`` back to
        NULL) committed before the take is seen, and nothing is taken or deleted. A restore
        after the take finds ``cleanup_status`` set: from then on the row belongs to cleanup,
        and a chat service that restores attachments must refuse rows whose cleanup_status is
        not NULL (the upstream never restores); no worker can recall a delete already sent.
        The chat's state and other attachments' references are read as of the statement.

        Concurrent calls share one statement (``take_attachments``); a row it found locked by
        another transaction is taken here by the single-row statement, which waits for it.
        """
        return await self._takes(event) or await self._take_waiting(event)

    async def take_attachments(
        self, events: Sequence[AttachmentDeleted]
    ) -> list[TakenAttachment | None]:
        """``take_attachment`` for a batch's messages, one statement per ``MAX_BATCH`` (the
        attachment handler's batch step); None for a row another transaction held (busy),
        which ``take_attachment`` then waits for. No attachment may appear twice."""
        taken: list[TakenAttachment | None] = []
        for start in range(0, len(events), MAX_BATCH):
            taken += await self._take_batch(events[start : start + MAX_BATCH])
        return taken

    async def _take_batch(
        self, events: Sequence[AttachmentDeleted]
    ) -> list[TakenAttachment | None]:
        """One statement for many takes; None for a row another transaction holds (busy)."""
        params = {
            "attachment_ids": [e.attachment_id for e in events],
            "tenant_ids": [e.tenant_id for e in events],
            "chat_ids": [e.chat_id for e in events],
            "storage_backends": [e.storage_backend for e in events],
            "provider_file_ids": [e.provider_file_id for e in events],
        }
        rows = await self._rows("take_attachments", params)
        return [None if busy else _taken(row) for *row, busy in rows]

    async def _take_waiting(self, event: AttachmentDeleted) -> TakenAttachment:
        params = {
            "attachment_id": event.attachment_id,
            "tenant_id": event.tenant_id,
            "chat_id": event.chat_id,
            "storage_backend": event.storage_backend,
            "provider_file_id": event.provider_file_id,
        }
        [row] = await self._rows("take_attachment", params)
        return _taken(row)

    async def adopt_chat_attachments(self, chat_id: UUID) -> int:
        return await self._count("adopt_chat_attachments", {"chat_id": chat_id})

    async def mark_done(
        self, attachment_id: UUID, *, note: str | None = None, receipt: Receipt | None = None
    ) -> bool:
        """pending/failed -> done; ``note`` says why when the file was kept, not deleted.

        ``receipt`` (the provider confirmed the file gone) is written by the same statement,
        also when no row turned done (a purged chat: the message is the only record).
        Concurrent calls share one statement (``mark_cleanups_done``), as for the take.
        """
        call = _DoneCall(attachment_id, note, receipt)
        done = await self._marks(call)
        if done is None:  # the row was busy: the single-row statement waits for it
            params = {"attachment_id": attachment_id, "note": note, **self._receipt_params(receipt)}
            [(count,)] = await self._rows("mark_cleanup_done", params)
            done = int(count) == 1
        return done

    async def _mark_done_batch(self, calls: Sequence[_DoneCall]) -> list[bool | None]:
        """One statement for many; per call: turned done, or None (busy, not written)."""
        receipts = [self._receipt_params(call.receipt) for call in calls]
        params: dict[str, Any] = {
            "attachment_ids": [call.attachment_id for call in calls],
            "notes": [call.note for call in calls],
            "worker_id": self._worker_id,
        }
        for field, column in _RECEIPT_COLUMNS.items():
            params[column] = [receipt[field] for receipt in receipts]
        rows = await self._rows("mark_cleanups_done", params)
        return [None if busy else bool(done) for done, busy in rows]

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

    async def delete_vector_store_row(
        self, row_id: UUID, *, receipt: Receipt | None = None
    ) -> None:
        """Hard-delete the row; ``receipt`` (the store was deleted) in the same statement."""
        await self._rows("delete_vector_store_row", {"id": row_id, **self._receipt_params(receipt)})


# Receipt fields and the array parameters of mark_cleanups_done that carry them.
_RECEIPT_COLUMNS = {
    "object_id": "object_ids",
    "tenant_id": "tenant_ids",
    "chat_id": "chat_ids",
    "backend": "backends",
    "route": "routes",
    "http_status": "http_statuses",
    "outcome": "outcomes",
    "request_id": "request_ids",
}


def _taken(row: Sequence[Any]) -> TakenAttachment:
    tenant_id, chat_id, backend, file_id, status, deleted, taken, chat_deleted, shared = row
    stored = None
    if tenant_id is not None:
        stored = StoredAttachment(tenant_id, chat_id, backend, file_id, bool(deleted))
    return TakenAttachment(stored, status, bool(taken), bool(chat_deleted), bool(shared))
