"""The seed's handler tests (upstream §7.1), ported to the real stack and adapted to our fixes.

The seed used in-memory SQLite and no-op / always-failing providers; here every message goes
through the engine to the real gateway and ``FakeOpenAI`` (failures are injected faults).
"""

from __future__ import annotations

import json
import uuid

from cwlab.fake_openai import Fault
from handlers.conftest import MakeStack
from handlers.support import AQ, CQ, Stack, assert_secret_free, only, reject_of, retry_of
from worker.handlers.payloads import parse_attachment_deleted, parse_chat_soft_deleted
from worker.models import Ok, RetryReason

SAMPLE_ATTACHMENT_EVENT = {
    "event_type": "attachment_deleted",
    "tenant_id": "00000000-0000-0000-0000-000000000001",
    "chat_id": "00000000-0000-0000-0000-000000000002",
    "attachment_id": "00000000-0000-0000-0000-000000000003",
    "provider_file_id": "file-abc123",
    "vector_store_id": None,
    "storage_backend": "openai",
    "attachment_kind": "document",
    "deleted_at": "2026-01-01T00:00:00Z",
}


def chat_event(chat_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> dict[str, str]:
    return {
        "reason": "chat_soft_delete",
        "tenant_id": str(tenant_id or uuid.uuid4()),
        "chat_id": str(chat_id),
        "system_request_id": str(uuid.uuid4()),
        "chat_deleted_at": "2026-01-01T00:00:00+00:00",
    }


async def test_attachment_handler_rejects_invalid_payload(stack: Stack) -> None:
    await stack.enqueue_raw(AQ, b"{}")

    reason = reject_of(only(await stack.deliver(AQ))).reason

    assert reason.startswith("invalid payload:")
    (dead,) = await stack.dead_letters()
    assert dead["queue"] == AQ
    assert dead["last_error"] == reason
    assert bytes(dead["payload"]) == b"{}"
    assert stack.fake.requests() == []


async def test_attachment_handler_succeeds_no_provider_file(stack: Stack) -> None:
    """Seed: Ok or Retry, never Reject. Ours: Ok (nothing to delete, no row to update)."""
    await stack.enqueue_raw(AQ, {**SAMPLE_ATTACHMENT_EVENT, "provider_file_id": None})

    assert only(await stack.deliver(AQ)) == Ok()
    assert stack.fake.requests() == []
    assert await stack.dead_letters() == []
    assert await stack.retry_rows() == []
    assert stack.metric_sum("cleanup_completed_total") == 0  # no file, nothing counted


def test_deserialize_cleanup_payload() -> None:
    event = parse_attachment_deleted(
        json.dumps(SAMPLE_ATTACHMENT_EVENT).encode(), "application/json"
    )
    assert str(event.attachment_id) == "00000000-0000-0000-0000-000000000003"
    assert str(event.tenant_id) == "00000000-0000-0000-0000-000000000001"
    assert str(event.chat_id) == "00000000-0000-0000-0000-000000000002"
    assert event.provider_file_id == "file-abc123"
    assert event.storage_backend == "openai"
    assert event.attachment_kind == "document"


async def test_chat_cleanup_rejects_invalid_payload(stack: Stack) -> None:
    await stack.enqueue_raw(CQ, b"{}")

    reason = reject_of(only(await stack.deliver(CQ))).reason

    assert reason.startswith("invalid payload:")
    (dead,) = await stack.dead_letters()
    assert dead["queue"] == CQ


async def test_chat_cleanup_rejects_missing_chat(stack: Stack) -> None:
    """The seed's "active chat" test used a chat id that does not exist."""
    await stack.enqueue_raw(CQ, chat_event(uuid.uuid4()))

    reason = reject_of(only(await stack.deliver(CQ))).reason

    assert "not soft-deleted" in reason
    (dead,) = await stack.dead_letters()
    assert dead["last_error"] == reason


async def test_chat_cleanup_rejects_active_chat(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.enqueue_raw(CQ, chat_event(chat.id, chat.tenant_id))

    assert "not soft-deleted" in reject_of(only(await stack.deliver(CQ))).reason
    assert (await stack.att(att))["cleanup_status"] is None  # nothing taken into cleanup
    assert stack.fake.requests() == []
    assert att.provider_file_id in stack.fake.files


async def test_chat_cleanup_succeeds_empty_chat(stack: Stack) -> None:
    chat = await stack.chat()
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()
    assert stack.fake.requests() == []
    assert await stack.retry_rows() == []


def test_deserialize_chat_cleanup_payload() -> None:
    chat_id = uuid.uuid4()
    payload = chat_event(chat_id)
    event = parse_chat_soft_deleted(json.dumps(payload).encode(), "application/json")
    assert event.chat_id == chat_id
    assert str(event.tenant_id) == payload["tenant_id"]
    assert str(event.system_request_id) == payload["system_request_id"]


async def test_chat_cleanup_processes_pending_attachment_success(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    pending = await stack.rows(
        "SELECT id FROM attachments WHERE chat_id = %s AND cleanup_status = 'pending'", (chat.id,)
    )
    assert pending == []
    assert (await stack.att(att))["cleanup_status"] == "done"
    assert att.provider_file_id not in stack.fake.files
    assert [r.resource_id for r in stack.fake.deletes("file")] == [att.provider_file_id]


async def test_chat_cleanup_retries_on_provider_failure(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    stack.fake.inject(Fault(status=500))
    await stack.delete_chat(chat)

    retry = retry_of(only(await stack.deliver(CQ)))

    assert retry.reason is RetryReason.SERVER_ERROR
    row = await stack.att(att)
    assert row["cleanup_status"] == "pending"
    assert row["cleanup_attempts"] == 1
    assert_secret_free(row["last_cleanup_error"])
    assert att.provider_file_id in stack.fake.files


async def test_chat_cleanup_terminal_failure_at_max_attempts(make_stack: MakeStack) -> None:
    stack = await make_stack(max_attempts=1)
    chat = await stack.chat()
    att = await stack.attachment(chat)
    stack.fake.inject(Fault(status=500))
    await stack.delete_chat(chat)

    # Every attachment is terminal (failed), so the chat message is finished.
    assert only(await stack.deliver(CQ)) == Ok()

    counts = await stack.rows(
        "SELECT cleanup_status, count(*) AS n FROM attachments WHERE chat_id = %s"
        " GROUP BY cleanup_status",
        (chat.id,),
    )
    assert counts == [{"cleanup_status": "failed", "n": 1}]
    row = await stack.att(att)
    assert row["cleanup_attempts"] == 1
    assert "HTTP 500" in row["last_cleanup_error"]
    assert stack.metric("cleanup_failed_total", resource_type="file") == 1
    assert await stack.retry_rows() == []
    assert await stack.dead_letters() == []


async def test_chat_cleanup_attachment_without_file_is_done_without_a_call(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, with_file=False)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert (await stack.att(att))["cleanup_status"] == "done"
    assert stack.fake.requests() == []
    assert stack.metric_sum("cleanup_completed_total") == 0  # nothing was deleted
