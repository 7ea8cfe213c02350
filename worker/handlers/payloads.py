"""Parsing cleanup events as the original producer writes them (upstream §3.2, §3.3).

Extra fields are ignored; ``deleted_at`` / ``chat_deleted_at`` are accepted whatever their
encoding (the original may write an integer array) because nothing reads them. A missing or
malformed required field is an ``InvalidPayload`` whose message names the field, so the dead
letter says exactly what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

JSON = "application/json"
MAX_ID_CHARS = 128


class InvalidPayload(ValueError):
    """The message can never be processed as it is (dead-letter it)."""


@dataclass(frozen=True)
class AttachmentDeleted:
    tenant_id: UUID
    chat_id: UUID
    attachment_id: UUID
    provider_file_id: str | None
    storage_backend: str
    attachment_kind: str


@dataclass(frozen=True)
class ChatSoftDeleted:
    tenant_id: UUID
    chat_id: UUID
    system_request_id: UUID


def parse_attachment_deleted(payload: bytes, payload_type: str) -> AttachmentDeleted:
    doc = _json_object(payload, payload_type)
    event_type = _text(doc, "event_type")
    if event_type != "attachment_deleted":
        raise InvalidPayload(f"event_type: expected 'attachment_deleted', got {event_type!r:.80}")
    # Required (the original's wire struct requires it) but not read: a kind the chat service
    # adds later must not dead-letter the message and leak the file.
    kind = _text(doc, "attachment_kind", max_chars=16)
    return AttachmentDeleted(
        tenant_id=_uuid(doc, "tenant_id"),
        chat_id=_uuid(doc, "chat_id"),
        attachment_id=_uuid(doc, "attachment_id"),
        provider_file_id=_optional_id(doc, "provider_file_id"),
        storage_backend=_text(doc, "storage_backend", max_chars=32),
        attachment_kind=kind,
    )


def parse_chat_soft_deleted(payload: bytes, payload_type: str) -> ChatSoftDeleted:
    doc = _json_object(payload, payload_type)
    reason = _text(doc, "reason")
    if reason != "chat_soft_delete":
        raise InvalidPayload(f"reason: unknown value {reason!r:.80} (expected 'chat_soft_delete')")
    return ChatSoftDeleted(
        tenant_id=_uuid(doc, "tenant_id"),
        chat_id=_uuid(doc, "chat_id"),
        system_request_id=_uuid(doc, "system_request_id"),
    )


def _json_object(payload: bytes, payload_type: str) -> dict[str, Any]:
    if payload_type != JSON:
        raise InvalidPayload(f"payload_type: expected {JSON!r}, got {payload_type!r:.80}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"payload is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"payload is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise InvalidPayload("payload is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
        raise InvalidPayload(f"payload is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict):
        raise InvalidPayload(f"payload: expected a JSON object, got {type(doc).__name__}")
    return doc


def _text(doc: dict[str, Any], field: str, *, max_chars: int = MAX_ID_CHARS) -> str:
    if field not in doc or doc[field] is None:
        raise InvalidPayload(f"{field}: missing required field")
    value = doc[field]
    if not isinstance(value, str):
        raise InvalidPayload(f"{field}: expected a string, got {type(value).__name__}")
    if not value or len(value) > max_chars:
        raise InvalidPayload(f"{field}: expected 1-{max_chars} characters, got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: valid JSON escape, not text
        raise InvalidPayload(f"{field}: not valid Unicode text") from None
    if "\x00" in value:  # valid JSON ("\u0000"), but no row can hold it: PostgreSQL text can't
        raise InvalidPayload(f"{field}: contains a NUL character")
    return value


def _uuid(doc: dict[str, Any], field: str) -> UUID:
    text = _text(doc, field, max_chars=64)
    try:
        return UUID(text)
    except ValueError:
        raise InvalidPayload(f"{field}: not a UUID: {text!r:.80}") from None


def _optional_id(doc: dict[str, Any], field: str) -> str | None:
    if doc.get(field) in (None, ""):
        return None
    return _text(doc, field)
