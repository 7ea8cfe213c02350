"""`cleanup-worker retry-failed`: the operator's fix for ``failed`` debt (SPEC §7).

Failed attachments go back to pending with a fresh attempt budget, and cleanup is enqueued
again in the same transaction: a chat-cleanup message for each deleted chat with unfinished
cleanup (its pending files and its vector store), an attachment message for each failed
attachment of a chat that is still active.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from worker.db import Conn
from worker.db.queries import q
from worker.producer import Queues, enqueue_attachment_cleanup, enqueue_chat_cleanup


@dataclass(frozen=True)
class RepairReport:
    attachments_reset: int
    chat_messages: int
    attachment_messages: int


async def retry_failed(conn: Conn, queues: Queues, *, chat_id: UUID | None) -> RepairReport:
    async with conn.transaction():
        cur = await conn.execute(q("reset_failed_attachments"), {"chat_id": chat_id})
        reset = await cur.fetchall()
        cur = await conn.execute(q("deleted_chats_with_debt"), {"chat_id": chat_id})
        chats = {row[0]: row[1] for row in await cur.fetchall()}
        for chat, tenant in chats.items():
            await enqueue_chat_cleanup(conn, queues, tenant_id=tenant, chat_id=chat)
        orphans = [row for row in reset if row[2] not in chats]
        for attachment_id, tenant, chat, file_id, backend, kind in orphans:
            await enqueue_attachment_cleanup(
                conn,
                queues,
                tenant_id=tenant,
                chat_id=chat,
                attachment_id=attachment_id,
                provider_file_id=file_id,
                storage_backend=backend,
                attachment_kind=kind,
            )
    return RepairReport(len(reset), len(chats), len(orphans))
