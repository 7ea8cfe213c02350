"""Fixtures of the audit tests: the handler tests' real stack (``open_app`` on a shared,
emptied database + ``FakeOpenAI``), reused as they are."""

from __future__ import annotations

from handlers.conftest import db, fake, handlers_db, make_stack, stack

__all__ = ["db", "fake", "handlers_db", "make_stack", "stack"]
