"""Attachment cleanup (``attachment_deleted`` events, seed ``AttachmentCleanupHandler``).

Differs from the seed on purpose (SPEC §5, §13): the row is the truth and the message only
points at it. The row is read and taken into cleanup (NULL -> pending) first, in one
compare-and-set, so attempts, errors and terminal failures are recorded; the delete uses the
row's tenant, backend and file id; a message that names a live attachment or disagrees with its
row is dead-lettered untouched; a file another live attachment references is kept. Provider
results are classified instead of "any answer is success".
"""

from __future__ import annotations

import time

import structlog

from worker.handlers.files import FILE_KEPT, CleanupContext, clean_file, keep_file
from worker.handlers.payloads import AttachmentDeleted, InvalidPayload, parse_attachment_deleted
from worker.handlers.repository import StoredAttachment, TakenAttachment
from worker.models import Message, Ok, Outcome, Reject, Retry, RetryReason
from worker.observability.logging import bind_log_context

log = structlog.get_logger("worker.handlers")


class AttachmentCleanupHandler:
    def __init__(self, ctx: CleanupContext):
        self._ctx = ctx

    async def __call__(self, message: Message) -> Outcome:
        try:
            event = parse_attachment_deleted(message.payload, message.payload_type)
        except InvalidPayload as exc:
            return Reject(f"invalid payload: {exc}")
        bind_log_context(
            tenant_id=str(event.tenant_id),
            chat_id=str(event.chat_id),
            attachment_id=str(event.attachment_id),
        )
        started = time.monotonic()
        outcome = await self._clean(event)
        self._ctx.metrics.observe_cleanup_latency("attachment_cleanup", time.monotonic() - started)
        return outcome

    async def _clean(self, event: AttachmentDeleted) -> Outcome:
        taken = await self._ctx.repo.take_attachment(event)
        if taken.row is None:
            return await self._clean_purged(event, taken)
        if not taken.taken:
            return self._not_taken(event, taken.row, taken)
        if taken.chat_deleted:
            return Ok()  # ownership passed to the chat path, which adopts this row
        row = taken.row  # as taken: it agrees with the message and is not live
        if row.provider_file_id is None:
            return Ok()  # nothing to delete: the take turned the row done
        if taken.file_in_live_use and row.provider_file_id is not None:
            await keep_file(self._ctx, event.attachment_id, row.provider_file_id)
            return Ok()
        return await clean_file(
            self._ctx,
            attachment_id=event.attachment_id,
            tenant_id=row.tenant_id,
            chat_id=row.chat_id,
            label=row.storage_backend,
            file_id=row.provider_file_id,
        )

    def _not_taken(
        self, event: AttachmentDeleted, row: StoredAttachment, taken: TakenAttachment
    ) -> Outcome:
        """The row refused the take: say why, without touching it."""
        refusal = _refusal(event, row, chat_deleted=taken.chat_deleted)
        if refusal is not None:
            log.warning("attachment_message_refused", reason=refusal)
            return Reject(refusal)
        if taken.status == "done":
            return Ok()  # a redelivery: already finished
        # The row changed between this statement's read and its row lock (restored, or
        # finished by the chat path): nothing was taken; the next delivery reads it afresh.
        return Retry(RetryReason.CONFLICT, "attachment row changed while being taken", 0.0)

    async def _clean_purged(self, event: AttachmentDeleted, taken: TakenAttachment) -> Outcome:
        """No row (chat purged): the message is the only record of the file, unless a live
        attachment still references it; then the file stays and the message is settled."""
        if taken.chat_deleted:
            return Ok()  # the chat path owns the chat's files
        if taken.file_in_live_use:
            log.warning("file_kept", provider_file_id=event.provider_file_id, reason=FILE_KEPT)
            return Ok()  # settled: nothing to record, the live attachment's cleanup owns it
        return await clean_file(
            self._ctx,
            attachment_id=event.attachment_id,
            tenant_id=event.tenant_id,
            chat_id=event.chat_id,
            label=event.storage_backend,
            file_id=event.provider_file_id,
            row_purged=True,
        )


def _refusal(event: AttachmentDeleted, row: StoredAttachment, *, chat_deleted: bool) -> str | None:
    """Why the message must not be acted on (its row disagrees, or is live), or None."""
    disagreements = [
        f"{field} {_shown(theirs)} disagrees with its row ({_shown(ours)})"
        for field, theirs, ours in (
            ("tenant_id", event.tenant_id, row.tenant_id),
            ("chat_id", event.chat_id, row.chat_id),
            ("storage_backend", event.storage_backend, row.storage_backend),
            ("provider_file_id", event.provider_file_id, row.provider_file_id),
        )
        if theirs != ours
    ]
    if disagreements:
        return "message disagrees with the attachment row: " + "; ".join(disagreements)
    if not row.deleted and not chat_deleted:
        return "message names a live attachment (not deleted, chat active): its file is kept"
    return None


def _shown(value: object) -> str:
    """Text quoted (so an empty or odd label is visible), ids and None as they are."""
    return repr(value) if isinstance(value, str) else str(value)
