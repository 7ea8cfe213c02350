"""Attachment cleanup (``attachment_deleted`` events, seed ``AttachmentCleanupHandler``).

Differs from the seed on purpose (SPEC §5): the row is taken into cleanup (NULL -> pending)
first, so attempts, errors and terminal failures are recorded; and provider results are
classified instead of "any answer is success".
"""

from __future__ import annotations

import time

import structlog

from worker.handlers.files import (
    CleanupContext,
    Done,
    Failed,
    FileOutcome,
    NotPending,
    StillPending,
    clean_file,
)
from worker.handlers.payloads import AttachmentDeleted, InvalidPayload, parse_attachment_deleted
from worker.models import Message, Ok, Outcome, Reject, Retry
from worker.providers.results import Transient


class AttachmentCleanupHandler:
    def __init__(self, ctx: CleanupContext):
        self._ctx = ctx

    async def __call__(self, message: Message) -> Outcome:
        try:
            event = parse_attachment_deleted(message.payload, message.payload_type)
        except InvalidPayload as exc:
            return Reject(f"invalid payload: {exc}")
        structlog.contextvars.bind_contextvars(
            tenant_id=str(event.tenant_id),
            chat_id=str(event.chat_id),
            attachment_id=str(event.attachment_id),
        )
        started = time.monotonic()
        outcome = await self._clean(event)
        self._ctx.metrics.observe_cleanup_latency("attachment_cleanup", time.monotonic() - started)
        return outcome

    async def _clean(self, event: AttachmentDeleted) -> Outcome:
        taken = await self._ctx.repo.take_attachment(event.attachment_id, event.chat_id)
        if taken.status == "done":
            return Ok()
        if taken.chat_deleted:
            return Ok()  # ownership passed to the chat path, which adopts this row
        result = await clean_file(
            self._ctx,
            attachment_id=event.attachment_id,
            tenant_id=event.tenant_id,
            label=event.storage_backend,
            file_id=event.provider_file_id,
        )
        return self._outcome(result, row_exists=taken.status is not None)

    def _outcome(self, result: FileOutcome, *, row_exists: bool) -> Outcome:
        match result:
            case Done():
                return Ok()
            case StillPending(reason=reason, detail=detail, retry_after_seconds=after):
                return Retry(reason, detail, after)
            case Failed(detail=detail, permanent=True):
                return Reject(f"provider refused the delete: {detail}")
            case Failed(detail=detail):
                return Reject(f"max attempts ({self._ctx.max_attempts}) reached: {detail}")
            case NotPending(result=failure):
                if row_exists:
                    return Ok()  # already terminal: a stale redelivery
                # The row is gone (chat purged): this message is the only record of the file.
                if isinstance(failure, Transient):
                    return Retry(failure.reason, failure.detail, failure.retry_after_seconds)
                return Reject(f"provider refused the delete: {failure.detail}")
