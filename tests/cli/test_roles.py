"""Least privilege (SPEC §13): `migrate` uses its own role (database.migrate_dsn) and the worker
a role without DDL rights (database.dsn), each DSN read from a file as a mounted secret would be
(database.dsn_file, database.migrate_dsn_file)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cli.support import (
    UNREACHABLE_DSN,
    DaemonProcess,
    ainvoke,
    assert_one_line_error,
    base_env,
    cursors_at_end,
    free_port,
    invoke,
    make_config,
    seed,
    truth,
    wait_for,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI
from cwlab.postgres import PostgresServer
from worker.db.pool import connection_kwargs

# What docs/deploy.md ("Database roles") tells the operator to grant the worker's role, run by
# migrate's role (the owner of the tables) after `migrate`.
GRANTS = """
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {run};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {run};
"""


@pytest.fixture
def roles(
    pg_server: PostgresServer, empty_db: str, role_dsn: Callable[..., str]
) -> tuple[str, str]:
    """(migrate DSN, run DSN) for a new database owned by the migrate role; nobody else may
    create anything in it (also on PostgreSQL < 15, where PUBLIC may create in public)."""
    suffix = uuid.uuid4().hex[:8]
    migrator = role_dsn(empty_db, f"cw_migrate_{suffix}", f"m-{suffix}", "NOSUPERUSER")
    runner = role_dsn(empty_db, f"cw_run_{suffix}", f"r-{suffix}", "NOSUPERUSER")
    name = conninfo_to_dict(empty_db)["dbname"]
    with psycopg.connect(pg_server.dsn(str(name)), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" OWNER TO cw_migrate_{suffix}'.encode())
        admin.execute(f"ALTER SCHEMA public OWNER TO cw_migrate_{suffix}".encode())
        admin.execute(b"REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    return migrator, runner


def _config_with_dsn_files(tmp_path: Path, fake: FakeOpenAI, migrator: str, runner: str) -> Path:
    (tmp_path / "migrate-dsn").write_text(migrator + "\n")
    (tmp_path / "dsn").write_text(runner + "\n")
    extra = {
        "database.dsn_file": str(tmp_path / "dsn"),
        "database.migrate_dsn_file": str(tmp_path / "migrate-dsn"),
    }
    return write_config(tmp_path / "config.yaml", make_config(fake, extra=extra))


@pytest.mark.slow
async def test_migrate_with_its_role_and_run_without_ddl_rights(
    roles: tuple[str, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    migrator, runner = roles
    config = _config_with_dsn_files(tmp_path, fake, migrator, runner)
    env = base_env(None)

    migrated = await ainvoke(["--config", str(config), "migrate", "--with-app-schema"], env)
    assert migrated.code == 0, migrated
    run_role = conninfo_to_dict(runner)["user"]
    async with await psycopg.AsyncConnection.connect(migrator, **connection_kwargs()) as conn:
        await conn.execute(GRANTS.format(run=run_role).encode())
    async with await psycopg.AsyncConnection.connect(runner, **connection_kwargs()) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the premise: no DDL
            await conn.execute(b"CREATE TABLE cw_not_allowed (id int)")
    world = await seed(migrator, fake, chats=2, files_per_chat=2, singles=3)

    port = free_port()
    daemon = DaemonProcess(
        ["--config", str(config)],
        {**env, "CLEANUP_WORKER__OBSERVABILITY__HTTP_PORT": str(port)},
        tmp_path / "daemon.log",
    )
    try:

        async def all_done() -> bool:
            assert daemon.running, daemon.tail()
            return (await truth(migrator))["attachments"] == {"done": len(world.files)}

        await wait_for(all_done, within=60, what="the worker's role to clean everything")
        daemon.send(signal.SIGTERM)
        assert await daemon.wait(within=20) == 0, daemon.tail()
        events = [e.get("event") for e in daemon.events()]
    finally:
        daemon.kill()
    assert "loop_crashed" not in events
    assert await cursors_at_end(migrator)
    status = await ainvoke(["--config", str(config), "status", "--json"], env)
    assert status.code == 0, status


def test_dsn_file_problems_are_one_line_config_errors(tmp_path: Path, db: str) -> None:
    config = write_config(tmp_path / "c.yaml", make_config(None, extra={"database.dsn_file": "x"}))
    missing = invoke(["--config", str(config), "status"], base_env(None))
    assert_one_line_error(missing, "database.dsn_file", "cannot read x", code=2)

    both = invoke(["--config", str(config), "status"], base_env(db))
    assert_one_line_error(both, "database.dsn_file", "conflicts with database.dsn", code=2)

    (tmp_path / "bad").write_text("password=hunter2 extra\n")
    bad = write_config(
        tmp_path / "b.yaml", make_config(None, extra={"database.dsn_file": str(tmp_path / "bad")})
    )
    result = invoke(["--config", str(bad), "status"], base_env(None))
    assert_one_line_error(result, "database.dsn_file", 'missing "=" after "extra"', code=2)
    assert "hunter2" not in result.stderr

    (tmp_path / "good").write_text(db + "\n")
    good = write_config(
        tmp_path / "g.yaml", make_config(None, extra={"database.dsn_file": str(tmp_path / "good")})
    )
    assert invoke(["--config", str(good), "status"], base_env(None)).code == 0


async def test_migrate_with_a_role_without_ddl_rights_is_one_line(
    roles: tuple[str, str], config_file: Path
) -> None:
    _, runner = roles
    result = await ainvoke(["--config", str(config_file), "migrate"], base_env(runner))
    assert_one_line_error(result, "database.dsn", "permission denied", "migrate_dsn", code=2)


async def test_migrate_uses_migrate_dsn_and_the_rest_dsn(config_file: Path, empty_db: str) -> None:
    """database.migrate_dsn (here from its env override) is migrate's alone."""
    env = base_env(UNREACHABLE_DSN, CLEANUP_WORKER__DATABASE__MIGRATE_DSN=empty_db)

    migrated = await ainvoke(["--config", str(config_file), "migrate"], env)
    assert migrated.code == 0, migrated
    status = await ainvoke(["--config", str(config_file), "status"], env)
    assert status.code == 3, status  # the worker's DSN: unreachable
