"""Attachment cleanup (``attachment_deleted`` events, seed ``AttachmentCleanupHandler``).

Differs from the seed on purpose (SPEC §5, §13): the row is the truth and the message only
points at it. The row is read and taken into cleanup (NULL -> pending) first, in one
compare-and-set, so attempts, errors and terminal failures are recorded; the delete uses the
row's tenant, backend and file id; a message that names a live attachment or disagrees with its
row is dead-lettered untouched; a file another live attachment references is kept. Provider
results are classified instead of "any answer is success".
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal
from uuid import UUID

import structlog

from worker.handlers.files import FILE_KEPT, CleanupContext, clean_file, keep_file
from worker.handlers.payloads import AttachmentDeleted, InvalidPayload, parse_attachment_deleted
from worker.handlers.repository import StoredAttachment, TakenAttachment
from worker.models import Message, Ok, Outcome, Prepared, Reject, Retry, RetryReason
from worker.observability.logging import bind_log_context

log = structlog.get_logger("worker.handlers")


Step = Callable[[], Awaitable[Outcome]]


class AttachmentCleanupHandler:
    """A ``BatchHandler``: a batch's messages without a file are settled by one statement.
    A ``CallSlotHandler``: a handling holds its slot only around its delete."""

    slot_around_calls: Literal[True] = True

    def __init__(self, ctx: CleanupContext):
        self._ctx = ctx

    async def __call__(self, message: Message) -> Outcome:
        try:
            event = parse_attachment_deleted(message.payload, message.payload_type)
        except InvalidPayload as exc:
            return Reject(f"invalid payload: {exc}")
        bind_log_context(**_rows_of(event))
        started = time.monotonic()
        step = self._after_take(event, await self._ctx.repo.take_attachment(event))
        outcome = step if isinstance(step, Ok) else await step()
        self._observe(started)
        return outcome

    async def prepare(self, messages: Sequence[Message]) -> list[Prepared | None]:
        """Settle the batch's messages without a provider file in one statement (SPEC §15):
        their take finishes the row (no file), or finds it the chat path's or already done.
        Every other message is left to its own handling, which takes its row as always,
        outside its slot (the slot is held around the delete only)."""
        started = time.monotonic()
        chosen = _file_less_first_of_each_attachment(messages)
        takes = await self._ctx.repo.take_attachments([event for _, event in chosen])
        prepared: list[Prepared | None] = [None] * len(messages)
        for (n, event), taken in zip(chosen, takes, strict=True):
            if taken is not None and isinstance(self._after_take(event, taken), Ok):
                prepared[n] = Prepared(Ok(), log=_rows_of(event))
                self._observe(started)
        return prepared

    def _observe(self, started: float) -> None:
        self._ctx.metrics.observe_cleanup_latency("attachment_cleanup", time.monotonic() - started)

    def _after_take(self, event: AttachmentDeleted, taken: TakenAttachment) -> Ok | Step:
        """What the take leaves to do: ``Ok`` when nothing, else the step still to run (a
        delete, a kept file, or a refusal to log)."""
        if taken.row is None:
            return self._after_purged(event, taken)
        if not taken.taken:
            refusal = _refusal(event, taken.row, chat_deleted=taken.chat_deleted)
            if refusal is None and taken.status == "done":
                return Ok()  # a redelivery: already finished
            return functools.partial(_not_taken, refusal)
        if taken.chat_deleted:
            return Ok()  # ownership passed to the chat path, which adopts this row
        row = taken.row  # as taken: it agrees with the message and is not live
        if row.provider_file_id is None:
            return Ok()  # nothing to delete: the take turned the row done
        if taken.file_in_live_use:
            return functools.partial(
                keep_file, self._ctx, event.attachment_id, row.provider_file_id
            )
        return functools.partial(
            clean_file,
            self._ctx,
            attachment_id=event.attachment_id,
            tenant_id=row.tenant_id,
            chat_id=row.chat_id,
            label=row.storage_backend,
            file_id=row.provider_file_id,
        )

    def _after_purged(self, event: AttachmentDeleted, taken: TakenAttachment) -> Ok | Step:
        """No row (chat purged): the message is the only record of the file, unless a live
        attachment still references it; then the file stays and the message is settled."""
        if taken.chat_deleted or event.provider_file_id is None:
            return Ok()  # the chat path owns the chat's files; or there is no file
        if taken.file_in_live_use:
            return functools.partial(_keep_purged, event.provider_file_id)
        return functools.partial(
            clean_file,
            self._ctx,
            attachment_id=event.attachment_id,
            tenant_id=event.tenant_id,
            chat_id=event.chat_id,
            label=event.storage_backend,
            file_id=event.provider_file_id,
            row_purged=True,
        )


async def _not_taken(refusal: str | None) -> Outcome:
    """The row refused the take: say why, without touching it."""
    if refusal is not None:
        log.warning("attachment_message_refused", reason=refusal)
        return Reject(refusal)
    # The row changed between this statement's read and its row lock (restored, or
    # finished by the chat path): nothing was taken; the next delivery reads it afresh.
    return Retry(RetryReason.CONFLICT, "attachment row changed while being taken", 0.0)


async def _keep_purged(file_id: str) -> Outcome:
    """Settled: nothing to record, the live attachment's cleanup owns the file."""
    log.warning("file_kept", provider_file_id=file_id, reason=FILE_KEPT)
    return Ok()


def _file_less_first_of_each_attachment(
    messages: Sequence[Message],
) -> list[tuple[int, AttachmentDeleted]]:
    """The messages to prepare, by position, with their events: those naming no provider
    file. Left out: invalid payloads (their handling rejects them) and repeats of an
    attachment already chosen (a statement names each row once; the repeat takes it itself)."""
    seen: set[UUID] = set()
    chosen: list[tuple[int, AttachmentDeleted]] = []
    for n, message in enumerate(messages):
        try:
            event = parse_attachment_deleted(message.payload, message.payload_type)
        except InvalidPayload:
            continue
        if event.provider_file_id is None and event.attachment_id not in seen:
            seen.add(event.attachment_id)
            chosen.append((n, event))
    return chosen


def _rows_of(event: AttachmentDeleted) -> dict[str, object]:
    """The ids a message's log lines carry."""
    return {
        "tenant_id": str(event.tenant_id),
        "chat_id": str(event.chat_id),
        "attachment_id": str(event.attachment_id),
    }


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
