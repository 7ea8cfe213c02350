"""The handlers' SQL (``sql/queries/cleanup.sql`` via ``CleanupRepository``) on real rows.

Upstream §7.7 planned these repository tests but never wrote them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from factories import (
    create_attachment,
    create_chat,
    create_vector_store,
    fetch_attachment,
    fetch_vector_store,
)
from psycopg_pool import AsyncConnectionPool

from worker.db import Conn
from worker.handlers.repository import (
    CleanupRepository,
    PendingAttachment,
    TakenAttachment,
    UnfinishedAttachments,
)
from worker.producer import Queues, delete_chat

QUEUES = Queues("mini-chat.attachment_cleanup", 4, "mini-chat.chat_cleanup", 4)
NOW = datetime.now(UTC)


async def _status(conn: Conn, attachment_id: uuid.UUID) -> tuple[object, ...]:
    row = await fetch_attachment(conn, attachment_id)
    assert row is not None
    return row["cleanup_status"], row["cleanup_attempts"], row["last_cleanup_error"]


async def test_pending_attachments_returns_only_pending(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    chat = await create_chat(conn, deleted_at=NOW)
    other = await create_chat(conn, chat.tenant_id, deleted_at=NOW)
    live = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    deleted_one_by_one = await create_attachment(
        conn, chat.id, chat.tenant_id, None, "azure", cleanup_status="pending", deleted_at=NOW
    )
    for status in (None, "done", "failed"):
        await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status=status)
    await create_attachment(conn, other.id, other.tenant_id, cleanup_status="pending")

    found = await CleanupRepository(pool).pending_attachments(chat.id)

    expected = [
        PendingAttachment(live.id, chat.tenant_id, "openai", live.provider_file_id),
        PendingAttachment(deleted_one_by_one.id, chat.tenant_id, "azure", None),
    ]
    assert found == sorted(expected, key=lambda a: a.id)


async def test_mark_done_idempotent_on_terminal(pool: AsyncConnectionPool, conn: Conn) -> None:
    repo = CleanupRepository(pool)
    chat = await create_chat(conn, deleted_at=NOW)
    pending = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    untouched = await create_attachment(conn, chat.id, chat.tenant_id)

    assert await repo.mark_done(pending.id) is True
    first = await fetch_attachment(conn, pending.id)
    assert await repo.mark_done(pending.id) is False  # already done: no write at all
    again = await fetch_attachment(conn, pending.id)
    assert first is not None
    assert again is not None
    assert again["cleanup_status"] == "done"
    assert again["cleanup_updated_at"] == first["cleanup_updated_at"]

    assert await repo.mark_done(untouched.id) is False  # never taken into cleanup
    assert await _status(conn, untouched.id) == (None, 0, None)
    assert await repo.mark_done(uuid.uuid4()) is False  # missing row


async def test_mark_done_after_failed_records_the_confirmed_delete(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Deliberate: a replayed dead letter whose delete the provider confirms ends ``done``."""
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    failed = await create_attachment(
        conn, chat.id, chat.tenant_id, cleanup_status="failed", cleanup_attempts=5
    )
    assert await repo.mark_done(failed.id) is True
    assert await _status(conn, failed.id) == ("done", 5, None)


async def test_record_attempt_transitions_to_failed(pool: AsyncConnectionPool, conn: Conn) -> None:
    repo = CleanupRepository(pool)
    chat = await create_chat(conn, deleted_at=NOW)
    att = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")

    statuses = [
        await repo.record_attempt(att.id, f"error {n}", max_attempts=3) for n in range(1, 5)
    ]

    assert statuses == ["pending", "pending", "failed", None]  # the 4th: already terminal
    assert await _status(conn, att.id) == ("failed", 3, "error 3")


async def test_record_attempt_permanent_fails_at_once(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    att = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    untaken = await create_attachment(conn, chat.id, chat.tenant_id)

    assert await repo.record_attempt(att.id, "HTTP 400", max_attempts=5, permanent=True) == "failed"
    assert await _status(conn, att.id) == ("failed", 1, "HTTP 400")
    assert await repo.record_attempt(untaken.id, "x", max_attempts=5) is None
    assert await _status(conn, untaken.id) == (None, 0, None)
    assert await repo.record_attempt(uuid.uuid4(), "x", max_attempts=5) is None


async def test_record_attempt_max_one_fails_on_first(pool: AsyncConnectionPool, conn: Conn) -> None:
    chat = await create_chat(conn)
    att = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    assert await CleanupRepository(pool).record_attempt(att.id, "e", max_attempts=1) == "failed"


async def test_mark_pending_skips_already_set(pool: AsyncConnectionPool, conn: Conn) -> None:
    chat = await create_chat(conn)
    t = chat.tenant_id
    fresh = await create_attachment(conn, chat.id, t)
    done = await create_attachment(conn, chat.id, t, cleanup_status="done")
    failed = await create_attachment(conn, chat.id, t, cleanup_status="failed", cleanup_attempts=5)
    retrying = await create_attachment(
        conn, chat.id, t, cleanup_status="pending", cleanup_attempts=2
    )
    deleted_before = await create_attachment(conn, chat.id, t, deleted_at=NOW)

    await delete_chat(conn, QUEUES, tenant_id=t, chat_id=chat.id, user_id=chat.user_id)

    assert await _status(conn, fresh.id) == ("pending", 0, None)
    assert await _status(conn, done.id) == ("done", 0, None)
    assert await _status(conn, failed.id) == ("failed", 5, None)
    assert await _status(conn, retrying.id) == ("pending", 2, None)
    # The original's filter (deleted_at IS NULL) leaves it out: the leak our chat path fixes.
    assert await _status(conn, deleted_before.id) == (None, 0, None)

    repo = CleanupRepository(pool)
    assert await repo.adopt_chat_attachments(chat.id) == 1
    assert await _status(conn, deleted_before.id) == ("pending", 0, None)
    assert await repo.adopt_chat_attachments(chat.id) == 0
    assert await _status(conn, done.id) == ("done", 0, None)
    assert await _status(conn, failed.id) == ("failed", 5, None)


async def test_take_attachment(pool: AsyncConnectionPool, conn: Conn) -> None:
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    fresh = await create_attachment(conn, chat.id, chat.tenant_id, deleted_at=NOW)
    done = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="done")
    failed = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="failed")

    assert await repo.take_attachment(fresh.id, chat.id) == TakenAttachment("pending", False)
    assert await _status(conn, fresh.id) == ("pending", 0, None)
    assert await repo.take_attachment(fresh.id, chat.id) == TakenAttachment("pending", False)
    assert await repo.take_attachment(done.id, chat.id) == TakenAttachment("done", False)
    assert await repo.take_attachment(failed.id, chat.id) == TakenAttachment("failed", False)
    assert await repo.take_attachment(uuid.uuid4(), chat.id) == TakenAttachment(None, False)


async def test_take_attachment_reads_the_chat_state(pool: AsyncConnectionPool, conn: Conn) -> None:
    """``chat_deleted`` answers as ``chat_is_deleted`` does, even when the attachment is gone."""
    repo = CleanupRepository(pool)
    active = await create_chat(conn)
    deleted = await create_chat(conn, deleted_at=NOW)
    att = await create_attachment(conn, deleted.id, deleted.tenant_id, deleted_at=NOW)

    assert await repo.take_attachment(att.id, deleted.id) == TakenAttachment("pending", True)
    assert await _status(conn, att.id) == ("pending", 0, None)  # taken even so, as before
    assert await repo.take_attachment(uuid.uuid4(), deleted.id) == TakenAttachment(None, True)
    assert await repo.take_attachment(uuid.uuid4(), active.id) == TakenAttachment(None, False)
    missing_chat = await repo.take_attachment(uuid.uuid4(), uuid.uuid4())
    assert missing_chat == TakenAttachment(None, False)  # missing is not "deleted"


async def test_chat_is_deleted(pool: AsyncConnectionPool, conn: Conn) -> None:
    repo = CleanupRepository(pool)
    active = await create_chat(conn)
    deleted = await create_chat(conn, deleted_at=NOW)
    assert await repo.chat_is_deleted(deleted.id) is True
    assert await repo.chat_is_deleted(active.id) is False
    assert await repo.chat_is_deleted(uuid.uuid4()) is False  # missing is not "deleted"


async def test_unfinished_attachments(pool: AsyncConnectionPool, conn: Conn) -> None:
    chat = await create_chat(conn)
    for status in ("failed", "failed", "done", "pending", None):
        await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status=status)
    repo = CleanupRepository(pool)
    assert await repo.unfinished_attachments(chat.id) == UnfinishedAttachments(1, 2)
    assert await repo.unfinished_attachments(uuid.uuid4()) == UnfinishedAttachments(0, 0)


async def test_delete_vector_store_row_hard_deletes(pool: AsyncConnectionPool, conn: Conn) -> None:
    repo = CleanupRepository(pool)
    chat = await create_chat(conn, deleted_at=NOW)
    other = await create_chat(conn, deleted_at=NOW)
    store = await create_vector_store(conn, chat.id, chat.tenant_id, "vs_1", "azure")
    kept = await create_vector_store(conn, other.id, other.tenant_id, "vs_2")

    row = await repo.vector_store(chat.id)
    assert row is not None
    assert (row.id, row.tenant_id, row.vector_store_id, row.provider) == (
        store.id, chat.tenant_id, "vs_1", "azure",
    )  # fmt: skip
    await repo.delete_vector_store_row(store.id)

    assert await fetch_vector_store(conn, chat.id) is None
    assert await repo.vector_store(chat.id) is None
    cur = await conn.execute("SELECT count(*) FROM chat_vector_stores WHERE id = %s", (store.id,))
    assert await cur.fetchone() == (0,)  # gone, not flagged
    other_row = await repo.vector_store(other.id)
    assert other_row is not None
    assert other_row.id == kept.id
