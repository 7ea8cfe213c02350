"""Round trips per cleanup: every statement the handlers send, by name, recorded at the pool.

Each statement costs a round trip plus ~0.1 ms of worker CPU (docs/PERFORMANCE.md), so the
count is pinned here without timing anything: reading a chat's state together with taking the
attachment, and the pending re-check together with the failed count, must not come apart again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from factories import Chat, create_attachment, create_chat, create_vector_store, fetch_vector_store
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from worker.db import Conn
from worker.db.queries import queries
from worker.handlers.attachment import AttachmentCleanupHandler
from worker.handlers.chat import ChatCleanupHandler
from worker.handlers.files import CleanupContext
from worker.handlers.repository import CleanupRepository
from worker.models import Message, Ok, Reject, Retry, RetryReason
from worker.observability.metrics import Metrics
from worker.providers.results import Deleted, DeleteResult

NOW = datetime.now(UTC)
NAMES = {query.text.encode(): name for name, query in queries().items()}


Hook = Callable[[], Awaitable[None]]


@dataclass
class _RecordingConnection:
    conn: Conn
    statements: list[str]
    after: dict[str, Hook]

    async def execute(self, query: bytes, params: dict[str, Any]) -> AsyncCursor[Any]:
        name = NAMES[query]
        self.statements.append(name)
        cursor = await self.conn.execute(query, params)
        if name in self.after:
            await self.after[name]()  # a concurrent writer, right after this statement
        return cursor


class RecordingPool:
    """Lends the real pool's connections and records the name of every statement executed."""

    def __init__(self, pool: AsyncConnectionPool, *, after: dict[str, Hook] | None = None):
        self._pool = pool
        self._after = after or {}
        self.statements: list[str] = []

    @asynccontextmanager
    async def connection(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (the pool's signature)
    ) -> AsyncIterator[_RecordingConnection]:
        async with self._pool.connection(timeout=timeout) as conn:
            yield _RecordingConnection(conn, self.statements, self._after)


@dataclass
class Provider:
    """Deletes succeed; ``during_delete`` runs inside each file delete (a concurrent writer)."""

    during_delete: Callable[[], Awaitable[None]] | None = None
    files_deleted: list[str] = field(default_factory=list)
    vector_stores_deleted: list[str] = field(default_factory=list)

    async def delete_file(self, tenant_id: UUID, label: str, file_id: str) -> DeleteResult:
        self.files_deleted.append(file_id)
        if self.during_delete is not None:
            await self.during_delete()
        return Deleted()

    async def delete_vector_store(self, tenant_id: UUID, label: str, vs_id: str) -> DeleteResult:
        self.vector_stores_deleted.append(vs_id)
        return Deleted()


def context(pool: AsyncConnectionPool, provider: Provider) -> tuple[CleanupContext, list[str]]:
    recording = RecordingPool(pool)
    repo = CleanupRepository(cast(AsyncConnectionPool, recording))
    return CleanupContext(repo, provider, Metrics(), max_attempts=5), recording.statements


def message(queue: str, event: dict[str, Any]) -> Message:
    return Message(queue, 0, 1, json.dumps(event).encode(), "application/json", NOW, 1)


async def attachment_message(conn: Conn, chat: Chat, *, file_id: str | None = "file-1") -> Message:
    att = await create_attachment(conn, chat.id, chat.tenant_id, file_id, deleted_at=NOW)
    return message(
        "mini-chat.attachment_cleanup",
        {
            "event_type": "attachment_deleted",
            "tenant_id": str(chat.tenant_id),
            "chat_id": str(chat.id),
            "attachment_id": str(att.id),
            "provider_file_id": file_id,
            "storage_backend": "openai",
            "attachment_kind": "document",
        },
    )


def chat_message(chat: Chat) -> Message:
    return message(
        "mini-chat.chat_cleanup",
        {
            "reason": "chat_soft_delete",
            "tenant_id": str(chat.tenant_id),
            "chat_id": str(chat.id),
            "system_request_id": str(uuid.uuid4()),
        },
    )


async def test_attachment_cleanup_takes_two_statements(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Was three: ``chat_is_deleted`` now rides on ``take_attachment``."""
    ctx, statements = context(pool, Provider())
    msg = await attachment_message(conn, await create_chat(conn))

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachment", "mark_cleanup_done"]


async def test_attachment_of_a_deleted_chat_takes_one_statement(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    ctx, statements = context(pool, Provider())
    msg = await attachment_message(conn, await create_chat(conn, deleted_at=NOW))

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachment"]


async def test_chat_cleanup_reads_pending_attachments_once(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Was 7 + one per file: the re-check before the store delete reads counts with ``failed``."""
    ctx, statements = context(pool, Provider())
    chat = await create_chat(conn, deleted_at=NOW)
    for _ in range(2):
        await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    await create_vector_store(conn, chat.id, chat.tenant_id, "vs_1")

    assert await ChatCleanupHandler(ctx, file_concurrency=2)(chat_message(chat)) == Ok()

    assert statements == [
        "chat_is_deleted",
        "adopt_chat_attachments",
        "pending_attachments_of_chat",
        "mark_cleanup_done",
        "mark_cleanup_done",
        "vector_store_of_chat",
        "unfinished_attachments_of_chat",
        "delete_vector_store_row",
    ]


async def test_attachment_pending_again_still_holds_back_the_vector_store(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The re-check survives the merge: a file taken into cleanup meanwhile keeps the store."""
    chat = await create_chat(conn, deleted_at=NOW)
    await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    await create_vector_store(conn, chat.id, chat.tenant_id, "vs_1")

    async def attachment_taken_meanwhile() -> None:
        await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")

    provider = Provider(during_delete=attachment_taken_meanwhile)
    ctx, _ = context(pool, provider)

    outcome = await ChatCleanupHandler(ctx, file_concurrency=1)(chat_message(chat))

    assert outcome == Retry(RetryReason.PENDING, "attachments became pending again")
    assert provider.vector_stores_deleted == []
    assert await fetch_vector_store(conn, chat.id) is not None


async def test_message_naming_a_live_attachment_takes_one_statement(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The row checks (live, agrees with the message) ride on ``take_attachment`` too."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    msg = await attachment_message(conn, chat)
    await conn.execute("UPDATE attachments SET deleted_at = NULL")  # live again

    outcome = await AttachmentCleanupHandler(ctx)(msg)

    assert isinstance(outcome, Reject)
    assert statements == ["take_attachment"]
    assert provider.files_deleted == []


async def test_file_kept_for_a_live_reference_takes_two_statements(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The live-reference check rides on ``take_attachment``; keeping the file is one update."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    msg = await attachment_message(conn, chat)
    await create_attachment(conn, chat.id, chat.tenant_id, "file-1")  # live, same file

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachment", "mark_cleanup_done"]
    assert provider.files_deleted == []


async def test_chat_restored_after_its_check_deletes_nothing(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Restored between ``chat_is_deleted`` and the pending list: its files are live again."""
    chat = await create_chat(conn, deleted_at=NOW)
    await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    await create_vector_store(conn, chat.id, chat.tenant_id, "vs_1")

    async def restore() -> None:
        await conn.execute("UPDATE chats SET deleted_at = NULL WHERE id = %s", (chat.id,))

    provider = Provider()
    recording = RecordingPool(pool, after={"adopt_chat_attachments": restore})
    repo = CleanupRepository(cast(AsyncConnectionPool, recording))
    ctx = CleanupContext(repo, provider, Metrics(), max_attempts=5)

    outcome = await ChatCleanupHandler(ctx, file_concurrency=2)(chat_message(chat))

    assert isinstance(outcome, Reject)
    assert outcome.reason.startswith("chat restored during cleanup: 1 attachment(s) live again")
    assert provider.files_deleted == []
    assert provider.vector_stores_deleted == []
    assert await fetch_vector_store(conn, chat.id) is not None
