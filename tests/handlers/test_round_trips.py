"""Round trips per cleanup: every statement the handlers send, by name, recorded at the pool.

Each statement costs a round trip plus ~0.1 ms of worker CPU (docs/PERFORMANCE.md), so the
count is pinned here without timing anything: reading a chat's state together with taking the
attachment, and the pending re-check together with the failed count, must not come apart again.
"""

from __future__ import annotations

import asyncio
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
from worker.models import CallSlotHandler, Message, Ok, Reject, Retry, RetryReason, hold_slot
from worker.observability.metrics import Metrics
from worker.providers.results import Deleted, DeleteResult

NOW = datetime.now(UTC)
AQ = "mini-chat.attachment_cleanup"
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
    """Was three: ``chat_is_deleted`` now rides on the take."""
    ctx, statements = context(pool, Provider())
    msg = await attachment_message(conn, await create_chat(conn))

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachments", "mark_cleanups_done"]


async def test_attachment_without_a_file_is_finished_by_its_take(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Nothing to delete: the take itself turns the row done (was take, then mark-done)."""
    ctx, statements = context(pool, Provider())
    msg = await attachment_message(conn, await create_chat(conn), file_id=None)

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachments"]
    attachment_id = json.loads(msg.payload)["attachment_id"]
    cur = await conn.execute(
        "SELECT cleanup_status, cleanup_updated_at IS NOT NULL FROM attachments WHERE id = %s",
        (attachment_id,),
    )
    assert await cur.fetchone() == ("done", True)


async def test_a_batchs_messages_without_files_are_settled_by_one_statement(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """``prepare`` (the engine's batch step): the 4 rows without a file are done by one
    statement; the 2 messages with files are left to their handling, untouched."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    messages = [await attachment_message(conn, chat, file_id=None) for _ in range(4)]
    messages += [await attachment_message(conn, chat, file_id=f"file-{n}") for n in range(2)]
    handler = AttachmentCleanupHandler(ctx)

    prepared = await handler.prepare(messages)

    assert statements == ["take_attachments"]
    assert [p.outcome if p is not None else None for p in prepared] == [Ok()] * 4 + [None] * 2
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE cleanup_status = 'done'),"
        " count(*) FILTER (WHERE cleanup_status IS NULL) FROM attachments"
    )
    assert await cur.fetchone() == (4, 2)
    assert provider.files_deleted == []
    first = json.loads(messages[0].payload)
    assert prepared[0] is not None
    assert prepared[0].log == {key: first[key] for key in ("tenant_id", "chat_id", "attachment_id")}


async def test_what_a_batch_step_leaves_to_each_messages_own_handling(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Not settled: an invalid payload (its handling rejects it), a second message for the
    same attachment (one statement names a row once), a row another transaction holds, a
    message that disagrees with its row (its handling says why)."""
    ctx, statements = context(pool, Provider())
    chat = await create_chat(conn)
    first, held = [await attachment_message(conn, chat, file_id=None) for _ in range(2)]
    invalid = message("mini-chat.attachment_cleanup", {"event_type": "attachment_deleted"})
    with_file = await attachment_message(conn, chat)
    lying = message(AQ, {**json.loads(with_file.payload), "provider_file_id": None})
    handler = AttachmentCleanupHandler(ctx)
    async with pool.connection() as holder, holder.transaction():
        held_id = json.loads(held.payload)["attachment_id"]
        await holder.execute("SELECT 1 FROM attachments WHERE id = %s FOR UPDATE", (held_id,))
        prepared = await handler.prepare([first, invalid, first, held, lying])

    assert statements == ["take_attachments"]
    assert [p is not None for p in prepared] == [True, False, False, False, False]
    assert isinstance(await handler(invalid), Reject)
    assert await handler(held) == Ok()  # takes its row itself, now that it is free
    refused = await handler(lying)
    assert isinstance(refused, Reject)
    assert "disagrees with its row" in refused.reason


async def test_attachment_of_a_deleted_chat_takes_one_statement(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    ctx, statements = context(pool, Provider())
    msg = await attachment_message(conn, await create_chat(conn, deleted_at=NOW))

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachments"]


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
        "mark_cleanups_done",  # both files' rows: their deletes answered in one turn
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
    """The row checks (live, agrees with the message) ride on the take too."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    msg = await attachment_message(conn, chat)
    await conn.execute("UPDATE attachments SET deleted_at = NULL")  # live again

    outcome = await AttachmentCleanupHandler(ctx)(msg)

    assert isinstance(outcome, Reject)
    assert statements == ["take_attachments"]
    assert provider.files_deleted == []


async def test_file_kept_for_a_live_reference_takes_two_statements(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The live-reference check rides on the take; keeping the file is one update."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    msg = await attachment_message(conn, chat)
    await create_attachment(conn, chat.id, chat.tenant_id, "file-1")  # live, same file

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert statements == ["take_attachments", "mark_cleanups_done"]
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


async def test_concurrent_attachment_cleanups_share_two_statements(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Set-based (SPEC §15): the messages of a batch, handled at once, take their rows in one
    statement and mark them done in one, not two statements each."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    messages = [await attachment_message(conn, chat, file_id=f"file-{n}") for n in range(20)]

    handler = AttachmentCleanupHandler(ctx)
    outcomes = await asyncio.gather(*(handler(m) for m in messages))

    assert outcomes == [Ok()] * 20
    assert statements == ["take_attachments", "mark_cleanups_done"]
    assert sorted(provider.files_deleted) == sorted(f"file-{n}" for n in range(20))
    cur = await conn.execute("SELECT cleanup_status, count(*) FROM attachments GROUP BY 1")
    assert await cur.fetchall() == [("done", 20)]
    cur = await conn.execute("SELECT count(*) FROM cleanup_worker_receipts")
    assert await cur.fetchone() == (20,)


async def test_a_row_another_transaction_holds_is_taken_by_the_waiting_statement(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The batch statement never waits for a lock (so it cannot deadlock with a chat-service
    transaction that holds several rows); the row it skipped is taken by the single-row
    statement, which waits for the holder and then sees the row as it committed."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn)
    held, free = [await attachment_message(conn, chat, file_id=f"file-{n}") for n in range(2)]
    held_id = json.loads(held.payload)["attachment_id"]

    handler = AttachmentCleanupHandler(ctx)
    async with pool.connection() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM attachments WHERE id = %s FOR UPDATE", (held_id,))
        waiting = asyncio.ensure_future(handler(held))
        assert await handler(free) == Ok()  # not held up by the other row
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the single-row take waits for the holder
        assert statements[0] == "take_attachments"
        assert "take_attachment" in statements
    assert await waiting == Ok()
    assert provider.files_deleted == ["file-1", "file-0"]
    cur = await conn.execute("SELECT count(*) FROM attachments WHERE cleanup_status = 'done'")
    assert await cur.fetchone() == (2,)


async def test_a_busy_row_is_marked_done_by_the_waiting_statement_with_one_receipt(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Mark-done skips a row another transaction holds: neither its update nor its receipt is
    written by the batch; the single-row statement writes both once the holder is done."""
    chat = await create_chat(conn)
    msg = await attachment_message(conn, chat)
    att_id = json.loads(msg.payload)["attachment_id"]
    release = asyncio.Event()
    held = asyncio.Event()
    holders: list[asyncio.Future[None]] = []

    async def hold_the_row() -> None:  # during the delete: another writer locks the row
        async def holder_transaction() -> None:
            async with pool.connection() as other, other.transaction():
                await other.execute("SELECT 1 FROM attachments WHERE id = %s FOR UPDATE", (att_id,))
                held.set()
                await release.wait()

        holders.append(asyncio.ensure_future(holder_transaction()))
        await held.wait()
        asyncio.get_running_loop().call_later(0.2, release.set)

    provider = Provider(during_delete=hold_the_row)
    ctx, statements = context(pool, provider)

    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()
    await asyncio.gather(*holders)

    assert statements == ["take_attachments", "mark_cleanups_done", "mark_cleanup_done"]
    cur = await conn.execute("SELECT cleanup_status FROM attachments WHERE id = %s", (att_id,))
    assert await cur.fetchone() == ("done",)
    cur = await conn.execute("SELECT count(*) FROM cleanup_worker_receipts")
    assert await cur.fetchone() == (1,)


@dataclass
class RecordingSlot:
    """A handling's slot (``models.Slot``) that notes what had run when it was taken or freed."""

    statements: list[str]
    files_deleted: list[str]
    held: bool = False
    events: list[str] = field(default_factory=list)

    async def acquire(self) -> None:
        self.held = True
        self.events.append(f"acquire after {self.statements} {self.files_deleted}")

    def release(self) -> None:
        self.held = False
        self.events.append(f"release after {self.statements} {self.files_deleted}")


async def test_an_attachment_cleanup_holds_its_slot_only_around_its_delete(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The slot rations provider calls (SPEC §15): the take before the delete and the row
    write after it run while other messages call."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    msg = await attachment_message(conn, await create_chat(conn))
    slot = RecordingSlot(statements, provider.files_deleted)
    hold_slot(slot)

    assert isinstance(AttachmentCleanupHandler(ctx), CallSlotHandler)
    assert await AttachmentCleanupHandler(ctx)(msg) == Ok()

    assert slot.events == [
        "acquire after ['take_attachments'] []",
        "release after ['take_attachments'] ['file-1']",
    ]
    assert statements == ["take_attachments", "mark_cleanups_done"]


async def test_a_chat_cleanup_holds_its_slot_through_its_many_calls(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Not a CallSlotHandler: the engine gives it its slot for the whole handling, and the
    deletes inside leave it held."""
    provider = Provider()
    ctx, statements = context(pool, provider)
    chat = await create_chat(conn, deleted_at=NOW)
    for n in range(3):
        await create_attachment(conn, chat.id, chat.tenant_id, f"file-{n}", deleted_at=NOW)
    slot = RecordingSlot(statements, provider.files_deleted, held=True)
    hold_slot(slot)

    handler = ChatCleanupHandler(ctx, file_concurrency=2)
    assert not isinstance(handler, CallSlotHandler)
    assert await handler(chat_message(chat)) == Ok()

    assert sorted(provider.files_deleted) == ["file-0", "file-1", "file-2"]
    assert (slot.held, slot.events) == (True, [])
