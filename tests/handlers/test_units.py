"""A few pure-logic checks with an in-process Provider (the real database still backs them).

Only what the real upstream cannot show precisely: how many deletes run at once, which
Retry-After wins among several files, and that a crashing delete leaves no work running
behind the handler's back. Everything else goes through the gateway and ``FakeOpenAI``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import pytest
from factories import Chat, create_attachment, create_chat
from psycopg_pool import AsyncConnectionPool

from worker.db import Conn
from worker.handlers.chat import ChatCleanupHandler
from worker.handlers.files import CleanupContext
from worker.handlers.repository import CleanupRepository
from worker.models import Message, Ok, Retry, RetryReason
from worker.observability.metrics import Metrics
from worker.providers.results import Deleted, DeleteResult, Transient

NOW = datetime.now(UTC)


@dataclass
class InProcessProvider:
    """Answers deletes after ``delay``; ``answers`` overrides per file id (or raises)."""

    delay: float = 0.01
    answers: dict[str, DeleteResult | BaseException] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    started: int = 0
    finished: int = 0

    async def delete_file(self, tenant_id: UUID, label: str, file_id: str) -> DeleteResult:
        self.started += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = self.answers.get(file_id, Deleted())
            await asyncio.sleep(0.005 if isinstance(answer, BaseException) else self.delay)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        finally:
            self.in_flight -= 1
            self.finished += 1

    async def delete_vector_store(self, tenant_id: UUID, label: str, vs_id: str) -> DeleteResult:
        return Deleted()


def message(chat: Chat) -> Message:
    event = {
        "reason": "chat_soft_delete",
        "tenant_id": str(chat.tenant_id),
        "chat_id": str(chat.id),
        "system_request_id": str(uuid.uuid4()),
        "chat_deleted_at": NOW.isoformat(),
    }
    payload = json.dumps(event).encode()
    return Message("mini-chat.chat_cleanup", 0, 1, payload, "application/json", NOW, 1)


async def deleted_chat_with_files(conn: Conn, count: int) -> tuple[Chat, list[str]]:
    chat = await create_chat(conn, deleted_at=NOW)
    files = []
    for _ in range(count):
        att = await create_attachment(conn, chat.id, chat.tenant_id, cleanup_status="pending")
        assert att.provider_file_id is not None
        files.append(att.provider_file_id)
    return chat, files


def handler(
    pool: AsyncConnectionPool, provider: InProcessProvider, concurrency: int
) -> ChatCleanupHandler:
    ctx = CleanupContext(CleanupRepository(pool), provider, Metrics(), max_attempts=5)
    return ChatCleanupHandler(ctx, file_concurrency=concurrency)


async def test_chat_file_deletes_are_concurrent_and_bounded(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    chat, _ = await deleted_chat_with_files(conn, 24)
    provider = InProcessProvider(delay=0.02)

    assert await handler(pool, provider, 4)(message(chat)) == Ok()

    assert provider.started == 24
    assert provider.max_in_flight == 4


async def test_chat_retry_carries_the_longest_retry_after(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    chat, files = await deleted_chat_with_files(conn, 3)
    provider = InProcessProvider(
        answers={
            files[0]: Transient(RetryReason.RATE_LIMITED, "HTTP 429", 5.0),
            files[1]: Transient(RetryReason.RATE_LIMITED, "HTTP 429", 40.0),
        }
    )

    outcome = await handler(pool, provider, 8)(message(chat))

    assert isinstance(outcome, Retry)
    assert outcome.reason is RetryReason.RATE_LIMITED
    assert outcome.retry_after_seconds == 40.0
    assert "2 attachment(s) still pending" in outcome.detail


async def test_a_crashing_file_delete_leaves_no_work_running(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    """The engine turns the crash into a Retry; nothing may keep deleting after that."""
    chat, files = await deleted_chat_with_files(conn, 20)
    provider = InProcessProvider(delay=0.2, answers={sorted(files)[0]: RuntimeError("bug")})

    with pytest.raises(RuntimeError, match="bug"):
        await handler(pool, provider, 4)(message(chat))
    started, in_flight = provider.started, provider.in_flight
    await asyncio.sleep(0.4)

    assert in_flight == 0
    assert provider.started == started  # nothing started after the handler gave up
