"""Every command documents itself (--help exits 0 and names its options); --version works."""

from __future__ import annotations

import pytest

from cli.support import base_env, invoke, run_subprocess
from worker import __version__

COMMANDS = {
    (): ["--config", "--dsn", "--log-format", "--log-level", "--version", "CLEANUP_WORKER__"],
    ("migrate",): ["--with-app-schema"],
    ("run",): ["SIGTERM"],
    ("drain",): ["--queue", "--max-seconds", "--until-empty", "--json"],
    ("status",): ["--json"],
    ("dead-letters",): ["list", "replay", "discard"],
    ("dead-letters", "list"): ["--queue", "--status", "--id", "--limit", "--json"],
    ("dead-letters", "replay"): ["--queue", "--id", "--all", "--limit"],
    ("dead-letters", "discard"): ["--queue", "--id", "--all"],
    ("retry-failed",): ["--chat-id", "--all"],
    ("check-config",): ["database"],
    ("demo",): ["--chats", "--seed", "--fault-rate", "--max-seconds", "--keep", "--json"],
}


@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: " ".join(c) or "top")
def test_help_of_every_command(command: tuple[str, ...]) -> None:
    result = invoke([*command, "--help"], base_env(None))
    assert result.code == 0, result
    assert result.stdout.startswith("Usage: cleanup-worker"), result
    for needle in COMMANDS[command]:
        assert needle in result.stdout, (needle, result.stdout)
    assert result.stderr == ""


def test_help_lists_every_command() -> None:
    result = invoke(["--help"], base_env(None))
    for name in ("migrate", "run", "drain", "status", "dead-letters", "retry-failed",
                 "check-config", "demo"):  # fmt: skip
        assert f"  {name}" in result.stdout, name


def test_help_needs_no_config_or_database(tmp_path) -> None:
    """--help works even when the configuration named in env is missing and no DB exists."""
    env = base_env(None, CLEANUP_WORKER_CONFIG=str(tmp_path / "missing.yaml"))
    result = invoke(["drain", "--help"], env)
    assert result.code == 0, result


@pytest.mark.slow
def test_version_and_help_as_a_process() -> None:
    result = run_subprocess(["--version"], base_env(None))
    assert result.code == 0, result
    assert result.stdout.strip() == f"cleanup-worker, version {__version__}"
    result = run_subprocess(["-h"], base_env(None))
    assert result.code == 0, result
    assert "retry-failed" in result.stdout
