"""`reconcile` against the real PostgreSQL and the fake provider's paginated listings.

The world holds what the original worker left behind and what it must never touch, on the
shared OpenAI and Azure accounts and on a tenant's own OpenAI account, listed two objects per
page so every listing spans several pages.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from factories import Chat, create_attachment, create_chat, create_vector_store
from handlers.support import AQ, CQ, TENANT_OA, Stack

from audit.conftest import PROJECTS
from cwlab.fake_openai import Fault
from worker.observability.metrics import Metrics
from worker.runtime.reconcile import (
    ReconcileOptions,
    ReconcileReport,
    reconcile,
    refresh_leak_gauge,
)

DAYS_AGO_3 = datetime.now(UTC) - timedelta(days=3)
OLD = time.time() - 3 * 86400
SHARED_OA, SHARED_AZ, OWN_OA = (
    PROJECTS["OPENAI_KEY"],
    PROJECTS["AZURE_KEY"],
    PROJECTS["TENANT_OA_KEY"],
)
PAGE = 2


@dataclass
class World:
    leaked_files: set[str] = field(default_factory=set)
    leaked_stores: set[str] = field(default_factory=set)
    misrouted: set[str] = field(default_factory=set)
    unreferenced_old: set[str] = field(default_factory=set)
    untouchable_files: set[str] = field(default_factory=set)
    untouchable_stores: set[str] = field(default_factory=set)


def _id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:20]}"


async def _file(
    stack: Stack,
    chat: Chat | None,
    *,
    project: str = SHARED_OA,
    backend: str = "openai",
    created_at: float = OLD,
    **row: Any,
) -> str:
    """A provider file in ``project``'s account, with an attachment row in ``chat`` if given."""
    file_id = _id("file-")
    stack.fake.add_file(file_id, project=project, created_at=created_at)
    if chat is not None:
        await create_attachment(stack.conn, chat.id, chat.tenant_id, file_id, backend, **row)
    return file_id


async def _store(stack: Stack, chat: Chat, *, project: str = SHARED_OA) -> str:
    vs_id = _id("vs_")
    stack.fake.add_vector_store(vs_id, project=project, created_at=OLD)
    await create_vector_store(stack.conn, chat.id, chat.tenant_id, vs_id, "openai")
    return vs_id


async def build_world(stack: Stack) -> World:
    w = World()
    conn = stack.conn
    live_chat = await create_chat(conn)
    # Left behind by the original worker: a deleted attachment it never took (status NULL)...
    w.leaked_files.add(await _file(stack, live_chat, deleted_at=DAYS_AGO_3))
    # ... one marked done whose file is still there (a wrong route's 404, a lost delete) ...
    w.leaked_files.add(await _file(stack, live_chat, deleted_at=DAYS_AGO_3, cleanup_status="done"))
    # ... and a deleted chat: its (not individually deleted) attachment and its vector store.
    dead_chat = await create_chat(conn, deleted_at=DAYS_AGO_3)
    w.leaked_files.add(await _file(stack, dead_chat))
    w.leaked_stores.add(await _store(stack, dead_chat))
    # Never touched: live files, a file shared with a live attachment, young ones, one whose
    # cleanup is in flight, a live chat's vector store.
    w.untouchable_files.add(await _file(stack, live_chat))
    shared = await _file(stack, live_chat)
    await create_attachment(conn, live_chat.id, live_chat.tenant_id, shared, deleted_at=DAYS_AGO_3)
    w.untouchable_files.add(shared)
    w.untouchable_files.add(await _file(stack, None, created_at=time.time() - 3600))
    w.untouchable_files.add(
        await _file(stack, live_chat, deleted_at=datetime.now(UTC), cleanup_status="pending")
    )
    w.untouchable_stores.add(await _store(stack, live_chat))
    w.unreferenced_old.add(await _file(stack, None))
    # The shared Azure account: one leaked file.
    az_chat = await create_chat(conn)
    w.leaked_files.add(
        await _file(stack, az_chat, project=SHARED_AZ, backend="azure", deleted_at=DAYS_AGO_3)
    )
    # A tenant with its own OpenAI account: a leaked file there, and one of its files that
    # sits in the shared account although the tenant's rows route to its own (misrouted).
    own_chat = await create_chat(conn, TENANT_OA)
    w.leaked_files.add(await _file(stack, own_chat, project=OWN_OA, deleted_at=DAYS_AGO_3))
    misrouted = await _file(stack, own_chat, deleted_at=DAYS_AGO_3, cleanup_status="done")
    w.leaked_files.add(misrouted)
    w.misrouted.add(misrouted)
    return w


async def run(stack: Stack, **options: Any) -> ReconcileReport:
    return await reconcile(
        stack.app.pool,
        stack.app.gateway,
        stack.queues,
        ReconcileOptions(page_size=PAGE, **options),
    )


def leaked(report: ReconcileReport) -> set[str]:
    return {f["file_id"] for r in report.routes for f in r.leaked_files}


def leaked_stores(report: ReconcileReport) -> set[str]:
    return {s["vector_store_id"] for r in report.routes for s in r.leaked_vector_stores}


async def snapshot(stack: Stack) -> list[Any]:
    return [
        await stack.rows("SELECT * FROM attachments ORDER BY id"),
        await stack.rows("SELECT * FROM chat_vector_stores ORDER BY id"),
        await stack.rows("SELECT count(*) FROM modkit_outbox_incoming"),
        await stack.rows("SELECT count(*) FROM cleanup_worker_receipts"),
    ]


async def test_dry_run_finds_every_leak_and_changes_nothing(stack: Stack) -> None:
    world = await build_world(stack)
    before, files_before = await snapshot(stack), stack.fake.files

    report = await run(stack)

    assert leaked(report) == world.leaked_files
    assert leaked_stores(report) == world.leaked_stores
    unreferenced = {f["file_id"] for r in report.routes for f in r.unreferenced_files}
    assert unreferenced == world.unreferenced_old
    assert not (leaked(report) & world.untouchable_files)
    data = report.as_json()
    assert (data["leaked_files"], data["leaked_vector_stores"], data["unreferenced_files"]) == (
        len(world.leaked_files),
        len(world.leaked_stores),
        1,
    )
    assert (data["live_files"], data["young_files"], data["in_cleanup_files"]) == (2, 1, 1)
    assert data["live_vector_stores"] == 1
    assert not report.partial
    by_route = {r.route: r for r in report.routes}
    assert set(by_route) == {
        "openai", "azure", f"openai (tenant {TENANT_OA})",
        "azure (tenant aaaaaaaa-0000-4000-8000-00000000000a)",
    }  # fmt: skip
    [misrouted] = [f for f in by_route["openai"].leaked_files if f["misrouted"]]
    assert {misrouted["file_id"]} == world.misrouted
    # Listing calls only, several pages each; nothing in the database changed.
    assert await snapshot(stack) == before
    assert stack.fake.files == files_before
    assert {r.method for r in stack.fake.requests()} == {"GET"}
    shared_pages = [r for r in stack.fake.requests() if r.path == "/v1/files"]
    assert len(shared_pages) > 3
    assert all(r.query["limit"] == str(PAGE) for r in shared_pages)


async def test_apply_then_drain_deletes_exactly_the_leaked_objects_with_receipts(
    stack: Stack,
) -> None:
    world = await build_world(stack)

    report = await run(stack, apply=True)

    assert report.applied is not None
    applied = len(world.leaked_files) - len(world.misrouted)
    assert report.applied.attachments_reset == applied
    assert report.applied.misrouted_skipped == 1
    assert report.applied.chat_messages == 1  # the deleted chat: its file and its store
    for _ in range(3):
        await stack.deliver(AQ)
        await stack.deliver(CQ)
    deleted = {r.resource_id for r in stack.fake.deletes("file")}
    assert deleted == world.leaked_files - world.misrouted
    assert {r.resource_id for r in stack.fake.deletes("vector_store")} == world.leaked_stores
    receipts = await stack.rows("SELECT object_id, outcome FROM cleanup_worker_receipts")
    assert {r["object_id"] for r in receipts} == deleted | world.leaked_stores
    assert {r["outcome"] for r in receipts} == {"deleted"}
    assert world.untouchable_files <= stack.fake.files
    assert world.untouchable_stores <= stack.fake.vector_stores

    again = await run(stack)
    assert leaked(again) == world.misrouted
    assert leaked_stores(again) == set()


async def test_a_failing_listing_is_reported_and_the_other_routes_go_on(stack: Stack) -> None:
    world = await build_world(stack)
    stack.fake.inject(Fault(status=503, path_contains="/tenant-oa/"))

    report = await run(stack)

    assert report.partial
    [failed] = report.failed_routes
    assert failed.route == f"openai (tenant {TENANT_OA})"
    assert failed.error is not None
    assert "HTTP 503" in failed.error
    assert "SECRET" not in failed.error
    own = {f for f in world.leaked_files if f not in leaked(report)}
    assert len(own) == 1  # only the tenant's own-account file went unseen
    assert report.as_json()["routes_failed"] == 1


async def test_delete_unreferenced_only_past_older_than(stack: Stack) -> None:
    ten_days = await _file(stack, None, created_at=time.time() - 10 * 86400)
    three_days = await _file(stack, None, created_at=time.time() - 3 * 86400)
    young = await _file(stack, None, created_at=time.time() - 600)
    live_chat = await create_chat(stack.conn)
    live = await _file(stack, live_chat, created_at=time.time() - 30 * 86400)

    dry = await run(stack)
    assert {f["file_id"] for r in dry.routes for f in r.unreferenced_files} == {
        ten_days,
        three_days,
    }
    assert stack.fake.deletes() == []

    report = await run(stack, delete_unreferenced_older_than=timedelta(days=7))

    assert {r.resource_id for r in stack.fake.deletes()} == {ten_days}
    assert {three_days, young, live} <= stack.fake.files
    [receipt] = await stack.rows("SELECT * FROM cleanup_worker_receipts")
    assert (receipt["object_id"], receipt["tenant_id"], receipt["route"]) == (
        ten_days,
        None,
        "openai",
    )
    assert receipt["worker_id"].startswith("reconcile-")
    assert sum(r.unreferenced_deleted for r in report.routes) == 1


async def test_tenant_filter_reads_the_shared_route_for_that_tenant_only(stack: Stack) -> None:
    world = await build_world(stack)
    other_tenant = uuid.uuid4()
    chat = await create_chat(stack.conn, other_tenant)
    theirs = await _file(stack, chat, deleted_at=DAYS_AGO_3)

    report = await run(stack, tenant_id=other_tenant)

    assert leaked(report) == {theirs}
    assert report.unreferenced_files == 0  # not attributable to a tenant on a shared account
    assert {r.route for r in report.routes} == {"openai", "azure"}
    assert world.leaked_files.isdisjoint(leaked(report))


async def test_the_daemons_gauge_shows_the_last_report(stack: Stack) -> None:
    world = await build_world(stack)
    metrics = Metrics()
    await refresh_leak_gauge(stack.app.pool, metrics)  # never ran: nothing set
    assert (
        metrics.registry.get_sample_value("mini_chat_reconcile_last_report_timestamp_seconds") == 0
    )

    await run(stack)
    await refresh_leak_gauge(stack.app.pool, metrics)

    def leaks(kind: str) -> float | None:
        return metrics.registry.get_sample_value("mini_chat_cleanup_leaks_found", {"kind": kind})

    assert leaks("file") == len(world.leaked_files)
    assert leaks("vector_store") == 1
    assert leaks("unreferenced_file") == 1
    stamp = metrics.registry.get_sample_value("mini_chat_reconcile_last_report_timestamp_seconds")
    assert stamp is not None
    assert stamp > time.time() - 60


async def test_a_listing_429_is_retried_within_the_routes_pause(stack: Stack) -> None:
    world = await build_world(stack)
    stack.fake.inject(
        Fault(status=429, headers={"retry-after-ms": "50"}, path_contains="/v1/files", times=1)
    )

    report = await run(stack)

    assert not report.partial
    assert leaked(report) == world.leaked_files


async def test_a_long_retry_after_fails_the_route_at_once(stack: Stack) -> None:
    """Retry-After beyond what a page may wait: the route is reported failed after one
    request (the limiter's pause refuses the rest), the other routes go on."""
    await build_world(stack)
    stack.fake.inject(
        Fault(status=429, headers={"retry-after": "3600"}, path_contains="/tenant-oa/")
    )

    report = await run(stack)

    [failed] = report.failed_routes
    assert failed.route == f"openai (tenant {TENANT_OA})"
    assert [r.path for r in stack.fake.requests() if "/tenant-oa/" in r.path] == [
        "/tenant-oa/v1/files"
    ]
    assert len(report.routes) == 4
