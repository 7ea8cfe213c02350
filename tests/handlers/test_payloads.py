"""Invalid payloads are rejected with a reason naming the field (SPEC §5, §11); what the original
producer may write (extra fields, ``deleted_at`` as time's integer array) is accepted."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from handlers.support import AQ, CQ, Stack, reject_of
from worker.handlers.payloads import (
    InvalidPayload,
    parse_attachment_deleted,
    parse_chat_soft_deleted,
)
from worker.models import Ok, Reject

JSON = "application/json"
# time 0.3's default serde form: [year, ordinal, hour, min, sec, nanos, off_h, off_m, off_s]
TIME_ARRAY = [2026, 1, 0, 0, 0, 0, 0, 0, 0]


def attachment_event(**changes: Any) -> dict[str, Any]:
    event = {
        "event_type": "attachment_deleted",
        "tenant_id": str(uuid.uuid4()),
        "chat_id": str(uuid.uuid4()),
        "attachment_id": str(uuid.uuid4()),
        "provider_file_id": "file-abc",
        "vector_store_id": None,
        "storage_backend": "openai",
        "attachment_kind": "document",
        "deleted_at": "2026-01-01T00:00:00Z",
    }
    return _apply(event, changes)


def chat_event(**changes: Any) -> dict[str, Any]:
    event = {
        "reason": "chat_soft_delete",
        "tenant_id": str(uuid.uuid4()),
        "chat_id": str(uuid.uuid4()),
        "system_request_id": str(uuid.uuid4()),
        "chat_deleted_at": "2026-01-01T00:00:00+00:00",
    }
    return _apply(event, changes)


MISSING = object()


def _apply(event: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is MISSING:
            event.pop(key)
        else:
            event[key] = value
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


# (id, payload bytes, payload type, text the reason must contain)
BAD_ATTACHMENT = [
    ("missing-tenant", encode(attachment_event(tenant_id=MISSING)), JSON, "tenant_id: missing"),
    ("missing-storage-backend", encode(attachment_event(storage_backend=MISSING)), JSON,
     "storage_backend: missing"),
    ("null-attachment-id", encode(attachment_event(attachment_id=None)), JSON, "attachment_id"),
    ("attachment-id-int", encode(attachment_event(attachment_id=7)), JSON,
     "attachment_id: expected a string"),
    ("chat-id-not-uuid", encode(attachment_event(chat_id="chat-1")), JSON,
     "chat_id: not a UUID"),
    ("file-id-int", encode(attachment_event(provider_file_id=123)), JSON,
     "provider_file_id: expected a string"),
    ("wrong-event-type", encode(attachment_event(event_type="attachment_created")), JSON,
     "event_type"),
    ("attachment-kind-int", encode(attachment_event(attachment_kind=3)), JSON,
     "attachment_kind: expected a string"),
    # Valid JSON, but no PostgreSQL text can hold it: no row can carry it (the row checks
    # would fail in the database).
    ("file-id-nul", encode(attachment_event(provider_file_id="file-\u0000x")), JSON,
     "provider_file_id: contains a NUL character"),
    ("storage-backend-nul", encode(attachment_event(storage_backend="open\u0000ai")), JSON,
     "storage_backend: contains a NUL character"),
    ("not-json", b"event_type=attachment_deleted", JSON, "not valid JSON"),
    ("json-array", b"[1, 2]", JSON, "expected a JSON object"),
    ("not-utf8", b"\xff\xfe{}", JSON, "UTF-8"),
    ("wrong-payload-type", encode(attachment_event()), "application/x-protobuf", "payload_type"),
]  # fmt: skip

BAD_CHAT = [
    ("empty", b"{}", JSON, "reason: missing"),
    ("unknown-reason", encode(chat_event(reason="chat_purge")), JSON, "reason: unknown value"),
    ("missing-request-id", encode(chat_event(system_request_id=MISSING)), JSON,
     "system_request_id: missing"),
    ("tenant-id-int", encode(chat_event(tenant_id=1)), JSON, "tenant_id: expected a string"),
    ("chat-id-not-uuid", encode(chat_event(chat_id="nope")), JSON, "chat_id: not a UUID"),
    ("not-json", b"\x00\x01", JSON, "not valid JSON"),
    ("wrong-payload-type", encode(chat_event()), "text/plain", "payload_type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "payload_type", "names"),
    [c[1:] for c in BAD_ATTACHMENT],
    ids=[c[0] for c in BAD_ATTACHMENT],
)
def test_attachment_payload_errors_name_the_field(
    payload: bytes, payload_type: str, names: str
) -> None:
    with pytest.raises(InvalidPayload) as error:
        parse_attachment_deleted(payload, payload_type)
    assert names in str(error.value)


@pytest.mark.parametrize(
    ("payload", "payload_type", "names"), [c[1:] for c in BAD_CHAT], ids=[c[0] for c in BAD_CHAT]
)
def test_chat_payload_errors_name_the_field(payload: bytes, payload_type: str, names: str) -> None:
    with pytest.raises(InvalidPayload) as error:
        parse_chat_soft_deleted(payload, payload_type)
    assert names in str(error.value)


@pytest.mark.parametrize("deleted_at", [TIME_ARRAY, "2026-01-01T00:00:00Z", None, 1767225600])
def test_attachment_deleted_at_any_encoding_and_extra_fields(deleted_at: object) -> None:
    event = attachment_event(deleted_at=deleted_at, added_later={"x": 1}, provider_file_id=None)
    parsed = parse_attachment_deleted(encode(event), JSON)
    assert parsed.provider_file_id is None
    assert str(parsed.attachment_id) == event["attachment_id"]


def test_chat_deleted_at_may_be_missing_or_odd() -> None:
    for value in (MISSING, TIME_ARRAY, 0):
        event = chat_event(chat_deleted_at=value, extra=True)
        assert str(parse_chat_soft_deleted(encode(event), JSON).chat_id) == event["chat_id"]


async def test_bad_attachment_messages_dead_letter_with_the_reason(stack: Stack) -> None:
    """One batch of bad messages plus a good one (the original's integer-array deleted_at)."""
    chat = await stack.chat()
    att = await stack.attachment(chat, deleted_at=datetime.now(UTC))  # the row agrees, deleted
    good = attachment_event(
        tenant_id=str(chat.tenant_id), chat_id=str(chat.id), attachment_id=str(att.id),
        provider_file_id=att.provider_file_id, deleted_at=TIME_ARRAY,
    )  # fmt: skip
    await stack.enqueue_raw(AQ, good)
    for _, payload, payload_type, _ in BAD_ATTACHMENT:
        await stack.enqueue_raw(AQ, payload, payload_type=payload_type)

    settled = await stack.deliver(AQ)

    by_seq = {s.handled.envelope.message.seq: s.handled.outcome for s in settled}
    assert by_seq.pop(1) == Ok()  # the good one, unaffected by its neighbours
    assert (await stack.att(att))["cleanup_status"] == "done"
    dead = {d["seq"]: d for d in await stack.dead_letters()}
    assert sorted(dead) == sorted(by_seq) == list(range(2, len(BAD_ATTACHMENT) + 2))
    for seq, (case_id, payload, payload_type, names) in enumerate(BAD_ATTACHMENT, start=2):
        reason = reject_of(by_seq[seq]).reason
        assert reason.startswith("invalid payload: "), case_id
        assert names in reason, case_id
        assert dead[seq]["last_error"] == reason
        assert (bytes(dead[seq]["payload"]), dead[seq]["payload_type"]) == (payload, payload_type)
    assert len(stack.fake.requests()) == 1


async def test_bad_chat_messages_dead_letter_with_the_reason(stack: Stack) -> None:
    chat = await stack.chat()
    await stack.delete_chat(chat)  # seq 1: valid
    for _, payload, payload_type, _ in BAD_CHAT:
        await stack.enqueue_raw(CQ, payload, payload_type=payload_type)

    settled = await stack.deliver(CQ)

    rejected = [s for s in settled if isinstance(s.verdict, Reject)]
    assert len(rejected) == len(BAD_CHAT)
    assert [s.handled.outcome for s in settled if not isinstance(s.verdict, Reject)] == [Ok()]
    reasons = sorted(reject_of(s.handled.outcome).reason for s in rejected)
    for case_id, _, _, names in BAD_CHAT:
        assert any(names in r for r in reasons), case_id
    assert len(await stack.dead_letters()) == len(BAD_CHAT)


def test_an_attachment_kind_added_later_is_accepted() -> None:
    """Nothing reads the kind: a new one must not dead-letter the message and leak the file."""
    event = parse_attachment_deleted(encode(attachment_event(attachment_kind="video")), JSON)
    assert event.attachment_kind == "video"
