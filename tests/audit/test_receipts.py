"""Deletion receipts (SPEC §14): every provider delete that ended gone leaves one, written by
the statement that completes the row; `receipts` shows them; vacuum prunes old ones."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli.support import ainvoke
from factories import create_attachment, create_chat
from handlers.support import AQ, CQ, TENANT_OA, Stack, only
from psycopg_pool import AsyncConnectionPool

from cwlab.fake_openai import Fault
from worker.db import Conn
from worker.db.receipts import ReceiptFilter, list_receipts, prune_receipts
from worker.models import Ok, Retry

RECEIPTS = "SELECT * FROM cleanup_worker_receipts ORDER BY id"


async def test_attachment_delete_leaves_a_receipt_with_the_providers_request_id(
    stack: Stack,
) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_attachment(att)

    assert only(await stack.deliver(AQ)) == Ok()

    [receipt] = await stack.rows(RECEIPTS)
    [request] = [r for r in stack.requests_for(att.provider_file_id or "") if r.deleted]
    assert request.request_id
    assert request.request_id.startswith("req_")
    assert receipt["request_id"] == request.request_id
    assert (receipt["object_kind"], receipt["object_id"]) == ("file", att.provider_file_id)
    assert (receipt["tenant_id"], receipt["chat_id"]) == (chat.tenant_id, chat.id)
    assert receipt["attachment_id"] == att.id
    assert (receipt["backend"], receipt["route"]) == ("openai", "openai")
    assert (receipt["http_status"], receipt["outcome"]) == (200, "deleted")
    assert receipt["worker_id"] == stack.app.engine.worker_id
    assert (await stack.att(att))["cleanup_status"] == "done"


async def test_a_file_already_gone_leaves_an_already_gone_receipt(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, at_provider=False)
    await stack.delete_attachment(att)

    assert only(await stack.deliver(AQ)) == Ok()

    [receipt] = await stack.rows(RECEIPTS)
    assert (receipt["http_status"], receipt["outcome"]) == (404, "already_gone")
    assert receipt["request_id"] is not None


async def test_tenant_override_route_is_named_in_the_receipt(stack: Stack) -> None:
    chat = await stack.chat(TENANT_OA)
    att = await stack.attachment(chat)
    await stack.delete_attachment(att)

    assert only(await stack.deliver(AQ)) == Ok()

    [receipt] = await stack.rows(RECEIPTS)
    assert receipt["route"] == f"openai (tenant {TENANT_OA})"


async def test_chat_cleanup_leaves_receipts_for_files_and_the_vector_store(stack: Stack) -> None:
    chat = await stack.chat()
    atts = [await stack.attachment(chat) for _ in range(2)]
    store = await stack.vector_store(chat, files=[a.provider_file_id or "" for a in atts])
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    rows = await stack.rows(RECEIPTS)
    assert sorted((r["object_kind"], r["object_id"]) for r in rows) == sorted(
        [("file", a.provider_file_id) for a in atts] + [("vector_store", store.vector_store_id)]
    )
    assert {r["chat_id"] for r in rows} == {chat.id}
    [vs] = [r for r in rows if r["object_kind"] == "vector_store"]
    assert vs["attachment_id"] is None
    assert vs["outcome"] == "deleted"
    assert await stack.vs_row(chat) is None


async def test_purged_row_path_still_leaves_a_receipt(stack: Stack) -> None:
    """The message is the only record: the receipt is the mark_cleanup_done statement's own
    insert, with no row turning done."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_attachment(att)
    await stack.conn.execute("DELETE FROM chats WHERE id = %s", (chat.id,))  # purged

    assert only(await stack.deliver(AQ)) == Ok()

    [receipt] = await stack.rows(RECEIPTS)
    assert (receipt["attachment_id"], receipt["outcome"]) == (att.id, "deleted")


async def test_no_receipt_and_no_done_row_when_the_provider_did_not_confirm(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_attachment(att)
    stack.fake.inject(Fault(status=503))

    assert isinstance(only(await stack.deliver(AQ)), Retry)

    assert await stack.rows(RECEIPTS) == []
    assert (await stack.att(att))["cleanup_status"] == "pending"


async def test_a_row_never_turns_done_without_its_receipt(stack: Stack) -> None:
    """One statement: when the receipt insert fails, the row update is rolled back with it."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await stack.delete_attachment(att)
    # A receipt this table cannot hold: the insert fails inside the statement.
    await stack.conn.execute(
        "ALTER TABLE cleanup_worker_receipts ADD CONSTRAINT no_receipts CHECK (false) NOT VALID"
    )
    try:
        outcome = only(await stack.deliver(AQ))
    finally:
        await stack.conn.execute("ALTER TABLE cleanup_worker_receipts DROP CONSTRAINT no_receipts")

    assert not isinstance(outcome, Ok)
    assert (await stack.att(att))["cleanup_status"] == "pending"


async def _receipt(conn: Conn, *, tenant: uuid.UUID, days_old: float, chat: uuid.UUID) -> None:
    await conn.execute(
        "INSERT INTO cleanup_worker_receipts (object_kind, object_id, tenant_id, chat_id, backend,"
        " route, http_status, outcome, request_id, deleted_at, worker_id) VALUES ('file',"
        " 'file-' || md5(random()::text), %s, %s, 'openai', 'openai', 200, 'deleted', 'req_x',"
        " now() - make_interval(secs => %s), 'w1')",
        (tenant, chat, days_old * 86400),
    )


async def test_prune_deletes_only_receipts_past_retention_in_chunks(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    tenant, chat = uuid.uuid4(), uuid.uuid4()
    for _ in range(5):
        await _receipt(conn, tenant=tenant, days_old=401, chat=chat)
    for _ in range(3):
        await _receipt(conn, tenant=tenant, days_old=399, chat=chat)

    assert await prune_receipts(pool, retention_days=400, chunk=2) == 5

    cur = await conn.execute("SELECT count(*) FROM cleanup_worker_receipts")
    assert (await cur.fetchone()) == (3,)


async def test_list_receipts_filters(conn: Conn) -> None:
    a, b, chat = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _receipt(conn, tenant=a, days_old=3, chat=chat)
    await _receipt(conn, tenant=a, days_old=0.5, chat=chat)
    await _receipt(conn, tenant=b, days_old=0.5, chat=uuid.uuid4())
    since = datetime.now(UTC) - timedelta(days=1)
    assert len(await list_receipts(conn, ReceiptFilter(tenant_id=a))) == 2
    assert len(await list_receipts(conn, ReceiptFilter(tenant_id=a, since=since))) == 1
    assert len(await list_receipts(conn, ReceiptFilter(chat_id=chat))) == 2
    assert len(await list_receipts(conn, ReceiptFilter(since=since))) == 2


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("providers: {backends: {}}\n")
    return path


async def test_receipts_command_json_and_table(stack: Stack, db: str, tmp_path: Path) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    await create_attachment(stack.conn, (await create_chat(stack.conn)).id, uuid.uuid4())
    await stack.delete_attachment(att)
    assert only(await stack.deliver(AQ)) == Ok()
    env = {"CLEANUP_WORKER_DSN": db, "CLEANUP_WORKER_CONFIG": str(_config(tmp_path))}

    shown = await ainvoke(["receipts", "--chat-id", str(chat.id), "--since", "1h", "--json"], env)
    assert shown.code == 0, shown.stderr
    [receipt] = json.loads(shown.stdout)
    assert receipt["object_id"] == att.provider_file_id
    assert receipt["outcome"] == "deleted"

    table = await ainvoke(["receipts", "--tenant", str(chat.tenant_id)], env)
    assert table.code == 0, table.stderr
    assert (att.provider_file_id or "?") in table.stdout
    assert "request_id" in table.stdout

    none = await ainvoke(["receipts", "--tenant", str(uuid.uuid4())], env)
    assert (none.code, none.stdout.strip()) == (0, "no receipts match")


@pytest.mark.parametrize("since", ["yesterday", "24x", "2026-13-01"])
async def test_receipts_command_refuses_a_bad_since(db: str, tmp_path: Path, since: str) -> None:
    env = {"CLEANUP_WORKER_DSN": db, "CLEANUP_WORKER_CONFIG": str(_config(tmp_path))}
    result = await ainvoke(["receipts", "--since", since], env)
    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert "--since" in result.stderr
