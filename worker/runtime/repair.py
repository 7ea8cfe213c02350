"""`cleanup-worker retry-failed`: the operator's one repair path once a cause is fixed (SPEC §7).

After a revoked key or a broken route is fixed, the debt it left is of three kinds: rows that
reached ``failed``, rows still ``pending`` whose message was dead-lettered (a circuit breaker
refused them until the deliveries ran out), and dead letters of chats whose cleanup stopped
half-way. One transaction turns all of it back into work:

- failed attachments go back to pending with a fresh attempt budget;
- a pending dead letter whose cleanup the database says is finished (done by another message,
  a later replay, the chat path) is resolved: it no longer asks for anything;
- a pending dead letter whose cleanup is unfinished, and that the handlers would accept, is
  replayed (it ends ``resolved`` once processed); poison (an invalid payload, a live or
  mismatching row) stays pending for ``dead-letters discard``;
- every deleted chat with unfinished cleanup not covered by a replay gets a chat message, and
  every failed attachment of a chat still active not covered by a replay an attachment message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from worker.config import Queues
from worker.db import Conn, Database
from worker.db import repair as repo
from worker.handlers.payloads import (
    AttachmentDeleted,
    ChatSoftDeleted,
    InvalidPayload,
    parse_attachment_deleted,
    parse_chat_soft_deleted,
)
from worker.outbox import dead_letters as dl
from worker.producer import enqueue_attachment_cleanup, enqueue_chat_cleanup
from worker.runtime.app import App


@dataclass(frozen=True)
class RepairReport:
    attachments_reset: int
    chat_messages: int
    attachment_messages: int
    dead_letters_replayed: int = 0
    dead_letters_resolved: int = 0
    dead_letters_left: int = 0  # pending ones no fix unblocks (poison): discard them


@dataclass
class DeadLetterTriage:
    """Pending dead letters sorted by what their cleanup needs."""

    finished: list[int] = field(default_factory=list)
    replay: list[int] = field(default_factory=list)
    poison: list[int] = field(default_factory=list)
    chats: set[UUID] = field(default_factory=set)  # covered by a replayed chat message
    attachments: set[UUID] = field(default_factory=set)  # covered by a replayed message


async def retry_failed(conn: Conn, queues: Queues, *, chat_id: UUID | None) -> RepairReport:
    async with conn.transaction():
        reset = await repo.reset_failed_attachments(conn, chat_id)
        triage = await triage_dead_letters(conn, queues, chat_id=chat_id)
        await _resolve(conn, triage.finished)
        if triage.replay:
            await dl.replay(conn, dl.Filter(ids=triage.replay, limit=len(triage.replay)))
        with_debt = await repo.deleted_chats_with_debt(conn, chat_id)
        chats = {chat: tenant for chat, tenant in with_debt.items() if chat not in triage.chats}
        for chat, tenant in chats.items():
            await enqueue_chat_cleanup(conn, queues, tenant_id=tenant, chat_id=chat)
        orphans = [
            row for row in reset if row.chat_id not in chats and row.chat_id not in triage.chats
            and row.attachment_id not in triage.attachments
        ]  # fmt: skip
        for row in orphans:
            await enqueue_attachment_cleanup(conn, queues, **row._asdict())
    return RepairReport(
        attachments_reset=len(reset),
        chat_messages=len(chats),
        attachment_messages=len(orphans),
        dead_letters_replayed=len(triage.replay),
        dead_letters_resolved=len(triage.finished),
        dead_letters_left=len(triage.poison),
    )


async def resolve_finished_dead_letters(conn: Conn, queues: Queues) -> int:
    """Resolve the pending dead letters whose cleanup has completed by other means (so the
    dead-letter alerts stop firing for work that is done); returns how many."""
    async with conn.transaction():
        triage = await triage_dead_letters(conn, queues, chat_id=None)
        return await _resolve(conn, triage.finished)


async def resolve_finished_dead_letters_of(app: App) -> int:
    """``resolve_finished_dead_letters`` for a running app: a drain pass ends with it and the
    daemon's vacuum loop runs it, so ChatDeadLetters stops firing for a chat another message
    (or an earlier repair) fully cleaned, without anyone running a command."""
    async with Database(app.pool).connection() as conn:
        return await resolve_finished_dead_letters(conn, app.config.outbox.queues)


async def triage_dead_letters(
    conn: Conn, queues: Queues, *, chat_id: UUID | None
) -> DeadLetterTriage:
    """Read pending dead letters (of ``chat_id`` only, if given) against the rows they name."""
    pending = await repo.pending_dead_letters(conn, [queues.attachment_queue, queues.chat_queue])
    chat_events: list[tuple[int, ChatSoftDeleted]] = []
    attachment_events: list[tuple[int, AttachmentDeleted]] = []
    triage = DeadLetterTriage()
    for dead_letter_id, queue, payload, payload_type in pending:
        event = _parse(queue == queues.chat_queue, payload, payload_type)
        if event is None:
            if chat_id is None:
                triage.poison.append(dead_letter_id)
        elif chat_id is None or event.chat_id == chat_id:
            if isinstance(event, ChatSoftDeleted):
                chat_events.append((dead_letter_id, event))
            else:
                attachment_events.append((dead_letter_id, event))
    await _triage_chats(conn, chat_events, triage)
    await _triage_attachments(conn, attachment_events, triage)
    return triage


def _parse(is_chat: bool, payload: bytes, payload_type: str) -> Any:
    try:
        if is_chat:
            return parse_chat_soft_deleted(payload, payload_type)
        return parse_attachment_deleted(payload, payload_type)
    except InvalidPayload:
        return None


async def _triage_chats(
    conn: Conn, events: Sequence[tuple[int, ChatSoftDeleted]], triage: DeadLetterTriage
) -> None:
    """A chat message is replayable only for a soft-deleted chat of its tenant; finished when
    nothing of the chat is left to clean."""
    states = await repo.chat_cleanup_states(conn, [e.chat_id for _, e in events])
    for dead_letter_id, event in events:
        state = states.get(event.chat_id)
        tenant, deleted, unfinished = state if state else (None, False, False)
        if not deleted or tenant != event.tenant_id:
            triage.poison.append(dead_letter_id)
        elif unfinished:
            triage.replay.append(dead_letter_id)
            triage.chats.add(event.chat_id)
        else:
            triage.finished.append(dead_letter_id)


async def _triage_attachments(
    conn: Conn, events: Sequence[tuple[int, AttachmentDeleted]], triage: DeadLetterTriage
) -> None:
    """The row is the truth: done → finished; a row that disagrees with the message, or is
    live, is poison; a missing row (chat purged) leaves the message as the only record."""
    rows = await repo.attachment_cleanup_states(conn, [e.attachment_id for _, e in events])
    for dead_letter_id, event in events:
        row = rows.get(event.attachment_id)
        if row is None:
            triage.replay.append(dead_letter_id)
            triage.attachments.add(event.attachment_id)
            continue
        tenant, chat, file_id, status, deleted = row
        if status == "done":
            triage.finished.append(dead_letter_id)
        elif not deleted or (tenant, chat, file_id) != (
            event.tenant_id,
            event.chat_id,
            event.provider_file_id,
        ):
            triage.poison.append(dead_letter_id)
        else:
            triage.replay.append(dead_letter_id)
            triage.attachments.add(event.attachment_id)


async def _resolve(conn: Conn, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    return await repo.resolve_dead_letters(conn, ids)
