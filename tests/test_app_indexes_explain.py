"""The hot statements stay index lookups on a large `attachments` table (issue 16).

A chat cleanup must cost the same on a table of millions of attachments as on an empty one:
every statement of the chat path, the live-file check of both paths, the debt gauge and
`status`'s counts (its history estimated) are planned (on a 200k-row table, analysed) without
a sequential scan of `attachments`, on the index `sql/app_indexes` defines for it.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

import psycopg
import pytest

from tests.explain import nodes, plan_of
from worker import render
from worker.runtime.status import EXACT_HISTORY_ROWS, read_status

ROWS = 200_000
PER_CHAT = 10
TENANTS = 50


def _uuid(text: str) -> UUID:
    return UUID(hashlib.md5(text.encode()).hexdigest())


CHAT = _uuid(f"c{ROWS // PER_CHAT - 1}")  # the last chat: deleted, its attachments pending
ATTACHMENT = _uuid(f"a{ROWS - 1}")


@pytest.fixture
async def large(conn: psycopg.AsyncConnection) -> psycopg.AsyncConnection:
    """200k attachments in 20k chats, as production holds them: almost all live and never
    cleaned, some cleaned long ago ('done'), one deleted chat's attachments pending."""
    chats = ROWS // PER_CHAT
    await conn.execute(
        "INSERT INTO chats (id, tenant_id, user_id, model, created_at, updated_at, deleted_at)"
        " SELECT md5('c' || g)::uuid, md5('t' || g %% %(tenants)s)::uuid, md5('u')::uuid,"
        " 'm', now(), now(), CASE WHEN g %% 10 = 0 OR g = %(last)s THEN now() END"
        " FROM generate_series(0, %(last)s) g",
        {"tenants": TENANTS, "last": chats - 1},
    )
    await conn.execute(
        "INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename,"
        " content_type, size_bytes, provider_file_id, status, attachment_kind, created_at,"
        " deleted_at, cleanup_status)"
        " SELECT md5('a' || g)::uuid, md5('t' || (g / %(per)s) %% %(tenants)s)::uuid,"
        " md5('c' || g / %(per)s)::uuid, md5('u')::uuid, 'f', 'text/plain', 1, 'file-' || g,"
        " 'ready', 'document', now(),"
        " CASE WHEN (g / %(per)s) %% 10 = 0 OR g / %(per)s = %(last)s THEN now() END,"
        " CASE WHEN g / %(per)s = %(last)s THEN 'pending'"
        "      WHEN (g / %(per)s) %% 10 = 0 THEN 'done' END"
        " FROM generate_series(0, %(rows)s - 1) g",
        {"per": PER_CHAT, "tenants": TENANTS, "last": chats - 1, "rows": ROWS},
    )
    await conn.execute("ANALYZE chats")
    await conn.execute("ANALYZE attachments")
    return conn


def _attachment_access(plan: dict) -> tuple[list[str], list[str]]:
    """(sequential scans of attachments, indexes used)"""
    seq = [n["Node Type"] for n in nodes(plan)
           if n.get("Relation Name") == "attachments" and n["Node Type"] == "Seq Scan"]  # fmt: skip
    used = [n["Index Name"] for n in nodes(plan) if "Index Name" in n]
    return seq, used


PARAMS = {
    "chat_id": CHAT,
    "attachment_id": ATTACHMENT,
    "tenant_id": _uuid("t0"),
    "storage_backend": "azure",
    "provider_file_id": f"file-{ROWS - 1}",
}

# The set-based statements (a batch of messages' rows): every attachments access by key.
BATCH_PARAMS = {
    "attachment_ids": [ATTACHMENT, _uuid("a0")],
    "tenant_ids": [_uuid("t0")] * 2,
    "chat_ids": [CHAT, _uuid("c0")],
    "storage_backends": ["azure"] * 2,
    "provider_file_ids": [f"file-{ROWS - 1}", "file-0"],
    "notes": [None, None],
    "object_ids": [None, None],
    "backends": ["azure"] * 2,
    "routes": [None, None],
    "http_statuses": [None, None],
    "outcomes": [None, None],
    "request_ids": [None, None],
    "worker_id": "w",
}

CHAT_STATUS, DEBT = "idx_attachments_chat_status", "idx_attachments_cleanup_debt"
LIVE_FILE = "idx_attachments_live_provider_file"
# (statement, the indexes of which it must use one): the statements on a chat's pending or
# failed rows may also take the debt index, which is as selective while the debt is small
# (the planner's pick depends on ANALYZE's sample).
HOT = [
    ("adopt_chat_attachments", {CHAT_STATUS}),
    ("pending_attachments_of_chat", {CHAT_STATUS, DEBT}),
    ("pending_attachments_of_chat", {LIVE_FILE}),
    ("unfinished_attachments_of_chat", {CHAT_STATUS, DEBT}),
    ("take_attachment", {LIVE_FILE}),
    ("attachment_debt", {DEBT}),
]
PKEY = "attachments_pkey"
BATCH_HOT = [
    ("take_attachments", {PKEY}),
    ("take_attachments", {LIVE_FILE}),
    ("mark_cleanups_done", {PKEY}),
]


async def test_hot_statements_use_their_indexes_not_a_sequential_scan(
    large: psycopg.AsyncConnection,
) -> None:
    problems = []
    for statement, wanted, params in [(*h, PARAMS) for h in HOT] + [
        (*h, BATCH_PARAMS) for h in BATCH_HOT
    ]:
        plan = await plan_of(large, statement, params)
        seq, used = _attachment_access(plan)
        if seq or not wanted & set(used):
            problems.append(f"{statement}: scans {seq}, indexes {used}, wants one of {wanted}")
    assert problems == [], "\n".join(problems)


async def test_status_estimates_the_history_of_a_large_table(
    large: psycopg.AsyncConnection,
) -> None:
    """`status` counted every done row (a scan: 0.3 s at 2M rows); on a table above
    EXACT_HISTORY_ROWS it shows the planner's estimate for the history, marked as one, and the
    debt exactly."""
    assert ROWS > EXACT_HISTORY_ROWS
    report = await read_status(large, ["q"], all_attachments=True)
    cur = await large.execute(
        "SELECT count(*) FILTER (WHERE cleanup_status = 'done'),"
        " count(*) FILTER (WHERE cleanup_status = 'pending') FROM attachments"
    )
    done, pending = await cur.fetchone() or (0, 0)

    assert report.attachments_estimated == ["done"]
    assert abs(report.attachments["done"] - done) <= done * 0.1, (report.attachments, done)
    assert "none" not in report.attachments  # a guess on a large table: left to reconcile
    assert report.attachments["pending"] == pending  # the debt: exact
    assert f"done~{report.attachments['done']:,}" in render.status(report)
