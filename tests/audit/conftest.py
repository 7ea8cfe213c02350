"""Fixtures of the audit tests: the handler tests' real stack (``open_app`` on a shared,
emptied database + ``FakeOpenAI``), with one provider account (project) per api key, so each
route lists only its own account's objects, as separate OpenAI / Azure accounts would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from handlers.conftest import db, handlers_db, make_stack, stack
from handlers.support import KEYS

from cwlab.fake_openai import FakeOpenAI

__all__ = ["PROJECTS", "db", "fake", "handlers_db", "make_stack", "stack"]

# key env var -> the account (project) its key belongs to
PROJECTS = {name: f"proj_{name.lower()}" for name in KEYS}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """Objects created with a project are listed and deleted only through that account's key;
    objects without one (``Stack.attachment``) are seen by every key."""
    projects = {KEYS[name]: project for name, project in PROJECTS.items()}
    with FakeOpenAI(api_keys=KEYS.values(), key_projects=projects) as server:
        yield server
