"""The chat service's delete flows, each one transaction: soft-delete + cleanup message.

Mirrors the seed (``attachment_service.rs`` and ``delete_chat``): a repeated delete is a no-op,
an attachment referenced by a message is refused, and a failed enqueue rolls the soft-delete
back. Used by Python producers, the tests and the demo.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from worker.config import Queues as Queues  # the pair producers enqueue to, defined by the config
from worker.db import Conn
from worker.db.queries import q
from worker.errors import AttachmentLocked, Forbidden, NotFound
from worker.outbox.enqueue import enqueue
from worker.outbox.queues import partition_for


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def delete_attachment(
    conn: Conn,
    queues: Queues,
    *,
    tenant_id: UUID,
    chat_id: UUID,
    attachment_id: UUID,
    user_id: UUID,
) -> bool:
    """Soft-delete one attachment and enqueue ``attachment_deleted``; False if already deleted."""
    async with conn.transaction():
        await _require_owned_chat(conn, tenant_id=tenant_id, chat_id=chat_id, user_id=user_id)
        row = await _attachment(conn, tenant_id, attachment_id)
        if row is None or row[1] != chat_id:
            raise NotFound(f"attachment {attachment_id} not found in chat {chat_id}")
        _, _, uploaded_by, provider_file_id, storage_backend, kind, deleted_at = row
        if uploaded_by != user_id:
            raise Forbidden(f"attachment {attachment_id} was uploaded by another user")
        if deleted_at is not None:
            return False
        cur = await conn.execute(
            q("soft_delete_attachment"), {"attachment_id": attachment_id, "tenant_id": tenant_id}
        )
        if cur.rowcount == 0:
            return await _explain_no_delete(conn, tenant_id, attachment_id)
        await enqueue_attachment_cleanup(
            conn,
            queues,
            tenant_id=tenant_id,
            chat_id=chat_id,
            attachment_id=attachment_id,
            provider_file_id=provider_file_id,
            storage_backend=storage_backend,
            attachment_kind=kind,
        )
    return True


async def delete_chat(
    conn: Conn, queues: Queues, *, tenant_id: UUID, chat_id: UUID, user_id: UUID
) -> UUID:
    """Soft-delete a chat, mark its attachments pending, enqueue ``chat_soft_delete``.

    Returns the event's ``system_request_id``. A second delete raises NotFound, as the original.
    """
    async with conn.transaction():
        params = {"chat_id": chat_id, "tenant_id": tenant_id, "user_id": user_id}
        cur = await conn.execute(q("soft_delete_chat"), params)
        if await cur.fetchone() is None:
            raise NotFound(f"chat {chat_id} not found")
        await conn.execute(q("mark_attachments_pending_for_chat"), {"chat_id": chat_id})
        request_id = await enqueue_chat_cleanup(conn, queues, tenant_id=tenant_id, chat_id=chat_id)
    return request_id


async def enqueue_attachment_cleanup(
    conn: Conn,
    queues: Queues,
    *,
    tenant_id: UUID,
    chat_id: UUID,
    attachment_id: UUID,
    provider_file_id: str | None,
    storage_backend: str,
    attachment_kind: str,
) -> None:
    """An ``attachment_deleted`` event as the original producer writes it (upstream §3.2)."""
    event = {
        "event_type": "attachment_deleted",
        "tenant_id": str(tenant_id),
        "chat_id": str(chat_id),
        "attachment_id": str(attachment_id),
        "provider_file_id": provider_file_id,
        "vector_store_id": None,
        "storage_backend": storage_backend,
        "attachment_kind": attachment_kind,
        "deleted_at": _now(),
    }
    partition = partition_for(tenant_id, queues.attachment_partitions)
    await enqueue(conn, queues.attachment_queue, partition, json.dumps(event).encode())


async def enqueue_chat_cleanup(
    conn: Conn, queues: Queues, *, tenant_id: UUID, chat_id: UUID
) -> UUID:
    """A ``chat_soft_delete`` event (upstream §3.3); returns its ``system_request_id``."""
    request_id = uuid.uuid4()
    event = {
        "reason": "chat_soft_delete",
        "tenant_id": str(tenant_id),
        "chat_id": str(chat_id),
        "system_request_id": str(request_id),
        "chat_deleted_at": _now(),
    }
    partition = partition_for(chat_id, queues.chat_partitions)
    await enqueue(conn, queues.chat_queue, partition, json.dumps(event).encode())
    return request_id


async def _require_owned_chat(conn: Conn, *, tenant_id: UUID, chat_id: UUID, user_id: UUID) -> None:
    params = {"chat_id": chat_id, "tenant_id": tenant_id, "user_id": user_id}
    cur = await conn.execute(q("owned_active_chat"), params)
    if await cur.fetchone() is None:
        raise NotFound(f"chat {chat_id} not found")


async def _attachment(conn: Conn, tenant_id: UUID, attachment_id: UUID) -> tuple[Any, ...] | None:
    params = {"attachment_id": attachment_id, "tenant_id": tenant_id}
    cur = await conn.execute(q("attachment_in_tenant"), params)
    return await cur.fetchone()


async def _explain_no_delete(conn: Conn, tenant_id: UUID, attachment_id: UUID) -> bool:
    """The guarded UPDATE matched nothing: deleted concurrently (fine) or referenced (409)."""
    row = await _attachment(conn, tenant_id, attachment_id)
    if row is not None and row[6] is None:
        raise AttachmentLocked(
            f"attachment {attachment_id} is referenced by one or more messages "
            "and cannot be deleted"
        )
    return False
