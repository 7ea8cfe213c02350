"""The row is the truth; the message only points at it (SPEC §13, issue 11).

An ``attachment_deleted`` message is checked against the attachment row it names: one naming a
live attachment, or disagreeing with its row on tenant, chat, backend or file id, is
dead-lettered with the reason and causes no provider call and no row change. A provider file
that a live attachment references is never deleted, on the attachment path, the chat path, or
for a message whose row is gone.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from factories import Attachment, create_attachment
from structlog.testing import capture_logs

from handlers.support import AQ, CQ, TENANT_OA, Stack, only, reject_of
from worker.models import Ok


def event_for(att: Attachment, **changes: Any) -> dict[str, Any]:
    """The ``attachment_deleted`` event the producer writes for ``att``, with ``changes``."""
    event = {
        "event_type": "attachment_deleted",
        "tenant_id": str(att.tenant_id),
        "chat_id": str(att.chat_id),
        "attachment_id": str(att.id),
        "provider_file_id": att.provider_file_id,
        "vector_store_id": None,
        "storage_backend": att.storage_backend,
        "attachment_kind": att.attachment_kind,
        "deleted_at": "2026-01-01T00:00:00Z",
    }
    return {**event, **changes}


async def soft_delete(stack: Stack, att: Attachment) -> None:
    """The attachment soft-deleted without a message (the test enqueues its own)."""
    await stack.conn.execute("UPDATE attachments SET deleted_at = now() WHERE id = %s", (att.id,))


async def row_state(stack: Stack, att: Attachment) -> dict[str, Any]:
    """The whole row: "no row change" means no column, not only the cleanup state."""
    return await stack.att(att)


async def assert_dead_lettered_untouched(
    stack: Stack, att: Attachment, before: dict[str, Any], *, reason: str
) -> None:
    outcome = reject_of(only(await stack.deliver(AQ)))
    assert reason in outcome.reason, outcome.reason
    (dead,) = await stack.dead_letters()
    assert dead["last_error"] == outcome.reason
    assert stack.fake.requests() == []  # no provider call at all
    assert await row_state(stack, att) == before  # no row change
    assert att.provider_file_id in stack.fake.files


# -- a message naming a live attachment --------------------------------------------------------


async def test_message_naming_a_live_attachment_is_dead_lettered(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)  # not soft-deleted, chat active: live
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att))

    await assert_dead_lettered_untouched(
        stack, att, before, reason="names a live attachment (not deleted, chat active)"
    )


async def test_pending_row_restored_before_its_retry_is_not_deleted(stack: Stack) -> None:
    """A row taken into cleanup whose delete failed, then restored: the retry deletes nothing."""
    chat = await stack.chat()
    att = await stack.attachment(chat, deleted_at=None, cleanup_status="pending")
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att))

    await assert_dead_lettered_untouched(stack, att, before, reason="names a live attachment")


# -- a message that disagrees with its row -----------------------------------------------------


async def test_message_with_another_tenant_is_dead_lettered(stack: Stack) -> None:
    """Was: deleted with tenant OA's own key and base URL instead of the row tenant's route."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await soft_delete(stack, att)
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att, tenant_id=str(TENANT_OA)))

    await assert_dead_lettered_untouched(
        stack,
        att,
        before,
        reason=f"tenant_id {TENANT_OA} disagrees with its row ({chat.tenant_id})",
    )


async def test_message_with_another_backend_is_dead_lettered(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, backend="openai")
    await soft_delete(stack, att)
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att, storage_backend="azure"))

    await assert_dead_lettered_untouched(
        stack, att, before, reason="storage_backend 'azure' disagrees with its row ('openai')"
    )


async def test_message_with_another_file_is_dead_lettered(stack: Stack) -> None:
    """Was: the other file (maybe another attachment's) was deleted and this row marked done."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    other = await stack.attachment(chat)
    await soft_delete(stack, att)
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att, provider_file_id=other.provider_file_id))

    await assert_dead_lettered_untouched(
        stack,
        att,
        before,
        reason=(
            f"provider_file_id '{other.provider_file_id}' disagrees with its row"
            f" ('{att.provider_file_id}')"
        ),
    )
    assert other.provider_file_id in stack.fake.files


async def test_message_without_the_rows_file_is_dead_lettered(stack: Stack) -> None:
    """No file in the message but one in the row: not "nothing to delete, done"."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await soft_delete(stack, att)
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att, provider_file_id=None))

    await assert_dead_lettered_untouched(
        stack, att, before, reason="provider_file_id None disagrees with its row"
    )


async def test_message_with_another_chat_is_dead_lettered(stack: Stack) -> None:
    """Was: the other chat's state decided (a deleted one meant "Ok, the chat path owns it")."""
    chat = await stack.chat()
    other_chat = await stack.chat(chat.tenant_id)
    att = await stack.attachment(chat)
    await soft_delete(stack, att)
    before = await row_state(stack, att)
    await stack.enqueue_raw(AQ, event_for(att, chat_id=str(other_chat.id)))

    await assert_dead_lettered_untouched(
        stack, att, before, reason=f"chat_id {other_chat.id} disagrees with its row ({chat.id})"
    )


async def test_disagreeing_message_on_a_done_row_is_still_dead_lettered(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    assert only(await stack.deliver(AQ)) == Ok()
    before = await row_state(stack, att)
    requests = len(stack.fake.requests())
    await stack.enqueue_raw(AQ, event_for(att, storage_backend="azure"))

    assert "disagrees with its row" in reject_of(only(await stack.deliver(AQ))).reason
    assert len(stack.fake.requests()) == requests
    assert await row_state(stack, att) == before


# -- a file a live attachment references ------------------------------------------------------


async def shared_with_live_attachment(stack: Stack, att: Attachment) -> Attachment:
    """A live attachment in another (active) chat referencing the same provider file."""
    other_chat = await stack.chat(att.tenant_id)
    return await create_attachment(
        stack.conn, other_chat.id, other_chat.tenant_id, att.provider_file_id, att.storage_backend
    )


async def test_attachment_path_keeps_a_file_a_live_attachment_references(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await shared_with_live_attachment(stack, att)
    assert await stack.delete_attachment(att)

    assert only(await stack.deliver(AQ)) == Ok()

    assert stack.fake.requests() == []
    assert att.provider_file_id in stack.fake.files
    row = await stack.att(att)
    assert row["cleanup_status"] == "done"  # its duty passed to the live attachment
    assert "file kept: referenced by a live attachment" in row["last_cleanup_error"]
    assert stack.metric("cleanup_completed_total", resource_type="file") == 0

    await stack.enqueue_raw(AQ, event_for(att))  # the same message again: settled, no call
    assert only(await stack.deliver(AQ)) == Ok()
    assert await stack.att(att) == row
    assert stack.fake.requests() == []


async def test_purged_row_keeps_a_file_a_live_attachment_references(stack: Stack) -> None:
    """No row (chat purged): the message is the only record, but a live reference wins."""
    chat = await stack.chat()
    live = await stack.attachment(chat)
    purged = event_for(live, attachment_id=str(uuid.uuid4()), chat_id=str(uuid.uuid4()))
    await stack.enqueue_raw(AQ, purged)

    with capture_logs() as logs:
        assert only(await stack.deliver(AQ)) == Ok()

    assert stack.fake.requests() == []
    assert live.provider_file_id in stack.fake.files
    assert await stack.dead_letters() == []
    assert await stack.retry_rows() == []
    (kept,) = [e for e in logs if e["event"] == "file_kept"]  # settled, and the log says why
    assert kept["log_level"] == "warning"
    assert kept["provider_file_id"] == live.provider_file_id
    assert kept["reason"] == "file kept: referenced by a live attachment"


async def test_purged_row_still_deletes_an_unreferenced_file(stack: Stack) -> None:
    """Today's rule kept: a deleted attachment's reference does not keep the file."""
    chat = await stack.chat()
    gone = await stack.attachment(chat)
    await soft_delete(stack, gone)
    purged = event_for(gone, attachment_id=str(uuid.uuid4()), chat_id=str(uuid.uuid4()))
    await stack.enqueue_raw(AQ, purged)

    assert only(await stack.deliver(AQ)) == Ok()

    assert gone.provider_file_id not in stack.fake.files
    assert [r.resource_id for r in stack.fake.requests()] == [gone.provider_file_id]


async def test_chat_path_keeps_a_file_a_live_attachment_references(stack: Stack) -> None:
    chat = await stack.chat()
    shared = await stack.attachment(chat)
    own = await stack.attachment(chat)
    await shared_with_live_attachment(stack, shared)
    await stack.vector_store(chat)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert [r.resource_id for r in stack.fake.deletes("file")] == [own.provider_file_id]
    assert shared.provider_file_id in stack.fake.files
    row = await stack.att(shared)
    assert row["cleanup_status"] == "done"
    assert "file kept: referenced by a live attachment" in row["last_cleanup_error"]
    assert (await stack.att(own))["cleanup_status"] == "done"
    assert await stack.vs_row(chat) is None  # the chat's cleanup still completes


async def test_chat_path_keeps_files_of_a_chat_restored_meanwhile(stack: Stack) -> None:
    """The chat was restored after its cleanup began: its attachments are live again."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_chat(chat)
    await stack.conn.execute("UPDATE chats SET deleted_at = NULL WHERE id = %s", (chat.id,))

    assert "not soft-deleted" in reject_of(only(await stack.deliver(CQ))).reason
    assert stack.fake.requests() == []
    assert att.provider_file_id in stack.fake.files


# -- race: a restore between the check and the delete -----------------------------------------


async def test_attachment_restored_while_being_taken_is_not_deleted(stack: Stack, db: str) -> None:
    """The restore holds the row when the take arrives; it commits, then the take goes on.

    The live check and the take into cleanup are one compare-and-set on the row, so the take
    sees the restored row and nothing is deleted (a check read before the restore committed,
    followed by a separate take, would have deleted a live attachment's file).
    """
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    await stack.app.engine.sequence()
    async with await psycopg.AsyncConnection.connect(db) as restorer:
        await restorer.execute(
            "UPDATE attachments SET deleted_at = NULL WHERE id = %s", (att.id,)
        )  # row locked until commit
        delivery = asyncio.ensure_future(stack.deliver(AQ))
        await _until_blocked_by(stack, await _server_pid(restorer))
        await restorer.commit()
        outcome = only(await delivery)

    # Nothing taken, and the refusal reads the restored row (its newest version, not the
    # statement's snapshot): dead-lettered at once as live, no second delivery needed.
    assert "names a live attachment" in reject_of(outcome).reason
    row = await stack.att(att)
    assert row["cleanup_status"] is None
    assert row["deleted_at"] is None
    assert stack.fake.requests() == []
    assert att.provider_file_id in stack.fake.files


async def _server_pid(conn: psycopg.AsyncConnection[Any]) -> int:
    """The server backend of ``conn``'s open transaction (through PgBouncer, ``info.backend_pid``
    names no server process: the pooler assigns one per transaction)."""
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


async def _until_blocked_by(stack: Stack, blocker_pid: int) -> None:
    """Wait until another backend waits for a lock that ``blocker_pid`` holds."""
    for _ in range(1000):
        rows = await stack.rows(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (blocker_pid,),
        )
        if rows:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the take never waited for the restore's row lock")


async def test_attachment_finished_while_being_taken_is_a_redelivery(stack: Stack, db: str) -> None:
    """A duplicate finishes the row while this take waits for its lock: already done, Ok.

    The take's re-check fails on the row's newest version; the refusal must read that version
    too (a read from the statement's snapshot saw it still pending and answered "conflict").
    """
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    await stack.app.engine.sequence()
    async with await psycopg.AsyncConnection.connect(db) as other:
        await other.execute(
            "UPDATE attachments SET cleanup_status = 'done' WHERE id = %s", (att.id,)
        )  # the other copy's mark-done, row locked until commit
        delivery = asyncio.ensure_future(stack.deliver(AQ))
        await _until_blocked_by(stack, await _server_pid(other))
        await other.commit()
        outcome = only(await delivery)

    assert outcome == Ok()
    assert stack.fake.requests() == []
