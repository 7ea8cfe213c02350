"""Deleting one attachment's provider file and recording the result on its row.

Shared by both handlers, so the attachment path and the chat path record attempts, terminal
failures and metrics identically (the original's two copies drifted apart). It answers with
the message's ``Outcome`` directly: ``Ok`` (nothing more to do for this file), ``Retry`` (the
row stays pending) or ``Reject`` (the row failed for good on this attempt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import structlog

from worker.handlers.repository import CleanupRepository, Receipt
from worker.models import Ok, Outcome, Reject, Retry, provider_slot
from worker.observability.metrics import Metrics
from worker.providers.results import Deleted, DeleteResult, Permanent, Transient

log = structlog.get_logger("worker.handlers")

FILE = "file"
VECTOR_STORE = "vector_store"

# Recorded on the row (last_cleanup_error) and logged when a file is not deleted because a
# live attachment still references it (SPEC §13): that attachment's own cleanup deletes it.
FILE_KEPT = "file kept: referenced by a live attachment"


class Provider(Protocol):
    """What the handlers need from the provider layer (``ProviderGateway`` implements it)."""

    async def delete_file(self, tenant_id: UUID, label: str, file_id: str) -> DeleteResult: ...

    async def delete_vector_store(
        self, tenant_id: UUID, label: str, vector_store_id: str
    ) -> DeleteResult: ...


@dataclass(frozen=True)
class CleanupContext:
    repo: CleanupRepository
    provider: Provider
    metrics: Metrics
    max_attempts: int


async def clean_file(
    ctx: CleanupContext,
    *,
    attachment_id: UUID,
    tenant_id: UUID,
    chat_id: UUID,
    label: str,
    file_id: str | None,
    row_purged: bool = False,
) -> Outcome:
    """Delete the file (if any), then mark the row done (with its receipt) or record the
    failed attempt.

    ``row_purged``: the row went with its chat, so the message is the only record of the file
    and a failure that finds no row to record it on is the message's to retry or reject.
    """
    if file_id is None:
        await ctx.repo.mark_done(attachment_id)
        return Ok()
    async with provider_slot():
        started = time.monotonic()
        result = await ctx.provider.delete_file(tenant_id, label, file_id)
        ctx.metrics.observe_cleanup_latency("delete_file", time.monotonic() - started)
    if not isinstance(result, Deleted):
        return await _record_failure(ctx, attachment_id, result, row_purged=row_purged)
    receipt = receipt_for(result, file_id, tenant_id=tenant_id, chat_id=chat_id, label=label)
    if await ctx.repo.mark_done(attachment_id, receipt=receipt):
        ctx.metrics.cleanup_completed(FILE)
    log.info("attachment_cleaned", attachment_id=str(attachment_id))
    return Ok()


async def keep_file(ctx: CleanupContext, attachment_id: UUID, file_id: str) -> Ok:
    """The row's duty ends without a delete: a live attachment still uses the file.

    ``done`` (not ``failed``) because nothing is owed: retrying would only keep the chat's
    vector store waiting, and the live attachment's own cleanup deletes the file later. Not
    counted as a completed delete; the note on the row and the log line say what happened.
    """
    await ctx.repo.mark_done(attachment_id, note=FILE_KEPT)
    log.warning(
        "file_kept", attachment_id=str(attachment_id), provider_file_id=file_id, reason=FILE_KEPT
    )
    return Ok()


def receipt_for(
    result: Deleted, object_id: str, *, tenant_id: UUID, chat_id: UUID | None, label: str
) -> Receipt:
    """The receipt of a confirmed delete; the route falls back to the label for a provider
    that names none (the gateway always does)."""
    return Receipt(
        object_id=object_id,
        tenant_id=tenant_id,
        chat_id=chat_id,
        backend=label,
        route=result.route or label,
        http_status=result.http_status,
        outcome="already_gone" if result.not_found else "deleted",
        request_id=result.request_id,
    )


async def _record_failure(
    ctx: CleanupContext, attachment_id: UUID, result: Transient | Permanent, *, row_purged: bool
) -> Outcome:
    """Record the failed attempt on the row; one log event name per way it ends."""
    where = {"attachment_id": str(attachment_id)}
    if isinstance(result, Transient) and not result.sent:
        # Refused by our own limiter or breaker: the file was not tried, so no attempt is
        # recorded (else a rate-limited tenant's files end failed without one request),
        # and cleanup_retry_total, which counts recorded attempts, is not raised either.
        log.info("attachment_cleanup_retrying", **where, reason=str(result.reason))
        return _retry_of(result)
    permanent = isinstance(result, Permanent)
    status = await ctx.repo.record_attempt(
        attachment_id, result.detail, max_attempts=ctx.max_attempts, permanent=permanent
    )
    if status == "failed":
        ctx.metrics.cleanup_failed(FILE)
        log.warning("attachment_cleanup_failed", **where, permanent=permanent)
        return _rejected(ctx, result)
    if status == "pending" and isinstance(result, Transient):
        ctx.metrics.cleanup_retry(FILE, result.reason)
        log.info("attachment_cleanup_retrying", **where, reason=str(result.reason))
        return _retry_of(result)
    log.info("attachment_cleanup_skipped", **where, why="row already terminal or gone")
    if not row_purged:
        return Ok()  # already terminal: a stale redelivery
    # No row (chat purged): this message is the only record of the file.
    return _retry_of(result) if isinstance(result, Transient) else _rejected(ctx, result)


def _retry_of(result: Transient) -> Retry:
    """The message's Retry for a provider's transient failure."""
    return Retry(result.reason, result.detail, result.retry_after_seconds)


def _rejected(ctx: CleanupContext, result: Transient | Permanent) -> Reject:
    """The message's dead letter: the provider refused the delete, or the row ran out of
    attempts."""
    if isinstance(result, Permanent):
        return Reject(f"provider refused the delete: {result.detail}")
    return Reject(f"max attempts ({ctx.max_attempts}) reached: {result.detail}")
