"""`cleanup-worker check-config` (the real CLI) on routing SPEC §13 adds: api-versions the SDK
would send to the wrong path, and a route stored as suspected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli.support import base_env, invoke, make_config, write_config

from cwlab.fake_openai import FakeOpenAI


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def _with_azure(fake: FakeOpenAI, **azure: Any) -> dict[str, Any]:
    config = make_config(fake)
    config["providers"]["backends"]["azure"] = {
        "kind": "azure",
        "api_key_env": "AZ_KEY",
        "timeout_seconds": 1,
        **azure,
    }
    return config


@pytest.mark.parametrize(
    ("azure", "expected"),
    [
        ({"api_version": "v1"}, "'v1' is not a dated Azure api-version"),
        ({"api_version": "latest"}, "'latest' is not a dated Azure api-version"),
        ({"api_version": "preview"}, "'preview' is not a dated Azure api-version"),
        ({"api_version": "2024-02-01"}, "'2024-02-01' predates vector stores"),
        ({"api_version": "2024-04-01-preview"}, "predates vector stores"),
        ({"api_version": "2025-3-1"}, "is not a dated Azure api-version"),
    ],
)
def test_api_versions_sent_to_the_wrong_path_are_refused(
    tmp_path: Path, fake: FakeOpenAI, db: str, azure: dict[str, str], expected: str
) -> None:
    config = _with_azure(fake, endpoint=fake.azure_endpoint, **azure)
    path = write_config(tmp_path / "config.yaml", config)
    result = invoke(["--config", str(path), "check-config"], base_env(db, AZ_KEY="az"))
    assert result.code == 2, result
    assert "providers.backends.azure.api_version" in result.stderr + result.stdout
    assert expected in result.stderr + result.stdout


def test_the_azure_v1_surface_and_a_supported_version_pass(
    tmp_path: Path, fake: FakeOpenAI, db: str
) -> None:
    config = _with_azure(fake, base_url=f"{fake.url}/openai/v1/")
    config["providers"]["backends"]["classic"] = {
        "kind": "azure",
        "endpoint": fake.azure_endpoint,
        "api_version": "2024-05-01-preview",
        "api_key_env": "AZ_KEY",
        "timeout_seconds": 1,
    }
    path = write_config(tmp_path / "config.yaml", config)
    result = invoke(["--config", str(path), "check-config"], base_env(db, AZ_KEY="az"))
    assert result.code == 0, result


def test_a_suspected_route_is_reported(tmp_path: Path, fake: FakeOpenAI, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            b"INSERT INTO cleanup_worker_route_health"
            b" (backend, tenant_id, fingerprint, distinct_not_found)"
            b" VALUES ('openai', '', 'f', 11)"
        )
    path = write_config(tmp_path / "config.yaml", make_config(fake))
    result = invoke(["--config", str(path), "check-config"], base_env(db))
    assert result.code != 0, result
    assert "FAIL  provider route openai: suspected, not-found for 11 distinct objects" in (
        result.stdout
    )
    status = invoke(["--config", str(path), "status"], base_env(db))
    assert status.code == 0, status
    assert "Suspected provider routes" in status.stdout
