"""DB state after the chat service's delete flows (upstream §7.5 ``TestCleanupWorkerDB``).

The e2e suite read SQLite directly; here the same checks read PostgreSQL after
``worker.producer`` ran, and the messages are checked as the handlers will read them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from factories import link_message

from handlers.support import AQ, CQ, Stack
from worker.errors import AttachmentLocked, NotFound


async def messages(stack: Stack, queue: str) -> list[dict[str, Any]]:
    """Every message of ``queue`` (sequenced or not), as ``get_outbox_messages`` did."""
    rows = await stack.rows(
        "SELECT b.payload, b.payload_type, p.partition FROM modkit_outbox_body b"
        " JOIN (SELECT body_id, partition_id FROM modkit_outbox_incoming"
        "       UNION ALL SELECT body_id, partition_id FROM modkit_outbox_outgoing) m"
        "   ON m.body_id = b.id"
        " JOIN modkit_outbox_partitions p ON p.id = m.partition_id"
        " WHERE p.queue = %s ORDER BY b.id",
        (queue,),
    )
    for row in rows:
        assert row["payload_type"] == "application/json"
        row["event"] = json.loads(bytes(row["payload"]))
    return rows


async def test_chat_deletion_marks_attachments_for_cleanup(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)

    await stack.delete_chat(chat)

    row = await stack.att(att)
    assert row["cleanup_status"] == "pending"
    assert row["cleanup_updated_at"] is not None
    assert row["deleted_at"] is None  # the chat path does not soft-delete attachments


async def test_chat_deletion_enqueues_chat_cleanup_event(stack: Stack) -> None:
    chat = await stack.chat()
    request_id = await stack.delete_chat(chat)

    (message,) = await messages(stack, CQ)
    event = message["event"]
    assert set(event) == {"reason", "tenant_id", "chat_id", "system_request_id", "chat_deleted_at"}
    assert event["reason"] == "chat_soft_delete"
    assert event["chat_id"] == str(chat.id)
    assert event["tenant_id"] == str(chat.tenant_id)
    assert event["system_request_id"] == str(request_id)
    assert datetime.fromisoformat(event["chat_deleted_at"]).tzinfo is not None
    assert message["partition"] == chat.id.int % 4  # chat queue: partitioned by chat_id
    assert await messages(stack, AQ) == []
    chat_row = await stack.rows("SELECT deleted_at FROM chats WHERE id = %s", (chat.id,))
    assert chat_row[0]["deleted_at"] is not None


@pytest.mark.parametrize("with_file", [True, False])
async def test_attachment_deletion_enqueues_cleanup_event(stack: Stack, with_file: bool) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, backend="azure", with_file=with_file, kind="image")

    assert await stack.delete_attachment(att) is True

    (message,) = await messages(stack, AQ)
    event = message["event"]
    assert event["event_type"] == "attachment_deleted"
    assert event["attachment_id"] == str(att.id)
    assert event["chat_id"] == str(chat.id)
    assert event["tenant_id"] == str(chat.tenant_id)
    assert "provider_file_id" in event
    assert event["provider_file_id"] == att.provider_file_id  # null when never uploaded
    assert event["storage_backend"] == "azure"
    assert event["attachment_kind"] == "image"
    assert "vector_store_id" in event
    assert event["vector_store_id"] is None
    assert message["partition"] == chat.tenant_id.int % 4  # attachment queue: by tenant_id
    row = await stack.att(att)
    assert row["deleted_at"] is not None
    assert row["cleanup_status"] is None  # the producer never touches it; the worker takes it


async def test_chat_deletion_with_multiple_attachments(stack: Stack) -> None:
    chat = await stack.chat()
    atts = [await stack.attachment(chat) for _ in range(3)]

    await stack.delete_chat(chat)

    assert [(await stack.att(a))["cleanup_status"] for a in atts] == ["pending"] * 3
    assert len(await messages(stack, CQ)) == 1  # one chat-level message, not one per file


async def test_double_delete_chat_idempotent(stack: Stack) -> None:
    chat = await stack.chat()
    await stack.delete_chat(chat)

    with pytest.raises(NotFound):
        await stack.delete_chat(chat)

    assert len(await messages(stack, CQ)) == 1


async def test_double_delete_attachment_enqueues_once(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)

    assert await stack.delete_attachment(att) is True
    assert await stack.delete_attachment(att) is False

    assert len(await messages(stack, AQ)) == 1


async def test_chat_without_attachments_still_enqueues(stack: Stack) -> None:
    chat = await stack.chat()
    await stack.delete_chat(chat)
    (message,) = await messages(stack, CQ)
    assert message["event"]["chat_id"] == str(chat.id)


async def test_referenced_attachment_is_locked_and_enqueues_nothing(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await link_message(stack.conn, chat.id, chat.tenant_id, att.id)

    with pytest.raises(AttachmentLocked):
        await stack.delete_attachment(att)

    assert (await stack.att(att))["deleted_at"] is None
    assert await messages(stack, AQ) == []


async def test_attachment_delete_of_deleted_chat_is_not_found(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_chat(chat)

    with pytest.raises(NotFound):
        await stack.delete_attachment(att)

    assert await messages(stack, AQ) == []
    assert (await stack.att(att))["deleted_at"] is None
