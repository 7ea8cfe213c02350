"""Rows of the chat service's tables (chats, attachments, vector stores, message links) for tests.

Every helper takes an autocommit (or in-transaction) AsyncConnection and returns what it wrote,
with random ids unless given. Defaults produce a live, uploaded row; pass ``deleted_at``,
``cleanup_status`` and the like to build other states.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from worker.db import Conn


class _Auto:
    """Sentinel: generate a value (distinct from an explicit None, which stores NULL)."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()


@dataclass(frozen=True)
class Chat:
    id: UUID
    tenant_id: UUID
    user_id: UUID


@dataclass(frozen=True)
class Attachment:
    id: UUID
    chat_id: UUID
    tenant_id: UUID
    uploaded_by_user_id: UUID
    provider_file_id: str | None
    storage_backend: str
    attachment_kind: str


@dataclass(frozen=True)
class VectorStore:
    id: UUID
    chat_id: UUID
    tenant_id: UUID
    vector_store_id: str | None
    provider: str


async def create_chat(
    conn: Conn,
    tenant_id: UUID | None = None,
    user_id: UUID | None = None,
    *,
    chat_id: UUID | None = None,
    model: str = "gpt-4o",
    title: str | None = "a chat",
    deleted_at: datetime | None = None,
) -> Chat:
    chat = Chat(chat_id or uuid.uuid4(), tenant_id or uuid.uuid4(), user_id or uuid.uuid4())
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO chats (id, tenant_id, user_id, model, title, created_at, updated_at,"
        " deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (chat.id, chat.tenant_id, chat.user_id, model, title, now, now, deleted_at),
    )
    return chat


async def create_attachment(
    conn: Conn,
    chat_id: UUID,
    tenant_id: UUID,
    provider_file_id: str | None = AUTO,
    storage_backend: str = "openai",
    kind: str = "document",
    *,
    attachment_id: UUID | None = None,
    uploaded_by_user_id: UUID | None = None,
    status: str = "ready",
    filename: str = "report.pdf",
    content_type: str = "application/pdf",
    size_bytes: int = 1024,
    for_file_search: bool = False,
    cleanup_status: str | None = None,
    cleanup_attempts: int = 0,
    deleted_at: datetime | None = None,
) -> Attachment:
    """An attachment of ``chat_id``; uploaded by the chat's owner unless told otherwise.

    ``provider_file_id`` defaults to a fresh ``file-…`` id; pass None for a NULL column.
    """
    if provider_file_id is AUTO:
        provider_file_id = f"file-{uuid.uuid4().hex[:24]}"
    if uploaded_by_user_id is None:
        cur = await conn.execute("SELECT user_id FROM chats WHERE id = %s", (chat_id,))
        row = await cur.fetchone()
        if row is None:
            raise LookupError(f"chat {chat_id} does not exist: create it first")
        uploaded_by_user_id = row[0]
    attachment = Attachment(
        attachment_id or uuid.uuid4(), chat_id, tenant_id, uploaded_by_user_id,
        provider_file_id, storage_backend, kind,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename,"
        " content_type, size_bytes, storage_backend, provider_file_id, status,"
        " attachment_kind, for_file_search, cleanup_status, cleanup_attempts, created_at,"
        " deleted_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s)",
        (
            attachment.id, tenant_id, chat_id, uploaded_by_user_id, filename, content_type,
            size_bytes, storage_backend, provider_file_id, status, kind, for_file_search,
            cleanup_status, cleanup_attempts, deleted_at,
        ),
    )  # fmt: skip
    return attachment


async def create_vector_store(
    conn: Conn,
    chat_id: UUID,
    tenant_id: UUID,
    vector_store_id: str | None = AUTO,
    provider: str = "openai",
    *,
    file_count: int = 0,
) -> VectorStore:
    """The chat's vector-store row; ``provider`` holds the storage-backend label."""
    if vector_store_id is AUTO:
        vector_store_id = f"vs_{uuid.uuid4().hex[:24]}"
    store = VectorStore(uuid.uuid4(), chat_id, tenant_id, vector_store_id, provider)
    await conn.execute(
        "INSERT INTO chat_vector_stores (id, tenant_id, chat_id, vector_store_id, provider,"
        " file_count, created_at) VALUES (%s, %s, %s, %s, %s, %s, now())",
        (store.id, tenant_id, chat_id, vector_store_id, provider, file_count),
    )
    return store


async def link_message(
    conn: Conn,
    chat_id: UUID,
    tenant_id: UUID,
    attachment_id: UUID,
    message_id: UUID | None = None,
) -> UUID:
    """Reference an attachment from a message (blocks its soft-delete); returns the message id."""
    message_id = message_id or uuid.uuid4()
    await conn.execute(
        "INSERT INTO message_attachments (tenant_id, chat_id, message_id, attachment_id)"
        " VALUES (%s, %s, %s, %s)",
        (tenant_id, chat_id, message_id, attachment_id),
    )
    return message_id


async def fetch_chat(conn: Conn, chat_id: UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM chats WHERE id = %s", (chat_id,))
        return await cur.fetchone()


async def fetch_attachment(conn: Conn, attachment_id: UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM attachments WHERE id = %s", (attachment_id,))
        return await cur.fetchone()


async def fetch_vector_store(conn: Conn, chat_id: UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM chat_vector_stores WHERE chat_id = %s", (chat_id,))
        return await cur.fetchone()
