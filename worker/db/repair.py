"""The repair repository (``cleanup-worker retry-failed``, ``sql/queries/repair.sql``): failed
rows back to pending, the chats with cleanup left, and pending dead letters read against the
rows they name, then resolved.

Every function runs on the caller's connection, inside the caller's transaction: the repair is
one transaction (``runtime.repair``), with the messages it enqueues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

from worker.db.pool import Conn
from worker.db.queries import q


class ResetAttachment(NamedTuple):
    """A row put back to pending: what its attachment-cleanup message carries (the fields
    are ``producer.enqueue_attachment_cleanup``'s keywords)."""

    attachment_id: UUID
    tenant_id: UUID
    chat_id: UUID
    provider_file_id: str | None
    storage_backend: str
    attachment_kind: str


class PendingDeadLetter(NamedTuple):
    id: int
    queue: str
    payload: bytes
    payload_type: str


class ChatCleanupState(NamedTuple):
    tenant_id: UUID
    deleted: bool
    unfinished: bool  # an attachment not done, or its vector-store row left


class AttachmentCleanupState(NamedTuple):
    tenant_id: UUID
    chat_id: UUID
    provider_file_id: str | None
    cleanup_status: str | None
    deleted: bool  # itself or its chat


async def reset_failed_attachments(conn: Conn, chat_id: UUID | None) -> list[ResetAttachment]:
    """failed -> pending with a fresh attempt budget (of one chat, or all)."""
    cur = await conn.execute(q("reset_failed_attachments"), {"chat_id": chat_id})
    return [ResetAttachment(*row) for row in await cur.fetchall()]


async def deleted_chats_with_debt(conn: Conn, chat_id: UUID | None) -> dict[UUID, UUID]:
    """chat id -> tenant id of deleted chats whose cleanup is unfinished."""
    cur = await conn.execute(q("deleted_chats_with_debt"), {"chat_id": chat_id})
    return {row[0]: row[1] for row in await cur.fetchall()}


async def pending_dead_letters(conn: Conn, queues: Sequence[str]) -> list[PendingDeadLetter]:
    cur = await conn.execute(q("pending_dead_letters_of_queues"), {"queues": list(queues)})
    return [
        PendingDeadLetter(dead_letter_id, queue, bytes(payload), payload_type)
        for dead_letter_id, queue, payload, payload_type in await cur.fetchall()
    ]


async def chat_cleanup_states(conn: Conn, chat_ids: Sequence[UUID]) -> dict[UUID, ChatCleanupState]:
    """Per existing chat; a chat that no longer exists is absent."""
    cur = await conn.execute(q("chat_cleanup_states"), {"chat_ids": list(chat_ids)})
    return {row[0]: ChatCleanupState(*row[1:]) for row in await cur.fetchall()}


async def attachment_cleanup_states(
    conn: Conn, attachment_ids: Sequence[UUID]
) -> dict[UUID, AttachmentCleanupState]:
    """Per existing row; a row purged with its chat is absent."""
    cur = await conn.execute(
        q("attachment_cleanup_states"), {"attachment_ids": list(attachment_ids)}
    )
    return {row[0]: AttachmentCleanupState(*row[1:]) for row in await cur.fetchall()}


async def resolve_dead_letters(conn: Conn, ids: Sequence[int]) -> int:
    """pending -> resolved; how many were still pending."""
    cur = await conn.execute(q("resolve_dead_letters"), {"ids": list(ids)})
    return len(await cur.fetchall())
