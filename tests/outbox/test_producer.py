"""The chat service's delete flows (worker/producer.py; upstream §3.4-3.5): one transaction each."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import pytest

from tests.factories import (
    Attachment,
    create_attachment,
    create_chat,
    fetch_attachment,
    fetch_chat,
    link_message,
)
from worker.errors import (
    AttachmentLocked,
    Forbidden,
    NotFound,
    QueueNotRegistered,
)
from worker.producer import Queues, delete_attachment, delete_chat

from .helpers import AQ, CQ, Recorder, count, drain, make_engine, rows

QUEUES = Queues(AQ, 4, CQ, 4)


async def _events(conn) -> list[dict[str, Any]]:
    found = await rows(
        conn,
        "SELECT p.queue, p.partition, b.payload, b.payload_type FROM modkit_outbox_incoming i"
        " JOIN modkit_outbox_partitions p ON p.id = i.partition_id"
        " JOIN modkit_outbox_body b ON b.id = i.body_id ORDER BY i.id",
    )
    return [
        {
            "queue": r["queue"],
            "partition": r["partition"],
            "payload_type": r["payload_type"],
            "event": json.loads(bytes(r["payload"])),
        }
        for r in found
    ]


async def _delete(conn, chat, attachment, *, user_id=None, chat_id=None, queues=QUEUES):
    return await delete_attachment(
        conn, queues, tenant_id=chat.tenant_id, chat_id=chat_id or chat.id,
        attachment_id=attachment.id, user_id=user_id or chat.user_id,
    )  # fmt: skip


# -- delete_attachment ------------------------------------------------------------------------


async def test_delete_attachment_soft_deletes_and_enqueues_one_event(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(
        conn, chat.id, chat.tenant_id, provider_file_id="file-abc", storage_backend="azure",
        kind="image",
    )  # fmt: skip
    other = await create_attachment(conn, chat.id, chat.tenant_id)
    assert await _delete(conn, chat, attachment) is True

    row = await fetch_attachment(conn, attachment.id)
    assert row["deleted_at"] is not None
    assert row["cleanup_status"] is None  # the soft delete does not touch cleanup_status
    assert (await fetch_attachment(conn, other.id))["deleted_at"] is None

    [event] = await _events(conn)
    assert event["queue"] == AQ
    assert event["partition"] == chat.tenant_id.int % 4
    assert event["payload_type"] == "application/json"
    body = event["event"]
    assert set(body) == {
        "event_type", "tenant_id", "chat_id", "attachment_id", "provider_file_id",
        "vector_store_id", "storage_backend", "attachment_kind", "deleted_at",
    }  # fmt: skip
    assert body["event_type"] == "attachment_deleted"
    assert body["tenant_id"] == str(chat.tenant_id)
    assert body["chat_id"] == str(chat.id)
    assert body["attachment_id"] == str(attachment.id)
    assert body["provider_file_id"] == "file-abc"
    assert body["vector_store_id"] is None
    assert body["storage_backend"] == "azure"
    assert body["attachment_kind"] == "image"
    assert datetime.fromisoformat(body["deleted_at"].replace("Z", "+00:00")).tzinfo is not None


async def test_delete_attachment_without_provider_file_id_sends_null(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id, provider_file_id=None)
    assert await _delete(conn, chat, attachment) is True
    [event] = await _events(conn)
    assert event["event"]["provider_file_id"] is None
    assert event["event"]["storage_backend"] == "openai"
    assert event["event"]["attachment_kind"] == "document"


async def test_partition_follows_the_tenant(conn):
    tenants = [uuid.UUID(int=i) for i in (4, 5, 6, 7)]
    for tenant in tenants:
        chat = await create_chat(conn, tenant_id=tenant)
        attachment = await create_attachment(conn, chat.id, tenant)
        await _delete(conn, chat, attachment)
    assert [e["partition"] for e in await _events(conn)] == [0, 1, 2, 3]


async def test_deleting_again_is_idempotent_and_sends_nothing(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    assert await _delete(conn, chat, attachment) is True
    first = (await fetch_attachment(conn, attachment.id))["deleted_at"]
    assert await _delete(conn, chat, attachment) is False
    assert (await fetch_attachment(conn, attachment.id))["deleted_at"] == first
    assert len(await _events(conn)) == 1


async def test_attachment_uploaded_by_another_user_is_forbidden(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(
        conn, chat.id, chat.tenant_id, uploaded_by_user_id=uuid.uuid4()
    )
    with pytest.raises(Forbidden):
        await _delete(conn, chat, attachment)
    assert (await fetch_attachment(conn, attachment.id))["deleted_at"] is None
    assert await _events(conn) == []


async def test_another_users_chat_is_not_found(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    with pytest.raises(NotFound):
        await _delete(conn, chat, attachment, user_id=uuid.uuid4())
    assert (await fetch_attachment(conn, attachment.id))["deleted_at"] is None
    assert await _events(conn) == []


async def test_attachment_of_another_chat_is_not_found(conn):
    chat = await create_chat(conn)
    elsewhere = await create_chat(conn, tenant_id=chat.tenant_id, user_id=chat.user_id)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    with pytest.raises(NotFound):
        await _delete(conn, chat, attachment, chat_id=elsewhere.id)
    assert (await fetch_attachment(conn, attachment.id))["deleted_at"] is None
    assert await _events(conn) == []


async def test_missing_attachment_and_deleted_chat_are_not_found(conn):
    chat = await create_chat(conn)
    await create_attachment(conn, chat.id, chat.tenant_id)
    ghost = Attachment(uuid.uuid4(), chat.id, chat.tenant_id, chat.user_id, None, "openai", "image")
    with pytest.raises(NotFound):
        await _delete(conn, chat, ghost)
    deleted = await create_chat(
        conn, tenant_id=chat.tenant_id, user_id=chat.user_id, deleted_at=datetime.now().astimezone()
    )
    in_deleted = await create_attachment(conn, deleted.id, chat.tenant_id)
    with pytest.raises(NotFound):
        await _delete(conn, deleted, in_deleted)
    assert await _events(conn) == []


async def test_attachment_of_another_tenant_is_not_found(conn):
    chat = await create_chat(conn)
    foreign_chat = await create_chat(conn, user_id=chat.user_id)  # same user id, other tenant
    foreign = await create_attachment(conn, foreign_chat.id, foreign_chat.tenant_id)
    with pytest.raises(NotFound):
        await _delete(conn, chat, foreign)
    assert (await fetch_attachment(conn, foreign.id))["deleted_at"] is None


async def test_attachment_referenced_by_a_message_is_locked(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    await link_message(conn, chat.id, chat.tenant_id, attachment.id)
    before = await fetch_attachment(conn, attachment.id)
    with pytest.raises(AttachmentLocked, match="referenced by one or more messages"):
        await _delete(conn, chat, attachment)
    assert await fetch_attachment(conn, attachment.id) == before
    assert await _events(conn) == []
    assert await count(conn, "modkit_outbox_body") == 0


async def test_enqueue_failure_rolls_the_soft_delete_back(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    unregistered = Queues("mini-chat.not_registered", 4, CQ, 4)
    with pytest.raises(QueueNotRegistered):
        await _delete(conn, chat, attachment, queues=unregistered)
    assert (await fetch_attachment(conn, attachment.id))["deleted_at"] is None
    assert await count(conn, "modkit_outbox_body") == 0


async def test_enqueue_failure_after_dropping_the_queue_rows_rolls_back(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    for table in ("modkit_outbox_processor", "modkit_outbox_vacuum_counter"):
        await conn.execute(
            f"DELETE FROM {table} WHERE partition_id IN"  # test-only table names
            " (SELECT id FROM modkit_outbox_partitions WHERE queue = %s)",
            (AQ,),
        )
    await conn.execute("DELETE FROM modkit_outbox_partitions WHERE queue = %s", (AQ,))
    with pytest.raises(QueueNotRegistered):
        await _delete(conn, chat, attachment)
    assert (await fetch_attachment(conn, attachment.id))["deleted_at"] is None


async def test_a_deleted_attachment_event_is_consumed_by_the_engine(pool, conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    await _delete(conn, chat, attachment)
    handler = Recorder()
    await drain(make_engine(pool, {AQ: handler}), AQ)
    [message] = handler.seen
    assert message.partition == chat.tenant_id.int % 4
    assert json.loads(message.payload)["attachment_id"] == str(attachment.id)


# -- delete_chat ------------------------------------------------------------------------------


async def test_delete_chat_soft_deletes_marks_attachments_and_enqueues(conn):
    chat = await create_chat(conn)
    live = await create_attachment(conn, chat.id, chat.tenant_id)
    live_image = await create_attachment(conn, chat.id, chat.tenant_id, kind="image")
    gone = await create_attachment(
        conn, chat.id, chat.tenant_id, deleted_at=datetime.now().astimezone()
    )
    finished = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="done")
    other_chat = await create_chat(conn, tenant_id=chat.tenant_id, user_id=chat.user_id)
    bystander = await create_attachment(conn, other_chat.id, chat.tenant_id)

    request_id = await delete_chat(
        conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id
    )
    assert isinstance(request_id, uuid.UUID)
    assert (await fetch_chat(conn, chat.id))["deleted_at"] is not None
    assert (await fetch_chat(conn, other_chat.id))["deleted_at"] is None

    status = {
        a.id: (await fetch_attachment(conn, a.id))["cleanup_status"]
        for a in (live, live_image, gone, finished, bystander)
    }
    assert status == {
        live.id: "pending", live_image.id: "pending", gone.id: None, finished.id: "done",
        bystander.id: None,
    }  # fmt: skip
    for a in (live, live_image):
        assert (await fetch_attachment(conn, a.id))["cleanup_updated_at"] is not None
        assert (await fetch_attachment(conn, a.id))["deleted_at"] is None

    [event] = await _events(conn)
    assert event["queue"] == CQ
    assert event["partition"] == chat.id.int % 4
    body = event["event"]
    assert set(body) == {"reason", "tenant_id", "chat_id", "system_request_id", "chat_deleted_at"}
    assert body["reason"] == "chat_soft_delete"
    assert body["tenant_id"] == str(chat.tenant_id)
    assert body["chat_id"] == str(chat.id)
    assert body["system_request_id"] == str(request_id)
    assert uuid.UUID(body["system_request_id"]).version == 4
    deleted_at = datetime.fromisoformat(body["chat_deleted_at"].replace("Z", "+00:00"))
    assert deleted_at.tzinfo is not None


async def test_delete_chat_twice_is_not_found(conn):
    chat = await create_chat(conn)
    await delete_chat(conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id)
    with pytest.raises(NotFound):
        await delete_chat(
            conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id
        )
    assert len(await _events(conn)) == 1


async def test_delete_chat_of_another_user_or_tenant_is_not_found(conn):
    chat = await create_chat(conn)
    await create_attachment(conn, chat.id, chat.tenant_id)
    with pytest.raises(NotFound):
        await delete_chat(
            conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=uuid.uuid4()
        )
    with pytest.raises(NotFound):
        await delete_chat(
            conn, QUEUES, tenant_id=uuid.uuid4(), chat_id=chat.id, user_id=chat.user_id
        )
    assert (await fetch_chat(conn, chat.id))["deleted_at"] is None
    assert await count(conn, "attachments WHERE cleanup_status IS NOT NULL") == 0
    assert await _events(conn) == []


async def test_delete_chat_without_attachments_still_enqueues(conn):
    chat = await create_chat(conn)
    await delete_chat(conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id)
    [event] = await _events(conn)
    assert event["event"]["chat_id"] == str(chat.id)
    assert event["partition"] == chat.id.int % 4


async def test_delete_chat_enqueue_failure_rolls_everything_back(conn):
    chat = await create_chat(conn)
    attachment = await create_attachment(conn, chat.id, chat.tenant_id)
    with pytest.raises(QueueNotRegistered):
        await delete_chat(
            conn, Queues(AQ, 4, "mini-chat.gone", 4), tenant_id=chat.tenant_id,
            chat_id=chat.id, user_id=chat.user_id,
        )  # fmt: skip
    assert (await fetch_chat(conn, chat.id))["deleted_at"] is None
    assert (await fetch_attachment(conn, attachment.id))["cleanup_status"] is None
    assert await _events(conn) == []
