"""Fixtures of the CLI tests: a real FakeOpenAI, a config file pointing at it, the CLI's env."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.support import API_KEY, base_env, make_config, write_config
from cwlab.fake_openai import FakeOpenAI


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(api_keys=[API_KEY]).start()
    yield server
    threading.Thread(target=server.stop, name="fake-openai-stop", daemon=True).start()


@pytest.fixture
def config_file(tmp_path: Path, fake: FakeOpenAI) -> Path:
    return write_config(tmp_path / "config.yaml", make_config(fake))


@pytest.fixture
def env(db: str) -> dict[str, str | None]:
    return base_env(db)
