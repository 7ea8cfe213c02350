"""A DSN that cannot work is a configuration error on every command: one line on stderr, exit 2,
the password masked, no traceback; an unreachable server stays exit 3 (SPEC §7, §13; issue 12).

Seen before: a malformed DSN printed a psycopg traceback with the password (exit 1) on status,
check-config, drain, migrate and dead-letters; `run` retried "couldn't get a connection"
forever; only run/drain registered secrets for redaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pgbouncer import PgBouncer
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cli.support import (
    UNREACHABLE_DSN,
    arun_subprocess,
    assert_one_line_error,
    base_env,
    invoke,
)
from worker.observability.logging import redact_secrets

MALFORMED = "password=hunter2 extra"
COMMANDS = [
    ["status"],
    ["check-config"],
    ["drain"],
    ["migrate"],
    ["dead-letters", "list"],
    ["retry-failed", "--all"],
    ["run"],
]
IDS = [" ".join(c) for c in COMMANDS]


def _args(config_file: Path, command: list[str]) -> list[str]:
    return ["--config", str(config_file), *command]


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
async def test_malformed_dsn_is_one_line_exit_2(command: list[str], config_file: Path) -> None:
    result = await arun_subprocess(_args(config_file, command), base_env(MALFORMED), within=30)

    line = assert_one_line_error(result, "database.dsn", "CLEANUP_WORKER_DSN", code=2)
    assert 'missing "=" after "extra"' in line, result
    assert "hunter2" not in result.stdout + result.stderr, result


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
async def test_refused_password_is_one_line_exit_2(
    command: list[str], config_file: Path, db: str, pgbouncer: PgBouncer
) -> None:
    """PgBouncer authenticates with scram (the embedded test server trusts its socket)."""
    good = pgbouncer.dsn(str(conninfo_to_dict(db)["dbname"]))
    refused = make_conninfo(good, password="wrong-hunter2")

    result = await arun_subprocess(_args(config_file, command), base_env(refused), within=30)

    if command == ["check-config"]:  # a report on stdout, one line per check
        assert result.code == 2, result
        assert "Traceback" not in result.stderr, result
        [line] = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
        assert "database.dsn: the database refused it" in line, result
    else:
        line = assert_one_line_error(result, "database.dsn", "refused", code=2)
    assert "authentication failed" in line, result
    assert "wrong-hunter2" not in result.stdout + result.stderr, result


async def test_unknown_role_is_exit_2_unreachable_is_exit_3(config_file: Path, db: str) -> None:
    unknown = make_conninfo(db, user="no_such_role_cw")
    refused = await arun_subprocess(_args(config_file, ["status"]), base_env(unknown))
    assert_one_line_error(refused, "database.dsn", "refused", code=2)

    unreachable = await arun_subprocess(_args(config_file, ["status"]), base_env(UNREACHABLE_DSN))
    assert unreachable.code == 3, unreachable
    assert "Traceback" not in unreachable.stderr, unreachable


@pytest.mark.parametrize("command", COMMANDS[:-1], ids=IDS[:-1])
def test_every_command_registers_the_dsn_password(
    command: list[str],
    config_file: Path,
    db: str,
    role_dsn: Callable[..., str],
) -> None:
    """After the command loaded its configuration, the password is masked wherever it shows up
    (a fresh password each time: the registry is per process and never forgets; a fresh role
    too: PgBouncer keeps the SCRAM keys of a user it has seen)."""
    password = f"pw-{uuid.uuid4().hex}"
    dsn = role_dsn(db, f"cw_registered_{password[3:11]}", password, "SUPERUSER")
    assert redact_secrets(f"said {password}") == f"said {password}"  # not known yet

    invoke(_args(config_file, command), base_env(dsn))

    assert redact_secrets(f"said {password}") == "said ***"
