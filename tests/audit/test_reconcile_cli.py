"""`cleanup-worker reconcile` as an operator runs it: options, output, exit codes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli.support import API_KEY, KEY_ENV, Result, ainvoke, base_env, make_config, write_config
from factories import create_attachment, create_chat

from cwlab.fake_openai import FakeOpenAI
from worker.db import Conn

TENANT = uuid.UUID("bbbbbbbb-0000-4000-8000-00000000000b")
OLD = time.time() - 3 * 86400


@pytest.fixture
def cli_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=[API_KEY]) as server:
        yield server


@pytest.fixture
def config_file(tmp_path: Path, cli_fake: FakeOpenAI) -> Path:
    """The shared openai backend plus a tenant's own endpoint (same fake, own prefix)."""
    override = {"base_url": f"{cli_fake.url}/tenant-b/v1", "api_key_env": KEY_ENV}
    config = make_config(cli_fake, extra={f"providers.tenants.{TENANT}.openai": override})
    return write_config(tmp_path / "config.yaml", config)


async def _leak(conn: Conn, fake: FakeOpenAI) -> str:
    chat = await create_chat(conn)
    file_id = f"file-{uuid.uuid4().hex[:16]}"
    fake.add_file(file_id, created_at=OLD)
    deleted = datetime.now(UTC) - timedelta(days=2)
    await create_attachment(conn, chat.id, chat.tenant_id, file_id, deleted_at=deleted)
    return file_id


async def reconcile(db: str, config_file: Path, *args: str) -> Result:
    env = {**base_env(db), "CLEANUP_WORKER_CONFIG": str(config_file)}
    return await ainvoke(["reconcile", *args], env)


async def test_json_report_has_the_counts_and_the_routes(
    db: str, conn: Conn, cli_fake: FakeOpenAI, config_file: Path
) -> None:
    file_id = await _leak(conn, cli_fake)

    result = await reconcile(db, config_file, "--json")

    assert result.code == 0, result
    report = result.json()
    # The fake is one account behind both routes: each lists the file.
    assert report["leaked_files"] == 2
    assert (report["leaked_vector_stores"], report["unreferenced_files"]) == (0, 0)
    assert report["dry_run"] is True
    assert {r["route"] for r in report["routes"]} == {"openai", f"openai (tenant {TENANT})"}
    assert {f["file_id"] for r in report["routes"] for f in r["leaked_files"]} == {file_id}


async def test_human_report_and_partial_exit_code(
    db: str, conn: Conn, cli_fake: FakeOpenAI, config_file: Path
) -> None:
    from cwlab.fake_openai import Fault

    file_id = await _leak(conn, cli_fake)
    cli_fake.inject(Fault(status=500, path_contains="/tenant-b/"))

    result = await reconcile(db, config_file)

    assert result.code == 1, result
    assert "leaked files: 1" in result.stdout
    assert file_id in result.stdout
    assert "HTTP 500" in result.stdout
    assert "run again with --apply" in result.stdout
    assert API_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "30d"], "--delete-unreferenced and --older-than DURATION go together"),
        (["--delete-unreferenced"], "--delete-unreferenced and --older-than DURATION go together"),
        (["--delete-unreferenced", "--older-than", "1h"], "shorter than the grace period"),
        (["--delete-unreferenced", "--older-than", "soon"], "--older-than: 'soon' is not a"),
        (["--grace", "1 day"], "--grace: '1 day' is not a duration"),
        (["--backend", "nope"], "--backend: unknown backend 'nope'; configured: openai"),
    ],
)
async def test_bad_options_are_one_line_and_exit_2(
    db: str, config_file: Path, args: list[str], message: str
) -> None:
    result = await reconcile(db, config_file, *args)

    assert result.code == 2, result
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


async def test_help_ends_with_examples_and_the_exit_codes(db: str, config_file: Path) -> None:
    result = await reconcile(db, config_file, "--help")

    assert result.code == 0
    assert "Exit codes: 0 every route listed" in result.stdout
    assert "1 partial" in result.stdout
    assert "Examples:\n    cleanup-worker reconcile" in result.stdout
