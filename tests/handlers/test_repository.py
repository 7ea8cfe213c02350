"""The handlers' SQL (``sql/queries/cleanup.sql`` via ``CleanupRepository``) on real rows.

Upstream §7.7 planned these repository tests but never wrote them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from factories import (
    Attachment,
    create_attachment,
    create_chat,
    create_vector_store,
    fetch_attachment,
    fetch_vector_store,
)
from psycopg_pool import AsyncConnectionPool

from worker.db import Conn
from worker.handlers.payloads import AttachmentDeleted
from worker.handlers.repository import (
    CleanupRepository,
    PendingAttachment,
    StoredAttachment,
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
        PendingAttachment(live.id, chat.tenant_id, "openai", live.provider_file_id, False, False),
        PendingAttachment(deleted_one_by_one.id, chat.tenant_id, "azure", None, False, False),
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


def event_for(att: Attachment, **changes: Any) -> AttachmentDeleted:
    """The event the producer writes for ``att`` (with ``changes``)."""
    fields = {
        "tenant_id": att.tenant_id,
        "chat_id": att.chat_id,
        "attachment_id": att.id,
        "provider_file_id": att.provider_file_id,
        "storage_backend": att.storage_backend,
        "attachment_kind": att.attachment_kind,
    }
    return AttachmentDeleted(**{**fields, **changes})


def stored(att: Attachment, *, deleted: bool = True) -> StoredAttachment:
    return StoredAttachment(
        att.tenant_id, att.chat_id, att.storage_backend, att.provider_file_id, deleted
    )


async def test_take_attachment(pool: AsyncConnectionPool, conn: Conn) -> None:
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    fresh = await create_attachment(conn, chat.id, chat.tenant_id, deleted_at=NOW)
    done = await create_attachment(
        conn, chat.id, chat.tenant_id, cleanup_status="done", deleted_at=NOW
    )
    failed = await create_attachment(
        conn, chat.id, chat.tenant_id, cleanup_status="failed", deleted_at=NOW
    )

    taken = TakenAttachment(stored(fresh), "pending", True, False, False)
    assert await repo.take_attachment(event_for(fresh)) == taken
    assert await _status(conn, fresh.id) == ("pending", 0, None)
    assert await repo.take_attachment(event_for(fresh)) == taken  # still taken, unchanged
    assert await repo.take_attachment(event_for(done)) == TakenAttachment(
        stored(done), "done", False, False, False
    )
    assert await repo.take_attachment(event_for(failed)) == TakenAttachment(
        stored(failed), "failed", True, False, False
    )
    missing = event_for(fresh, attachment_id=uuid.uuid4(), provider_file_id="file-nobody")
    assert await repo.take_attachment(missing) == TakenAttachment(None, None, False, False, False)


async def test_a_row_without_a_file_is_taken_straight_to_done(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Nothing to delete, so the take finishes the row: by the batched statement, and by the
    single-row one that waits for a row another transaction held."""
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    free, held = [
        await create_attachment(conn, chat.id, chat.tenant_id, None, deleted_at=NOW)
        for _ in range(2)
    ]
    assert await repo.take_attachment(event_for(free)) == TakenAttachment(
        stored(free), "done", True, False, False
    )
    async with pool.connection() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM attachments WHERE id = %s FOR UPDATE", (held.id,))
        waiting = asyncio.ensure_future(repo.take_attachment(event_for(held)))
        await asyncio.sleep(0.1)
        assert not waiting.done()
    assert await waiting == TakenAttachment(stored(held), "done", True, False, False)
    for att in (free, held):
        assert await _status(conn, att.id) == ("done", 0, None)


async def test_take_attachment_reads_the_chat_state(pool: AsyncConnectionPool, conn: Conn) -> None:
    """``chat_deleted``: the message's chat (the row's whenever the row is taken)."""
    repo = CleanupRepository(pool)
    active = await create_chat(conn)
    deleted = await create_chat(conn, deleted_at=NOW)
    att = await create_attachment(conn, deleted.id, deleted.tenant_id)  # live until the chat went

    taken = await repo.take_attachment(event_for(att))
    assert taken == TakenAttachment(stored(att, deleted=False), "pending", True, True, False)
    assert await _status(conn, att.id) == ("pending", 0, None)  # taken even so, as before
    for chat_id, chat_deleted in ((deleted.id, True), (active.id, False), (uuid.uuid4(), False)):
        gone = event_for(att, attachment_id=uuid.uuid4(), chat_id=chat_id)
        assert (await repo.take_attachment(gone)).chat_deleted is chat_deleted


async def test_take_attachment_refuses_a_live_or_disagreeing_row(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Not taken, and not changed: the handler dead-letters these messages."""
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    live = await create_attachment(conn, chat.id, chat.tenant_id)
    gone = await create_attachment(conn, chat.id, chat.tenant_id, deleted_at=NOW)
    restored = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
    refused = [
        (live, event_for(live)),
        (restored, event_for(restored)),
        (gone, event_for(gone, tenant_id=uuid.uuid4())),
        (gone, event_for(gone, chat_id=uuid.uuid4())),
        (gone, event_for(gone, storage_backend="azure")),
        (gone, event_for(gone, provider_file_id="file-other")),
        (gone, event_for(gone, provider_file_id=None)),
    ]
    for att, event in refused:
        before = await fetch_attachment(conn, att.id)
        taken = await repo.take_attachment(event)
        assert not taken.taken, event
        assert taken.row == stored(att, deleted=att is gone)
        assert await fetch_attachment(conn, att.id) == before


async def test_take_attachment_sees_live_references_to_the_file(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """Only a live reference counts: not a soft-deleted one, not one in a deleted chat."""
    repo = CleanupRepository(pool)
    chat = await create_chat(conn)
    other_chat = await create_chat(conn, chat.tenant_id)
    deleted_chat = await create_chat(conn, chat.tenant_id, deleted_at=NOW)
    att = await create_attachment(conn, chat.id, chat.tenant_id, deleted_at=NOW)
    file_id = att.provider_file_id
    await create_attachment(conn, other_chat.id, chat.tenant_id, file_id, deleted_at=NOW)
    await create_attachment(conn, deleted_chat.id, chat.tenant_id, file_id)
    purged = event_for(att, attachment_id=uuid.uuid4(), chat_id=uuid.uuid4())

    assert not (await repo.take_attachment(event_for(att))).file_in_live_use
    assert not (await repo.take_attachment(purged)).file_in_live_use

    await create_attachment(conn, other_chat.id, chat.tenant_id, file_id)

    assert (await repo.take_attachment(event_for(att))).file_in_live_use
    assert (await repo.take_attachment(purged)).file_in_live_use
    assert (await repo.pending_attachments(chat.id))[0].file_in_live_use


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
