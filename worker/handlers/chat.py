"""Chat cleanup (``chat_soft_delete`` events, seed ``ChatCleanupHandler``).

Deletes every pending file of a deleted chat concurrently (bounded), then — only once none is
pending — its vector store, then hard-deletes the vector-store row: the durable marker that the
chat is fully cleaned. Differs from the seed on purpose (SPEC §5): attachments deleted one by
one before the chat whose cleanup never started are adopted and cleaned too. A file that a live
attachment elsewhere references is kept (SPEC §13), and a chat restored mid-cleanup stops it.

Race safety: liveness and live references are read with the pending list, one statement before
the deletes. A chat restored before that statement deletes nothing (the message is
dead-lettered, the files kept); one restored after it cannot be stopped by the worker short of
holding row locks across provider calls: the chat service must not restore a chat whose cleanup
has begun (the upstream never restores a chat).
"""

from __future__ import annotations

import asyncio
import time
from typing import assert_never
from uuid import UUID

import structlog

from worker.handlers.files import VECTOR_STORE, CleanupContext, clean_file, keep_file, receipt_for
from worker.handlers.payloads import ChatSoftDeleted, InvalidPayload, parse_chat_soft_deleted
from worker.handlers.repository import PendingAttachment, Receipt, VectorStoreRow
from worker.models import Message, Ok, Outcome, Reject, Retry, RetryReason
from worker.observability.logging import bind_log_context
from worker.providers.results import Deleted, Permanent, Transient

log = structlog.get_logger("worker.handlers")


class ChatCleanupHandler:
    def __init__(self, ctx: CleanupContext, *, file_concurrency: int):
        self._ctx = ctx
        self._file_concurrency = file_concurrency

    async def __call__(self, message: Message) -> Outcome:
        try:
            event = parse_chat_soft_deleted(message.payload, message.payload_type)
        except InvalidPayload as exc:
            return Reject(f"invalid payload: {exc}")
        bind_log_context(  # the chat service's id: its logs join ours
            tenant_id=str(event.tenant_id),
            chat_id=str(event.chat_id),
            system_request_id=str(event.system_request_id),
        )
        started = time.monotonic()
        outcome = await self._clean(event)
        self._ctx.metrics.observe_cleanup_latency("chat_cleanup", time.monotonic() - started)
        return outcome

    async def _clean(self, event: ChatSoftDeleted) -> Outcome:
        repo = self._ctx.repo
        if not await repo.chat_is_deleted(event.chat_id):
            return Reject("chat is not soft-deleted (active or missing)")
        await repo.adopt_chat_attachments(event.chat_id)
        pending = await repo.pending_attachments(event.chat_id)
        live = [att for att in pending if att.live]
        if live:
            return Reject(
                f"chat restored during cleanup: {len(live)} attachment(s) live again, "
                f"first {live[0].id}; their files are kept"
            )
        still_pending = await self._clean_files(event.chat_id, pending)
        if still_pending:
            return _retry_for(still_pending)
        vector_store = await repo.vector_store(event.chat_id)
        if vector_store is None:
            return Ok()
        return await self._clean_vector_store(event, vector_store)

    async def _clean_files(
        self, chat_id: UUID, attachments: list[PendingAttachment]
    ) -> list[Retry]:
        """Clean all files concurrently; returns the Retries of the ones that stay pending.

        A file whose row failed for good (its Reject) does not hold the chat back: the vector
        store goes next, and that path reports the failed attachments.
        """
        slots = asyncio.Semaphore(self._file_concurrency)

        async def one(att: PendingAttachment) -> Outcome:
            if att.file_in_live_use and att.provider_file_id is not None:
                return await keep_file(self._ctx, att.id, att.provider_file_id)
            async with slots:
                return await clean_file(
                    self._ctx,
                    attachment_id=att.id,
                    tenant_id=att.tenant_id,
                    chat_id=chat_id,
                    label=att.storage_backend,
                    file_id=att.provider_file_id,
                )

        tasks = [asyncio.ensure_future(one(att)) for att in attachments]
        try:
            outcomes = await asyncio.gather(*tasks)
        finally:
            # When one raises, gather leaves the others running (and the queued ones starting)
            # after the message is settled, even after the pool closes: stop them first.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [o for o in outcomes if isinstance(o, Retry)]

    async def _clean_vector_store(self, event: ChatSoftDeleted, row: VectorStoreRow) -> Outcome:
        repo, metrics = self._ctx.repo, self._ctx.metrics
        unfinished = await repo.unfinished_attachments(event.chat_id)
        if unfinished.pending:
            return Retry(RetryReason.PENDING, "attachments became pending again")
        failed = unfinished.failed
        if failed:
            log.warning("vector_store_with_failed_attachments", failed_attachments=failed)
        receipt: Receipt | None = None  # no store id: nothing was deleted, nothing to prove
        if row.vector_store_id is not None:
            started = time.monotonic()
            result = await self._ctx.provider.delete_vector_store(
                row.tenant_id, row.provider, row.vector_store_id
            )
            metrics.observe_cleanup_latency("delete_vector_store", time.monotonic() - started)
            match result:
                case Deleted():
                    receipt = receipt_for(
                        result,
                        row.vector_store_id,
                        tenant_id=row.tenant_id,
                        chat_id=event.chat_id,
                        label=row.provider,
                    )
                case Transient(reason=reason, detail=detail, retry_after_seconds=after):
                    if reason is not RetryReason.DEFERRED:  # waiting for a fair turn: no retry
                        metrics.cleanup_retry(VECTOR_STORE, reason)
                    return Retry(reason, f"vector store: {detail}", after)
                case Permanent(detail=detail):
                    metrics.cleanup_failed(VECTOR_STORE)
                    return Reject(f"provider refused the vector store delete: {detail}")
                case _:
                    assert_never(result)
        await repo.delete_vector_store_row(row.id, receipt=receipt)
        # Counted only once the row is gone, like completed: a retried store delete counts once.
        if failed:
            metrics.vector_store_with_failed_attachments()
        if row.vector_store_id is not None:
            metrics.cleanup_completed(VECTOR_STORE)
        log.info("vector_store_cleaned", vector_store_row=str(row.id))
        return Ok()


def _retry_for(pending: list[Retry]) -> Retry:
    """One Retry for the message: the first failure's reason, the longest Retry-After.

    A file deferred for its tenant's fair turn counts only when nothing else failed: a deferred
    Retry spends no delivery, which a real failure must.
    """
    hints = [p.retry_after_seconds for p in pending if p.retry_after_seconds is not None]
    failures = [p for p in pending if p.reason is not RetryReason.DEFERRED]
    first = (failures or pending)[0]
    detail = f"{len(pending)} attachment(s) still pending; first: {first.detail}"
    return Retry(first.reason, detail, max(hints) if hints else None)
