"""Bad configuration refuses to start with the key path; env overrides take effect (SPEC §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.support import (
    API_KEY,
    AQ,
    CQ,
    UNREACHABLE_DSN,
    assert_one_line_error,
    assert_secret_free,
    base_env,
    invoke,
    make_config,
    run_subprocess,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI


def _write(tmp_path: Path, fake: FakeOpenAI, **extra: Any) -> Path:
    return write_config(tmp_path / "config.yaml", make_config(fake, extra=extra))


BAD_VALUES = [
    pytest.param({"outbox.batch_sise": 10}, ["outbox.batch_sise", "unknown key", "batch_size"],
                 id="unknown-key"),
    pytest.param({"outbox.lease_seconds": "long"}, ["outbox.lease_seconds", "'long'"],
                 id="bad-type"),
    pytest.param({"outbox.attachment_queue.partitions": 3},
                 ["outbox.attachment_queue.partitions", "power of two"], id="bad-value"),
    pytest.param({"observability.log_format": "xml"}, ["observability.log_format"],
                 id="bad-choice"),
    pytest.param({"providers.backends.openai.api_key": API_KEY},
                 ["providers.backends.openai.api_key", "api_key_env"], id="literal-api-key"),
    pytest.param({"providers.backends.openai.timeout_seconds": 3},
                 ["providers.backends.openai.timeout_seconds", "lease_seconds"],
                 id="cross-key"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "needles"), BAD_VALUES)
@pytest.mark.parametrize("command", [["check-config"], ["drain"], ["status", "--json"], ["run"]])
def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, fake: FakeOpenAI, extra: dict[str, Any], needles: list[str], command: list[str]
) -> None:
    path = _write(tmp_path, fake, **extra)
    result = invoke(["--config", str(path), *command], base_env(UNREACHABLE_DSN))
    line = assert_one_line_error(result, *needles, code=2)
    assert line.startswith("cleanup-worker: config error: "), line
    assert str(path) in line  # where the bad value came from
    assert result.stdout == ""
    assert_secret_free(result.stderr)


@pytest.mark.slow
def test_bad_config_as_a_process(tmp_path: Path, fake: FakeOpenAI) -> None:
    """The real entry point: exit 2, one line, no traceback, the literal key not echoed."""
    path = _write(tmp_path, fake, **{"providers.backends.openai.api_key": API_KEY})
    result = run_subprocess(["--config", str(path), "drain"], base_env(UNREACHABLE_DSN))
    assert_one_line_error(result, "providers.backends.openai.api_key", code=2)
    assert_secret_free(result.stdout, result.stderr)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("outbox:\n  batch_size: [1,\n")
    result = invoke(["--config", str(path), "check-config"], base_env(UNREACHABLE_DSN))
    assert_one_line_error(result, str(path), "invalid YAML", "line")


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_config_file(tmp_path: Path, via_env: bool) -> None:
    missing = tmp_path / "nope.yaml"
    if via_env:
        env = base_env(UNREACHABLE_DSN, CLEANUP_WORKER_CONFIG=str(missing))
        result = invoke(["drain"], env)
        assert_one_line_error(result, str(missing), "not found", "CLEANUP_WORKER_CONFIG")
    else:
        result = invoke(["--config", str(missing), "drain"], base_env(UNREACHABLE_DSN))
        assert_one_line_error(result, str(missing), "not found")


@pytest.mark.parametrize(
    "args",
    [
        ["drain", "--bogus"],
        ["drain", "--max-seconds", "0"],
        ["drain", "--max-seconds", "soon"],
        ["--log-level", "loud", "status"],
        ["--log-format", "xml", "status"],
        ["dead-letters", "list", "--status", "lost"],
        ["retry-failed", "--chat-id", "not-a-uuid"],
        ["no-such-command"],
    ],
)
def test_bad_flags_exit_2_without_traceback(args: list[str], config_file: Path) -> None:
    result = invoke(["--config", str(config_file), *args], base_env(UNREACHABLE_DSN))
    line = assert_one_line_error(result, "--help`", code=2)  # SPEC §7: one line, not click's 3
    assert line.startswith("cleanup-worker: "), result


def test_unknown_queue_is_a_usage_error(config_file: Path, env: dict[str, str | None]) -> None:
    result = invoke(["--config", str(config_file), "drain", "--queue", "mini-chat.nope"], env)
    assert_one_line_error(result, "unknown queue 'mini-chat.nope'", AQ, CQ)


# -- env overrides ---------------------------------------------------------------------------


def test_env_override_beats_the_file(
    tmp_path: Path, fake: FakeOpenAI, env: dict[str, str | None]
) -> None:
    """The file's batch_size is invalid; CLEANUP_WORKER__OUTBOX__BATCH_SIZE replaces it."""
    path = _write(tmp_path, fake, **{"outbox.batch_size": 0})
    bad = invoke(["--config", str(path), "check-config"], env)
    assert_one_line_error(bad, "outbox.batch_size", str(path))

    fixed = invoke(
        ["--config", str(path), "check-config"],
        {**env, "CLEANUP_WORKER__OUTBOX__BATCH_SIZE": "50"},
    )
    assert fixed.code == 0, fixed


def test_bad_env_override_names_the_variable(config_file: Path) -> None:
    env = base_env(UNREACHABLE_DSN, CLEANUP_WORKER__OUTBOX__BATCH_SIZE="0")
    result = invoke(["--config", str(config_file), "drain"], env)
    assert_one_line_error(result, "outbox.batch_size", "CLEANUP_WORKER__OUTBOX__BATCH_SIZE")
    env = base_env(UNREACHABLE_DSN, CLEANUP_WORKER__OUTBOX__BATCH_SISE="10")
    result = invoke(["--config", str(config_file), "drain"], env)
    assert_one_line_error(result, "outbox.batch_sise", "unknown key")


def test_env_override_of_a_queue_name_changes_behaviour(
    config_file: Path, env: dict[str, str | None]
) -> None:
    env = {**env, "CLEANUP_WORKER__OUTBOX__ATTACHMENT_QUEUE__NAME": "custom.attachments"}
    result = invoke(["--config", str(config_file), "drain", "--queue", AQ], env)
    assert_one_line_error(result, f"unknown queue '{AQ}'", "custom.attachments", CQ)


def test_dsn_precedence(tmp_path: Path, fake: FakeOpenAI, db: str) -> None:
    """file < CLEANUP_WORKER_DSN < --dsn."""
    path = _write(tmp_path, fake, **{"database.dsn": UNREACHABLE_DSN})
    from_file = invoke(["--config", str(path), "check-config"], base_env(None))
    assert from_file.code == 3, from_file  # database unreachable
    assert "FAIL  database" in from_file.stdout

    from_env = invoke(["--config", str(path), "check-config"], base_env(db))
    assert from_env.code == 0, from_env
    assert "database" in from_env.stdout
    assert "reachable" in from_env.stdout

    from_flag = invoke(["--config", str(path), "--dsn", UNREACHABLE_DSN, "status"], base_env(db))
    assert_one_line_error(from_flag, "database unavailable", code=3)


def test_config_file_from_env(config_file: Path, db: str) -> None:
    env = base_env(db, CLEANUP_WORKER_CONFIG=str(config_file))
    result = invoke(["check-config"], env)
    assert result.code == 0, result
    assert "providers.backends.openai.api_key_env" in result.stdout


def test_example_config_is_valid(db: str) -> None:
    """The documented example loads as it is (its key comes from OPENAI_API_KEY)."""
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    assert yaml.safe_load(example.read_text())
    result = invoke(
        ["--config", str(example), "check-config"], base_env(db, OPENAI_API_KEY=API_KEY)
    )
    assert result.code == 0, result


def test_a_bad_dsn_names_where_it_came_from(config_file: Path) -> None:
    env = base_env("mysql://somewhere/db")
    result = invoke(["--config", str(config_file), "status"], env)
    assert_one_line_error(result, "database.dsn", "(from CLEANUP_WORKER_DSN)")
    result = invoke(["--config", str(config_file), "--dsn", "mysql://x/db", "status"], env)
    assert_one_line_error(result, "database.dsn", "(from --dsn)")
