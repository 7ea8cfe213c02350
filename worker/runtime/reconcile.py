"""`cleanup-worker reconcile`: the provider's own listing against the database (SPEC §14).

For every configured route (a backend's shared key, each tenant override) it pages through
the provider's files and vector stores and classifies each object with one set-based query
per page (``sql/queries/reconcile.sql``):

- leaked: a file whose attachment rows are all soft-deleted (or their chat is), whatever their
  ``cleanup_status`` says (NULL: the original worker skipped it; done: a wrong route's 404 or
  a lost delete; failed), once no cleanup of it can still be in flight; a vector store whose
  chat is soft-deleted (its ``chat_vector_stores`` row is still there);
- unreferenced: a file no row references, older than the grace period: reported only, deleted
  only with ``delete_unreferenced_older_than`` (through the provider delete, with a receipt);
- never touched: anything a live row references, anything younger than the grace period.

A dry run makes listing calls only and changes nothing in the database but its report row (the
daemon's leak gauge reads it). ``apply`` hands leaked objects back to the normal cleanup path:
rows to pending, messages enqueued in the same transaction (the chat-level message where the
chat path owns the row), so limits, retries, receipts and metrics apply as for any cleanup.
A leaked file whose row routes to another account than the one listing it (misrouted) is
reported and not applied: its normal cleanup would go to the wrong account again.

Just over 400 lines: the listing pass, the classification and its two write paths (apply,
delete unreferenced) read as one story; the statements are the repository's
(``worker.db.reconcile``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from worker.db import AsyncConnectionPool, Database
from worker.db import reconcile as repo
from worker.db.receipts import insert_receipt
from worker.db.reconcile import FileReference
from worker.handlers.repository import default_worker_id
from worker.observability.metrics import Metrics
from worker.producer import Queues, enqueue_attachment_cleanup, enqueue_chat_cleanup
from worker.providers.gateway import ProviderGateway
from worker.providers.listing import ListedObject, ListingFailed, list_objects
from worker.providers.results import Deleted, ResourceKind, Transient
from worker.providers.routing import Route

Progress = Callable[[str, ResourceKind, int], None]
"""Called after each page: (route, kind, objects listed so far on this route)."""


@dataclass(frozen=True)
class ReconcileOptions:
    tenant_id: UUID | None = None
    backend: str | None = None
    apply: bool = False
    grace: timedelta = timedelta(hours=24)
    delete_unreferenced_older_than: timedelta | None = None
    page_size: int | None = None  # None: the API's largest page


@dataclass
class RouteReport:
    """What one route's listing found; ``tenant_only``: a shared route read for one tenant."""

    route: str
    backend: str
    tenant_id: UUID | None
    tenant_only: UUID | None = None
    error: str | None = None
    files_listed: int = 0
    vector_stores_listed: int = 0
    live_files: int = 0
    young_files: int = 0
    in_cleanup_files: int = 0
    live_vector_stores: int = 0
    young_vector_stores: int = 0
    in_cleanup_vector_stores: int = 0
    unreferenced_vector_stores: int = 0
    leaked_files: list[dict[str, Any]] = field(default_factory=list)
    leaked_vector_stores: list[dict[str, Any]] = field(default_factory=list)
    unreferenced_files: list[dict[str, Any]] = field(default_factory=list)
    unreferenced_deleted: int = 0
    unreferenced_delete_failures: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tenant_id"] = None if self.tenant_id is None else str(self.tenant_id)
        data["tenant_only"] = None if self.tenant_only is None else str(self.tenant_only)
        return data


@dataclass(frozen=True)
class Applied:
    attachments_reset: int
    chat_messages: int
    attachment_messages: int
    misrouted_skipped: int


@dataclass
class ReconcileReport:
    routes: list[RouteReport]
    grace_hours: float
    dry_run: bool
    applied: Applied | None = None

    @property
    def leaked_files(self) -> int:
        return sum(len(r.leaked_files) for r in self.routes)

    @property
    def leaked_vector_stores(self) -> int:
        return sum(len(r.leaked_vector_stores) for r in self.routes)

    @property
    def unreferenced_files(self) -> int:
        return sum(len(r.unreferenced_files) for r in self.routes)

    @property
    def failed_routes(self) -> list[RouteReport]:
        return [r for r in self.routes if r.error is not None]

    @property
    def partial(self) -> bool:
        """A route could not be listed, or an unreferenced delete failed."""
        return any(r.error or r.unreferenced_delete_failures for r in self.routes)

    def as_json(self) -> dict[str, Any]:
        totals = {
            name: sum(getattr(r, name) for r in self.routes)
            for name in ("files_listed", "vector_stores_listed", "live_files", "young_files",
                         "in_cleanup_files", "live_vector_stores", "young_vector_stores",
                         "in_cleanup_vector_stores", "unreferenced_vector_stores",
                         "unreferenced_deleted")
        }  # fmt: skip
        return {
            "leaked_files": self.leaked_files,
            "leaked_vector_stores": self.leaked_vector_stores,
            "unreferenced_files": self.unreferenced_files,
            **totals,
            "dry_run": self.dry_run,
            "partial": self.partial,
            "grace_hours": self.grace_hours,
            "routes_failed": len(self.failed_routes),
            "applied": None if self.applied is None else asdict(self.applied),
            "routes": [r.as_json() for r in self.routes],
        }


def select_routes(
    routes: Sequence[Route], *, tenant_id: UUID | None, backend: str | None
) -> list[tuple[Route, UUID | None]]:
    """The routes to list, each with the tenant its findings are limited to (or None).

    With a tenant: its own override of each backend, else the backend's shared route read for
    that tenant only (a shared account holds every tenant's files; unreferenced ones cannot be
    attributed, so they are not reported there).
    """
    chosen = [r for r in routes if backend is None or r.label == backend]
    if tenant_id is None:
        return [(r, None) for r in chosen]
    own = {r.label for r in chosen if r.tenant_id == tenant_id}
    return [(r, None) for r in chosen if r.tenant_id == tenant_id] + [
        (r, tenant_id) for r in chosen if r.tenant_id is None and r.label not in own
    ]


async def reconcile(
    pool: AsyncConnectionPool,
    gateway: ProviderGateway,
    queues: Queues,
    options: ReconcileOptions,
    *,
    progress: Progress | None = None,
) -> ReconcileReport:
    """List every selected route, classify, then apply (if asked) and record the report."""
    chosen = select_routes(gateway.routes(), tenant_id=options.tenant_id, backend=options.backend)
    report = ReconcileReport(
        routes=[], grace_hours=options.grace.total_seconds() / 3600, dry_run=not options.apply
    )
    for route, tenant_only in chosen:
        found = RouteReport(route.describe(), route.label, route.tenant_id, tenant_only)
        report.routes.append(found)
        try:
            await _reconcile_route(pool, gateway, route, found, options, progress)
        except ListingFailed as exc:
            found.error = str(exc)  # reported; the other routes go on
    if options.apply:
        report.applied = await apply_leaks(pool, queues, report.routes)
    await record_report(pool, report)
    return report


async def _reconcile_route(
    pool: AsyncConnectionPool,
    gateway: ProviderGateway,
    route: Route,
    found: RouteReport,
    options: ReconcileOptions,
    progress: Progress | None,
) -> None:
    client, limiter = gateway.listing_access(route)
    if isinstance(client, Transient):
        raise ListingFailed(f"listing of {route.describe()} failed: {client.detail}")
    grace = options.grace.total_seconds()
    for kind in ("file", "vector_store"):
        listed = 0
        async for page in list_objects(client, limiter, route, kind, page_size=options.page_size):
            listed += len(page)
            if kind == "file":
                found.files_listed += len(page)
                await _classify_files(pool, gateway, route, found, page, grace)
            else:
                found.vector_stores_listed += len(page)
                await _classify_vector_stores(pool, found, page, grace)
            if progress is not None:
                progress(route.describe(), kind, listed)
    if options.delete_unreferenced_older_than is not None and found.tenant_only is None:
        await delete_unreferenced(pool, gateway, route, found, options)


async def _classify_files(
    pool: AsyncConnectionPool,
    gateway: ProviderGateway,
    route: Route,
    found: RouteReport,
    page: list[ListedObject],
    grace_seconds: float,
) -> None:
    rows = await _file_rows(pool, [o.id for o in page], grace_seconds)
    if found.tenant_only is not None:
        rows = [r for r in rows if r.tenant_id == found.tenant_only]
    by_file: dict[str, list[FileReference]] = {}
    for row in rows:
        by_file.setdefault(row.file_id, []).append(row)
    young_before = time.time() - grace_seconds
    for obj in page:
        refs = by_file.get(obj.id, [])
        if found.tenant_only is not None and not refs:
            continue  # another tenant's file, or not attributable on a shared route
        if obj.created_at > young_before:
            found.young_files += 1
        elif any(r.live for r in refs):
            found.live_files += 1
        elif any(r.in_flight for r in refs):
            found.in_cleanup_files += 1
        elif refs:
            found.leaked_files.append(_leaked_file(gateway, route, obj, refs))
        else:
            found.unreferenced_files.append(
                {"file_id": obj.id, "created_at": obj.created_at,
                 "age_hours": round((time.time() - obj.created_at) / 3600, 1)}
            )  # fmt: skip


def _leaked_file(
    gateway: ProviderGateway, route: Route, obj: ListedObject, refs: list[FileReference]
) -> dict[str, Any]:
    """One leaked file, with its rows and whether their cleanup would reach this account."""
    misrouted = any(_routes_elsewhere(gateway, route, r) for r in refs)
    return {
        "file_id": obj.id,
        "created_at": obj.created_at,
        "attachment_ids": [str(r.attachment_id) for r in refs],
        "chat_ids": sorted({str(r.chat_id) for r in refs}),
        "tenant_ids": sorted({str(r.tenant_id) for r in refs}),
        "cleanup_statuses": sorted({r.cleanup_status or "null" for r in refs}),
        "chat_deleted": any(r.chat_deleted for r in refs),
        "misrouted": misrouted,
    }


def _routes_elsewhere(gateway: ProviderGateway, route: Route, row: FileReference) -> bool:
    resolved = gateway.route(row.tenant_id, row.backend)
    return isinstance(resolved, Transient) or resolved.route_id != route.route_id


async def _classify_vector_stores(
    pool: AsyncConnectionPool, found: RouteReport, page: list[ListedObject], grace_seconds: float
) -> None:
    async with Database(pool).connection() as conn:
        rows = await repo.vector_store_references(conn, [o.id for o in page], grace_seconds)
    by_store = {row.vector_store_id: row for row in rows}
    young_before = time.time() - grace_seconds
    for obj in page:
        row = by_store.get(obj.id)
        if found.tenant_only is not None and (row is None or row.tenant_id != found.tenant_only):
            continue
        if obj.created_at > young_before:
            found.young_vector_stores += 1
        elif row is None:
            found.unreferenced_vector_stores += 1
        elif not row.chat_deleted:
            found.live_vector_stores += 1
        elif row.in_flight:
            found.in_cleanup_vector_stores += 1
        else:
            found.leaked_vector_stores.append(
                {"vector_store_id": obj.id, "created_at": obj.created_at,
                 "chat_id": str(row.chat_id), "tenant_id": str(row.tenant_id)}
            )  # fmt: skip


async def _file_rows(
    pool: AsyncConnectionPool, file_ids: list[str], grace_seconds: float
) -> list[FileReference]:
    async with Database(pool).connection() as conn:
        return await repo.file_references(conn, file_ids, grace_seconds)


async def apply_leaks(
    pool: AsyncConnectionPool, queues: Queues, routes: Iterable[RouteReport]
) -> Applied:
    """Leaked objects back into cleanup, in one transaction: rows to pending and messages."""
    leaked = [f for r in routes for f in r.leaked_files]
    attachment_ids = [UUID(a) for f in leaked if not f["misrouted"] for a in f["attachment_ids"]]
    store_chats = [UUID(s["chat_id"]) for r in routes for s in r.leaked_vector_stores]
    async with Database(pool).transaction() as conn:
        reset = await repo.reset_leaked_attachments(conn, attachment_ids)
        owned_by_chats = [r.row.chat_id for r in reset if r.chat_deleted]
        chats = await repo.deleted_chats(conn, owned_by_chats + store_chats)
        for chat_id, tenant_id in chats.items():
            await enqueue_chat_cleanup(conn, queues, tenant_id=tenant_id, chat_id=chat_id)
        singles = [r.row for r in reset if not r.chat_deleted]
        for row in singles:
            await enqueue_attachment_cleanup(conn, queues, **row._asdict())
    skipped = sum(1 for f in leaked if f["misrouted"])
    return Applied(len(reset), len(chats), len(singles), skipped)


async def delete_unreferenced(
    pool: AsyncConnectionPool,
    gateway: ProviderGateway,
    route: Route,
    found: RouteReport,
    options: ReconcileOptions,
) -> None:
    """Delete unreferenced files past ``--older-than`` through the route, each with a receipt.

    The references are read again right before: a row written since the listing keeps its file.
    """
    assert options.delete_unreferenced_older_than is not None
    cutoff = time.time() - options.delete_unreferenced_older_than.total_seconds()
    candidates = [f["file_id"] for f in found.unreferenced_files if f["created_at"] < cutoff]
    if not candidates:
        return
    grace = options.grace.total_seconds()
    referenced = {row.file_id for row in await _file_rows(pool, candidates, grace)}
    slots = asyncio.Semaphore(route.max_concurrency)

    async def one(file_id: str) -> None:
        async with slots:
            result = await gateway.delete_file_on_route(route, file_id)
        if isinstance(result, Deleted):
            await _insert_receipt(pool, route, file_id, result)
            found.unreferenced_deleted += 1
        else:
            found.unreferenced_delete_failures.append(f"{file_id}: {result.detail}")

    await asyncio.gather(*(one(f) for f in candidates if f not in referenced))


async def _insert_receipt(
    pool: AsyncConnectionPool, route: Route, file_id: str, result: Deleted
) -> None:
    params = {
        "object_id": file_id,
        "tenant_id": route.tenant_id,
        "backend": route.label,
        "route": result.route or route.describe(),
        "http_status": result.http_status,
        "outcome": "already_gone" if result.not_found else "deleted",
        "request_id": result.request_id,
        "worker_id": f"reconcile-{default_worker_id()}",
    }
    async with Database(pool).connection() as conn:
        await insert_receipt(conn, params)


async def record_report(pool: AsyncConnectionPool, report: ReconcileReport) -> None:
    """The run's counts for the daemon's leak gauge (a one-shot job cannot be scraped)."""
    params = {
        "leaked_files": report.leaked_files,
        "leaked_vector_stores": report.leaked_vector_stores,
        "unreferenced_files": report.unreferenced_files,
        "routes_failed": len(report.failed_routes),
        "applied": report.applied is not None,
        "report": json.dumps(report.as_json()),
    }
    async with Database(pool).connection() as conn:
        await repo.record_report(conn, params)


async def refresh_leak_gauge(pool: AsyncConnectionPool, metrics: Metrics) -> None:
    """Show the newest reconcile report in the leak gauges (the daemon does this with the
    backlog refresh; nothing changes while reconcile never ran)."""
    async with Database(pool).connection() as conn:
        latest = await repo.latest_report(conn)
    if latest is None:
        return
    leaks = {
        "file": latest.leaked_files,
        "vector_store": latest.leaked_vector_stores,
        "unreferenced_file": latest.unreferenced_files,
    }
    metrics.set_reconcile_report(
        leaks, routes_failed=latest.routes_failed, finished_at=latest.finished_at
    )
