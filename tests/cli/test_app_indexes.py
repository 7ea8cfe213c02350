"""`migrate --skip-app-indexes` leaves the chat-service indexes to a DBA; `check-config` and
`status` then name each missing one with what to run; a plain `migrate` builds them (issue 16)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cli.support import base_env, invoke
from cwlab.postgres import PostgresServer
from worker.runtime.migrate import app_indexes

NAMES = [index.name for index in app_indexes()]


def _fails(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("FAIL")]


def test_skipped_indexes_are_named_by_check_config_and_status_until_migrate_builds_them(
    empty_db: str, config_file: Path
) -> None:
    env = base_env(empty_db)
    config = ["--config", str(config_file)]
    skipped = invoke([*config, "migrate", "--with-app-schema", "--skip-app-indexes"], env)
    assert skipped.code == 0, skipped
    assert "chat-service indexes: skipped" in skipped.stdout

    check = invoke([*config, "check-config"], env)
    assert check.code == 2, check
    fails = _fails(check.stdout)
    assert len(fails) == len(NAMES), fails
    for name, line in zip(NAMES, fails, strict=True):
        assert f"index {name} on attachments: missing" in line
        assert f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON attachments (" in line
        assert "docs/deploy.md" in line

    status = invoke([*config, "status", "--json"], env)
    assert status.code == 0, status
    problems = status.json()["index_problems"]
    assert [(p["name"], p["problem"]) for p in problems] == [(n, "missing") for n in NAMES]
    human = invoke([*config, "status"], env)
    lines = [line for line in human.stdout.splitlines() if line.startswith("Index ")]
    assert [line.split()[1] for line in lines] == NAMES
    assert all("missing" in line and "CREATE INDEX CONCURRENTLY" in line for line in lines)

    built = invoke([*config, "migrate"], env)
    assert built.code == 0, built
    assert f"chat-service indexes: built {', '.join(NAMES)}" in built.stdout
    again = invoke([*config, "migrate"], env)
    assert "chat-service indexes: all present" in again.stdout

    check = invoke([*config, "check-config"], env)
    assert check.code == 0, check
    assert "chat-service indexes: present" in check.stdout
    assert invoke([*config, "status", "--json"], env).json()["index_problems"] == []


def test_an_invalid_index_is_named_with_the_drop_and_create(
    empty_db: str, config_file: Path, pg_server: PostgresServer
) -> None:
    env = base_env(empty_db)
    config = ["--config", str(config_file)]
    assert invoke([*config, "migrate", "--with-app-schema"], env).code == 0
    direct = pg_server.dsn(
        conninfo_to_dict(empty_db)["dbname"]
    )  # session settings: not via a pooler
    with psycopg.connect(direct, autocommit=True) as conn:
        # An interrupted CONCURRENTLY build leaves its index INVALID: a real one is canceled
        # by a statement timeout while it waits for an open snapshot.
        conn.execute("DROP INDEX idx_attachments_cleanup_debt")
        with psycopg.connect(direct, autocommit=True) as holder:
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM attachments")
            conn.execute("SET statement_timeout = '300ms'")
            try:
                conn.execute(
                    "CREATE INDEX CONCURRENTLY idx_attachments_cleanup_debt ON attachments"
                    " (cleanup_status) WHERE cleanup_status IN ('pending', 'failed')"
                )
            except psycopg.errors.QueryCanceled:
                pass
            else:
                raise AssertionError("the build was not interrupted")
    check = invoke([*config, "check-config"], env)
    assert check.code == 2, check
    [fail] = _fails(check.stdout)
    assert "index idx_attachments_cleanup_debt on attachments: invalid" in fail
    assert "DROP INDEX CONCURRENTLY IF EXISTS idx_attachments_cleanup_debt; CREATE INDEX" in fail

    redone = invoke([*config, "migrate"], env)
    assert "chat-service indexes: built idx_attachments_cleanup_debt" in redone.stdout
    assert invoke([*config, "check-config"], env).code == 0


def test_migrate_help_names_the_option(config_file: Path) -> None:
    result = invoke(["migrate", "--help"], base_env(None))
    assert result.code == 0, result
    assert "--skip-app-indexes" in result.stdout
    assert "CONCURRENTLY" in result.stdout
