"""The real stack for handler tests: ``open_app`` on the test database + ``FakeOpenAI``.

Everything goes through the production wiring: the producer flows enqueue, the engine
sequences / leases / acks, the handlers call the real ``ProviderGateway`` over real sockets to
the fake, and outcomes are read back from rows, the fake's request log and the metrics registry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from factories import (
    Attachment,
    Chat,
    VectorStore,
    create_attachment,
    create_chat,
    create_vector_store,
    fetch_attachment,
    fetch_vector_store,
)
from psycopg.rows import dict_row

from cwlab.fake_openai import FakeOpenAI
from worker import producer
from worker.config import (
    BackendConfig,
    CleanupConfig,
    Config,
    DatabaseConfig,
    OutboxConfig,
    ProvidersConfig,
    RetryConfig,
    TenantOverride,
)
from worker.db import Conn
from worker.models import Outcome, Reject, Retry
from worker.outbox.delivery import Settled
from worker.outbox.engine import RoundReport
from worker.outbox.enqueue import JSON, enqueue
from worker.runtime.app import App

AQ = "mini-chat.attachment_cleanup"
CQ = "mini-chat.chat_cleanup"

# Every value contains SECRET, so "secret-free" is one substring check.
KEYS = {
    "OPENAI_KEY": "sk-shared-SECRET-0001",
    "AZURE_KEY": "az-shared-SECRET-0002",
    "TENANT_AZ_KEY": "az-tenant-SECRET-0003",
    "TENANT_OA_KEY": "sk-tenant-SECRET-0004",
}
AZURE_VERSION = "2025-03-01-preview"
TENANT_AZ_VERSION = "2024-10-21"
TENANT_AZ = UUID("aaaaaaaa-0000-4000-8000-00000000000a")  # own Azure endpoint and key
TENANT_OA = UUID("cccccccc-0000-4000-8000-00000000000c")  # own OpenAI base URL and key
MAX_ATTEMPTS = 3
TIMEOUT_SECONDS = 1.0
RETRY_BASE_SECONDS = 1.0


def build_config(
    dsn: str,
    fake: FakeOpenAI,
    *,
    max_attempts: int = MAX_ATTEMPTS,
    file_concurrency: int = 8,
    lease_seconds: float = 15.0,
) -> Config:
    """Shared ``openai`` and ``azure`` backends on the fake, plus two tenant overrides."""
    limits: dict[str, Any] = {
        "timeout_seconds": TIMEOUT_SECONDS,
        "max_concurrency": 32,
        "max_rps": 5000.0,
    }
    return Config(
        database=DatabaseConfig(dsn=dsn, pool_min_size=1, pool_max_size=12),
        outbox=OutboxConfig(
            batch_size=100,
            lease_seconds=lease_seconds,
            concurrency=16,
            retry=RetryConfig(base_seconds=RETRY_BASE_SECONDS, max_seconds=4.0, max_deliveries=10),
        ),
        cleanup=CleanupConfig(max_attempts=max_attempts, file_concurrency=file_concurrency),
        providers=ProvidersConfig(
            backends={
                "openai": BackendConfig(
                    kind="openai",
                    base_url=fake.openai_base_url,
                    api_key_env="OPENAI_KEY",
                    **limits,
                ),
                "azure": BackendConfig(
                    kind="azure",
                    endpoint=fake.azure_endpoint,
                    api_version=AZURE_VERSION,
                    api_key_env="AZURE_KEY",
                    **limits,
                ),
            },
            tenants={
                str(TENANT_AZ): {
                    "azure": TenantOverride(
                        endpoint=f"{fake.url}/tenant-az",
                        api_version=TENANT_AZ_VERSION,
                        api_key_env="TENANT_AZ_KEY",
                    )
                },
                str(TENANT_OA): {
                    "openai": TenantOverride(
                        base_url=f"{fake.url}/tenant-oa/v1", api_key_env="TENANT_OA_KEY"
                    )
                },
            },
        ),
    )


def assert_secret_free(*texts: str | None) -> None:
    for text in texts:
        assert text, "expected a non-empty error text"
        assert "SECRET" not in text, text
        for key in KEYS.values():
            assert key not in text


def outcomes(settled: Sequence[Settled]) -> list[Outcome]:
    return [s.handled.outcome for s in settled]


def only(settled: Sequence[Settled]) -> Outcome:
    """The outcome of the single message a round handled."""
    assert len(settled) == 1, [s.handled.outcome for s in settled]
    return settled[0].handled.outcome


def retry_of(outcome: Outcome) -> Retry:
    assert isinstance(outcome, Retry), outcome
    return outcome


def reject_of(outcome: Outcome) -> Reject:
    assert isinstance(outcome, Reject), outcome
    return outcome


@dataclass
class Stack:
    """One test's worker: the app built by ``open_app``, the fake upstream, a DB connection."""

    app: App
    fake: FakeOpenAI
    conn: Conn

    # -- building state ----------------------------------------------------------------------

    @property
    def queues(self) -> producer.Queues:
        outbox = self.app.config.outbox
        return producer.Queues(
            attachment_queue=outbox.attachment_queue.name,
            attachment_partitions=outbox.attachment_queue.partitions,
            chat_queue=outbox.chat_queue.name,
            chat_partitions=outbox.chat_queue.partitions,
        )

    async def chat(self, tenant_id: UUID | None = None) -> Chat:
        return await create_chat(self.conn, tenant_id or uuid.uuid4())

    async def attachment(
        self,
        chat: Chat,
        *,
        backend: str = "openai",
        with_file: bool = True,
        at_provider: bool = True,
        **kwargs: Any,
    ) -> Attachment:
        """An uploaded attachment; its file exists at the fake unless ``at_provider=False``."""
        file_id = f"file-{uuid.uuid4().hex[:20]}" if with_file else None
        att = await create_attachment(
            self.conn, chat.id, chat.tenant_id, file_id, backend, **kwargs
        )
        if file_id is not None and at_provider:
            self.fake.add_file(file_id)
        return att

    async def vector_store(
        self,
        chat: Chat,
        *,
        provider: str = "openai",
        files: Iterable[str] = (),
        at_provider: bool = True,
        vector_store_id: str | None = "auto",
    ) -> VectorStore:
        vs_id = f"vs_{uuid.uuid4().hex[:20]}" if vector_store_id == "auto" else vector_store_id
        store = await create_vector_store(self.conn, chat.id, chat.tenant_id, vs_id, provider)
        if vs_id is not None and at_provider:
            self.fake.add_vector_store(vs_id, files)
        return store

    # -- the chat service's flows ------------------------------------------------------------

    async def delete_attachment(self, att: Attachment) -> bool:
        return await producer.delete_attachment(
            self.conn,
            self.queues,
            tenant_id=att.tenant_id,
            chat_id=att.chat_id,
            attachment_id=att.id,
            user_id=att.uploaded_by_user_id,
        )

    async def delete_chat(self, chat: Chat) -> UUID:
        return await producer.delete_chat(
            self.conn, self.queues, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id
        )

    async def enqueue_raw(
        self, queue: str, payload: bytes | dict[str, Any], *, payload_type: str = JSON
    ) -> None:
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        await enqueue(self.conn, queue, 0, body, payload_type)

    async def enqueue_chat_event(self, chat: Chat) -> None:
        """The chat event alone (a redelivery / a replay of the original message)."""
        await producer.enqueue_chat_cleanup(
            self.conn, self.queues, tenant_id=chat.tenant_id, chat_id=chat.id
        )

    # -- running the engine ------------------------------------------------------------------

    async def deliver(self, queue: str) -> list[Settled]:
        """Sequence, then one round over every partition of ``queue`` (first deliveries)."""
        await self.app.engine.sequence()
        report = await self.app.engine.process_partitions(queue, max_partitions=4)
        return _settled(report)

    async def deliver_retries(self, queue: str | None = None) -> list[Settled]:
        """Make every parked retry due now and handle them (the next delivery of each)."""
        await self.conn.execute("UPDATE cleanup_worker_retries SET not_before = now()")
        report = await self.app.engine.process_retries(
            limit=1000, queues=[queue] if queue else None
        )
        return _settled(report)

    # -- reading state -----------------------------------------------------------------------

    async def att(self, att: Attachment | UUID) -> dict[str, Any]:
        row = await fetch_attachment(self.conn, att if isinstance(att, UUID) else att.id)
        assert row is not None
        return row

    async def vs_row(self, chat: Chat) -> dict[str, Any] | None:
        return await fetch_vector_store(self.conn, chat.id)

    async def rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def retry_rows(self) -> list[dict[str, Any]]:
        return await self.rows(
            "SELECT r.*, p.queue,"
            " extract(epoch FROM r.not_before - now())::float8 AS due_in,"
            # Parking sets both in one statement: exactly the delay the engine chose.
            " extract(epoch FROM r.not_before - r.updated_at)::float8 AS delay"
            " FROM cleanup_worker_retries r"
            " JOIN modkit_outbox_partitions p ON p.id = r.partition_id ORDER BY r.id"
        )

    async def dead_letters(self) -> list[dict[str, Any]]:
        return await self.rows(
            "SELECT d.*, p.queue FROM modkit_outbox_dead_letters d"
            " JOIN modkit_outbox_partitions p ON p.id = d.partition_id ORDER BY d.id"
        )

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the app's registry (``name`` without the prefix); 0 when absent."""
        value = self.app.metrics.registry.get_sample_value(f"mini_chat_{name}", labels)
        return 0.0 if value is None else value

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of ``name`` over every series whose labels include ``labels``."""
        total = 0.0
        for family in self.app.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == f"mini_chat_{name}" and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def provider_requests(self, outcome: str, *, operation: str = "delete_file") -> float:
        return self.metric_sum("provider_requests_total", operation=operation, outcome=outcome)

    def requests_for(self, resource_id: str) -> list[Any]:
        return [r for r in self.fake.requests() if r.resource_id == resource_id]


def _settled(report: RoundReport) -> list[Settled]:
    assert not report.lost, f"lease lost: {report.lost}"
    return report.settled
