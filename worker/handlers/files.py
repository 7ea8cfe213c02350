"""Deleting one attachment's provider file and recording the result on its row.

Shared by both handlers, so the attachment path and the chat path record attempts, terminal
failures and metrics identically (the original's two copies drifted apart).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, assert_never
from uuid import UUID

import structlog

from worker.handlers.repository import CleanupRepository, Receipt
from worker.models import RetryReason
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


@dataclass(frozen=True)
class Done:
    """The file is gone (or there never was one) and the row says so, or the row is gone."""


@dataclass(frozen=True)
class StillPending:
    reason: RetryReason
    detail: str
    retry_after_seconds: float | None = None


@dataclass(frozen=True)
class Failed:
    """The row reached the terminal ``failed`` state on this attempt."""

    detail: str
    permanent: bool  # the provider refused the request itself (not: attempts ran out)


@dataclass(frozen=True)
class NotPending:
    """The attempt failed but the row was not pending: already terminal, or gone."""

    result: Transient | Permanent


FileOutcome = Done | StillPending | Failed | NotPending


async def clean_file(
    ctx: CleanupContext,
    *,
    attachment_id: UUID,
    tenant_id: UUID,
    chat_id: UUID,
    label: str,
    file_id: str | None,
) -> FileOutcome:
    """Delete the file (if any), then mark the row done (with its receipt) or record the
    failed attempt."""
    if file_id is None:
        await ctx.repo.mark_done(attachment_id)
        return Done()
    started = time.monotonic()
    result = await ctx.provider.delete_file(tenant_id, label, file_id)
    ctx.metrics.observe_cleanup_latency("delete_file", time.monotonic() - started)
    if isinstance(result, Deleted):
        receipt = receipt_for(result, file_id, tenant_id=tenant_id, chat_id=chat_id, label=label)
        if await ctx.repo.mark_done(attachment_id, receipt=receipt):
            ctx.metrics.cleanup_completed(FILE)
        outcome: FileOutcome = Done()
    else:
        outcome = await _record_failure(ctx, attachment_id, result)
    _log_outcome(attachment_id, outcome)
    return outcome


async def keep_file(ctx: CleanupContext, attachment_id: UUID, file_id: str) -> Done:
    """The row's duty ends without a delete: a live attachment still uses the file.

    ``done`` (not ``failed``) because nothing is owed: retrying would only keep the chat's
    vector store waiting, and the live attachment's own cleanup deletes the file later. Not
    counted as a completed delete; the note on the row and the log line say what happened.
    """
    await ctx.repo.mark_done(attachment_id, note=FILE_KEPT)
    log.warning(
        "file_kept", attachment_id=str(attachment_id), provider_file_id=file_id, reason=FILE_KEPT
    )
    return Done()


def _log_outcome(attachment_id: UUID, outcome: FileOutcome) -> None:
    """One event name per outcome: a line says what happened without reading its fields."""
    where = {"attachment_id": str(attachment_id)}
    match outcome:
        case Done():
            log.info("attachment_cleaned", **where)
        case StillPending(reason=reason):
            log.info("attachment_cleanup_retrying", **where, reason=str(reason))
        case Failed(permanent=permanent):
            log.warning("attachment_cleanup_failed", **where, permanent=permanent)
        case NotPending():
            log.info("attachment_cleanup_skipped", **where, why="row already terminal or gone")
        case _:
            assert_never(outcome)


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
    ctx: CleanupContext, attachment_id: UUID, result: Transient | Permanent
) -> FileOutcome:
    match result:
        case Transient(sent=False):
            # Refused by our own limiter or breaker: the file was not tried, so no attempt is
            # recorded (else a rate-limited tenant's files end failed without one request),
            # and cleanup_retry_total, which counts recorded attempts, is not raised either.
            return StillPending(result.reason, result.detail, result.retry_after_seconds)
        case Transient() | Permanent():
            status = await ctx.repo.record_attempt(
                attachment_id,
                result.detail,
                max_attempts=ctx.max_attempts,
                permanent=isinstance(result, Permanent),
            )
            return _after_attempt(ctx, status, result)
        case _:
            assert_never(result)


def _after_attempt(
    ctx: CleanupContext, status: str | None, result: Transient | Permanent
) -> FileOutcome:
    if status == "failed":
        ctx.metrics.cleanup_failed(FILE)
        return Failed(result.detail, permanent=isinstance(result, Permanent))
    if status == "pending" and isinstance(result, Transient):
        ctx.metrics.cleanup_retry(FILE, result.reason)
        return StillPending(result.reason, result.detail, result.retry_after_seconds)
    return NotPending(result)
