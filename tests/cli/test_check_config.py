"""`check-config`: configuration, database and key sources; values never printed."""

from __future__ import annotations

from pathlib import Path

from cli.support import (
    API_KEY,
    KEY_ENV,
    UNREACHABLE_DSN,
    assert_secret_free,
    base_env,
    invoke,
    make_config,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI


def _lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip()]


def test_all_ok(config_file: Path, env: dict[str, str | None]) -> None:
    result = invoke(["--config", str(config_file), "check-config"], env)
    assert result.code == 0, result
    lines = _lines(result.stdout)
    assert all(line.startswith("ok") for line in lines), lines
    text = result.stdout
    assert "configuration: valid" in text
    assert "reachable" in text
    assert "migrations: applied" in text
    assert f"providers.backends.openai.api_key_env: {KEY_ENV} is set" in text
    assert_secret_free(result.stdout, result.stderr)


def test_missing_key_env_var(config_file: Path, env: dict[str, str | None]) -> None:
    result = invoke(["--config", str(config_file), "check-config"], {**env, KEY_ENV: None})
    assert result.code == 2, result
    fails = [line for line in _lines(result.stdout) if line.startswith("FAIL")]
    assert fails == [f"FAIL  providers.backends.openai.api_key_env: {KEY_ENV} is not set or empty"]
    assert "reachable" in result.stdout  # the other checks still ran


def test_unreadable_and_readable_key_files(
    tmp_path: Path, fake: FakeOpenAI, env: dict[str, str | None]
) -> None:
    missing = tmp_path / "missing-key"
    config = make_config(fake)
    backend = config["providers"]["backends"]["openai"]
    del backend["api_key_env"]
    backend["api_key_file"] = str(missing)
    path = write_config(tmp_path / "config.yaml", config)
    result = invoke(["--config", str(path), "check-config"], env)
    assert result.code == 2, result
    assert f"FAIL  providers.backends.openai.api_key_file: {missing} is missing" in result.stdout

    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    backend["api_key_file"] = str(empty)
    write_config(path, config)
    result = invoke(["--config", str(path), "check-config"], env)
    assert result.code == 2, result
    assert f"FAIL  providers.backends.openai.api_key_file: {empty}" in result.stdout

    good = tmp_path / "key"
    good.write_text(API_KEY + "\n")
    backend["api_key_file"] = str(good)
    write_config(path, config)
    result = invoke(["--config", str(path), "check-config"], env)
    assert result.code == 0, result
    assert f"ok    providers.backends.openai.api_key_file: {good} is readable" in result.stdout
    assert_secret_free(result.stdout, result.stderr)


def test_a_key_file_that_is_not_text_fails_its_line_not_the_command(
    tmp_path: Path, fake: FakeOpenAI, env: dict[str, str | None]
) -> None:
    """Registering the keys with the log redactor read files on its own and let a decode
    error escape: every command died with a traceback before printing anything. Keys are now
    read in one place (``KeySource``), which reports such a file as unreadable."""
    binary = tmp_path / "binary-key"
    binary.write_bytes(b"\xff\xfe\x00k")
    config = make_config(fake)
    backend = config["providers"]["backends"]["openai"]
    del backend["api_key_env"]
    backend["api_key_file"] = str(binary)
    path = write_config(tmp_path / "config.yaml", config)
    result = invoke(["--config", str(path), "check-config"], env)
    assert result.code == 2, result
    fails = [line for line in _lines(result.stdout) if line.startswith("FAIL")]
    assert fails == [
        f"FAIL  providers.backends.openai.api_key_file: {binary} is missing, unreadable or empty"
    ]
    assert "Traceback" not in result.stderr


def test_tenant_override_keys_are_checked(
    tmp_path: Path, fake: FakeOpenAI, env: dict[str, str | None]
) -> None:
    tenant = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
    config = make_config(
        fake,
        extra={
            f"providers.tenants.{tenant}": {
                "openai": {"base_url": f"{fake.url}/t/v1", "api_key_env": "CW_TENANT_KEY"}
            }
        },
    )
    path = write_config(tmp_path / "config.yaml", config)
    result = invoke(["--config", str(path), "check-config"], env)
    assert result.code == 2, result
    assert f"FAIL  providers.tenants.{tenant}.openai.api_key_env: CW_TENANT_KEY" in result.stdout
    result = invoke(["--config", str(path), "check-config"], {**env, "CW_TENANT_KEY": "k-2"})
    assert result.code == 0, result


def test_database_unreachable_is_reported(config_file: Path) -> None:
    result = invoke(["--config", str(config_file), "check-config"], base_env(UNREACHABLE_DSN))
    assert result.code == 3, result  # the documented "database unreachable" code
    fails = [line for line in _lines(result.stdout) if line.startswith("FAIL")]
    assert len(fails) == 1, result
    assert "database" in fails[0]
    assert "unavailable" in fails[0]
    assert "/nonexistent/cleanup-worker-sock" in fails[0]  # where it looked
    assert "Traceback" not in result.stderr


def test_migrations_missing_is_reported(config_file: Path, empty_db: str) -> None:
    result = invoke(["--config", str(config_file), "check-config"], base_env(empty_db))
    assert result.code == 2, result
    assert "reachable" in result.stdout
    fails = [line for line in _lines(result.stdout) if line.startswith("FAIL")]
    assert len(fails) == 1, result
    assert "migrations not applied" in fails[0]
    assert "cleanup-worker migrate" in fails[0]

    migrated = invoke(["--config", str(config_file), "migrate"], base_env(empty_db))
    assert migrated.code == 0, migrated
    assert "applied schema/" in migrated.stdout
    again = invoke(["--config", str(config_file), "migrate"], base_env(empty_db))
    assert "nothing new" in again.stdout
    result = invoke(["--config", str(config_file), "check-config"], base_env(empty_db))
    assert result.code == 0, result
