"""The demo (issue 6): a small world drained end to end, its summary checked against the sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from worker.config import Config
from worker.db import Conn
from worker.demo import DEMO_API_KEYS, DemoOptions, run_demo
from worker.sandbox.fake_openai import FakeOpenAI


async def _scalar(conn: Conn, sql: str) -> int:
    cur = await conn.execute(sql.encode())
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_demo_summary_matches_database_and_request_log(db: str, conn: Conn) -> None:
    seen: list[tuple[int, int]] = []
    with FakeOpenAI(api_keys=DEMO_API_KEYS) as fake:
        summary = await run_demo(
            Config(),
            DemoOptions(chats=12, seed=7, fault_rate=0.3, max_seconds=60),
            dsn=db,
            fake=fake,
            progress=lambda done, left: seen.append((done, left)),
        )
        deleted_files = {r.resource_id for r in fake.deletes("file")}
        answers = Counter(r.status for r in fake.requests())

    assert seen, "progress was reported"
    assert seen[-1][1] == 0, "progress reached an empty backlog"
    assert summary["drain"]["remaining_pending"] == 0
    assert summary["drain"]["remaining_retries"] == 0

    # Per-tenant counts are the database's own.
    cur = await conn.execute(
        b"SELECT cleanup_status, provider_file_id FROM attachments WHERE cleanup_status IS NOT NULL"
    )
    rows = await cur.fetchall()
    by_status = Counter(status for status, _ in rows)
    totals: Counter[str] = Counter()
    for counts in summary["per_tenant"].values():
        totals.update(counts)
    assert totals["cleanup done"] == by_status["done"]
    assert totals["cleanup failed"] == by_status["failed"]
    assert totals.get("cleanup pending", 0) == by_status["pending"]
    assert totals["files deleted"] == sum(1 for _, f in rows if f in deleted_files)

    # Debt (failed rows; pending rows whose message was dead-lettered while the breaker kept
    # refusing the revoked route) belongs to the tenant whose key was revoked, nobody else.
    revoked = [k for k in summary["per_tenant"] if "revoked" in k]
    assert all(
        counts.get("cleanup failed", 0) == 0 and counts.get("cleanup pending", 0) == 0
        for tenant, counts in summary["per_tenant"].items()
        if tenant not in revoked
    )
    assert answers[401] > 0

    dead = await _scalar(conn, "SELECT count(*) FROM modkit_outbox_dead_letters")
    assert len(summary["dead_letters"]) == dead
    reasons = " | ".join(summary["dead_letters"])
    assert "payload is not valid JSON" in reasons
    assert "attachment_kind: missing required field" in reasons
    assert "unknown value 'chat_archived'" in reasons
    assert summary["vector_stores_deleted"] == len(
        {r.resource_id for r in fake.deletes("vector_store")}
    )
    left = await _scalar(
        conn,
        "SELECT count(*) FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id"
        " WHERE c.deleted_at IS NOT NULL",
    )
    assert summary["vector_store_rows_left"] == left


@pytest.mark.slow
def test_demo_command_runs_on_its_embedded_default() -> None:
    """The README's first command, minus set-up: starts its own PostgreSQL and provider.

    A CLEANUP_WORKER_DSN in the environment (exported for real work) is ignored: demo data
    goes to a database only when --dsn names it on the command line.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
    env["CLEANUP_WORKER_DSN"] = "postgresql://nobody@/production?host=/nonexistent"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--chats", "6", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["drain"]["remaining_pending"] == 0
    assert summary["world"]["poison_messages"] == 3
    assert len(summary["dead_letters"]) >= 3
