"""The daemon's share of the audit: vacuum prunes old receipts, the backlog refresh shows the
last reconcile report; and the audit configuration keys are checked like every other."""

from __future__ import annotations

from pathlib import Path

import pytest
from handlers.support import Stack

from worker.config import load_config
from worker.errors import ConfigError
from worker.runtime.daemon import Daemon


async def test_the_vacuum_loop_prunes_receipts_past_retention(stack: Stack) -> None:
    for days in (500, 10):
        await stack.conn.execute(
            "INSERT INTO cleanup_worker_receipts (object_kind, object_id, tenant_id, backend,"
            " route, outcome, deleted_at, worker_id) VALUES ('file', %s, gen_random_uuid(),"
            " 'openai', 'openai', 'deleted', now() - make_interval(days => %s), 'w')",
            (f"file-{days}", days),
        )

    await Daemon(stack.app)._vacuum()

    rows = await stack.rows("SELECT object_id FROM cleanup_worker_receipts")
    assert [r["object_id"] for r in rows] == ["file-10"]  # default retention: 400 days


async def test_the_backlog_refresh_loop_shows_the_last_reconcile_report(stack: Stack) -> None:
    await stack.conn.execute(
        "INSERT INTO cleanup_worker_reconcile_reports (leaked_files, leaked_vector_stores,"
        " unreferenced_files, routes_failed, applied, report) VALUES (4, 1, 7, 1, false, '{}')"
    )

    await Daemon(stack.app)._refresh_backlog()

    assert stack.metric("cleanup_leaks_found", kind="file") == 4
    assert stack.metric("cleanup_leaks_found", kind="vector_store") == 1
    assert stack.metric("cleanup_leaks_found", kind="unreferenced_file") == 7
    assert stack.metric("reconcile_routes_failed") == 1
    assert stack.metric("reconcile_last_report_timestamp_seconds") > 0


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("audit: {receipt_retention_days: 0}", "audit.receipt_retention_days: expected an integer"),
        ("audit: {reconcile_grace_hours: -1}", "audit.reconcile_grace_hours: expected a number"),
        ("audit: {retention: 3}", "audit.retention: unknown key"),
    ],
)
def test_bad_audit_keys_are_one_line_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text + "\n")

    with pytest.raises(ConfigError) as error:
        load_config(path, environ={}, dsn="postgresql://u@h/db")

    assert message in str(error.value)
    assert "\n" not in str(error.value)
