"""After a drain with injected failures, every scraped counter and gauge equals the truth.

The truth is the database (attachments, dead letters, retry rows, vector-store rows) and the
local provider's request log; the metrics are scraped over real HTTP from /metrics.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections import Counter
from typing import Any

from factories import create_attachment, create_chat, create_vector_store
from prometheus_client.parser import text_string_to_metric_families

from cwlab.fake_openai import FakeOpenAI, Fault
from worker.config import (
    BackendConfig,
    CleanupConfig,
    Config,
    DatabaseConfig,
    OutboxConfig,
    ProvidersConfig,
    RetryConfig,
)
from worker.db import Conn
from worker.observability.http import HealthServer
from worker.outbox.enqueue import enqueue
from worker.producer import Queues, delete_attachment, delete_chat
from worker.runtime.app import open_app
from worker.runtime.drain import drain
from worker.runtime.status import refresh_backlog

KEY = "sk-metrics-truth-key"
AQ, CQ = "mini-chat.attachment_cleanup", "mini-chat.chat_cleanup"


def _config(dsn: str, fake: FakeOpenAI) -> Config:
    return Config(
        database=DatabaseConfig(dsn=dsn, pool_min_size=1, pool_max_size=8),
        outbox=OutboxConfig(
            retry=RetryConfig(base_seconds=0.05, max_seconds=0.2, max_deliveries=6)
        ),
        cleanup=CleanupConfig(max_attempts=3),
        providers=ProvidersConfig(
            backends={
                "openai": BackendConfig(
                    kind="openai",
                    base_url=fake.openai_base_url,
                    api_key_env="KEY",
                    timeout_seconds=5.0,
                )
            }
        ),
    )


async def _seed(conn: Conn, fake: FakeOpenAI, queues: Queues) -> None:
    """Two deleted chats and single deletes; a file that always 503s, one refused (400), one
    rate-limited once, a vector store that 404s, and a poison message."""
    tenant, user = uuid.uuid4(), uuid.uuid4()
    for n in range(2):
        chat = await create_chat(conn, tenant, user)
        for m in range(4):
            att = await create_attachment(conn, chat.id, tenant, uploaded_by_user_id=user)
            assert att.provider_file_id
            if (n, m) != (1, 3):  # one file is already gone at the provider: a 404
                fake.add_file(att.provider_file_id)
            if (n, m) == (0, 0):
                fake.inject(Fault(status=503, path_contains=att.provider_file_id))
            if (n, m) == (0, 1):
                fake.inject(Fault(status=400, path_contains=att.provider_file_id))
            if (n, m) == (1, 0):
                fake.inject(
                    Fault(
                        status=429,
                        headers={"Retry-After": "0"},
                        times=1,
                        path_contains=att.provider_file_id,
                    )
                )
        store = await create_vector_store(conn, chat.id, tenant)
        if n == 0:
            assert store.vector_store_id
            fake.add_vector_store(store.vector_store_id)
        await delete_chat(conn, queues, tenant_id=tenant, chat_id=chat.id, user_id=user)
    chat = await create_chat(conn, tenant, user)
    single = await create_attachment(conn, chat.id, tenant, uploaded_by_user_id=user)
    assert single.provider_file_id
    fake.add_file(single.provider_file_id)
    await delete_attachment(
        conn, queues, tenant_id=tenant, chat_id=chat.id, attachment_id=single.id, user_id=user
    )
    await enqueue(conn, AQ, 1, json.dumps({"event_type": "attachment_deleted"}).encode())


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((f"mini_chat_{name}", tuple(sorted(labels.items()))), 0.0)


def _total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Sum over the series of ``name`` matching ``labels`` (any other labels)."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == f"mini_chat_{name}" and labels.items() <= dict(sample_labels).items()
    )


async def _scalar(conn: Conn, sql: str) -> int:
    cur = await conn.execute(sql.encode())
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_scraped_metrics_equal_database_and_request_log(db: str, conn: Conn) -> None:
    queues = Queues(AQ, 4, CQ, 4)
    with FakeOpenAI(api_keys=[KEY]) as fake:
        await _seed(conn, fake, queues)
        async with open_app(_config(db, fake), environ={"KEY": KEY}) as app:
            summary = await drain(app, queues=app.queues, max_seconds=60, until_empty=True)
            await refresh_backlog(app.pool, app.metrics, app.queues)
            server = HealthServer(
                "127.0.0.1",
                0,
                registry=app.metrics.registry,
                heartbeat_age=lambda: 0.0,
                max_heartbeat_age_seconds=60,
                readiness=_always_ready,
            )
            await server.start()
            try:
                samples = await asyncio.to_thread(_scrape, server.port)
            finally:
                await server.stop()
        log = fake.requests()
    assert summary.remaining_messages == summary.remaining_retries == 0

    statuses = Counter((r.resource, r.status) for r in log)
    done_with_file = await _scalar(
        conn,
        "SELECT count(*) FROM attachments "
        "WHERE cleanup_status = 'done' AND provider_file_id IS NOT NULL",
    )
    failed = await _scalar(conn, "SELECT count(*) FROM attachments WHERE cleanup_status = 'failed'")
    attempts = await _scalar(conn, "SELECT coalesce(sum(cleanup_attempts), 0) FROM attachments")
    dead = await _scalar(conn, "SELECT count(*) FROM modkit_outbox_dead_letters")
    stores_left = await _scalar(conn, "SELECT count(*) FROM chat_vector_stores")

    # Cleanup counters against rows.
    assert failed == 2  # the 503-forever file and the refused one
    assert _value(samples, "cleanup_completed_total", resource_type="file") == done_with_file
    assert _value(samples, "cleanup_failed_total", resource_type="file") == failed
    retries = _total(samples, "cleanup_retry_total", resource_type="file")
    assert retries + failed == attempts  # every recorded attempt is a retry or the terminal one
    assert (
        _value(samples, "cleanup_completed_total", resource_type="vector_store") == 2 - stores_left
    )
    assert _value(samples, "cleanup_vector_store_with_failed_attachments_total") == 1

    # Provider counters against the request log.
    assert _total(samples, "provider_requests_total", outcome="deleted") == sum(
        n for (_, status), n in statuses.items() if status == 200
    )
    assert _total(samples, "provider_requests_total", outcome="not_found") == sum(
        n for (_, status), n in statuses.items() if status == 404
    )
    assert (
        _total(samples, "provider_requests_total", outcome="server_error")
        == statuses[("file", 503)]
    )
    assert (
        _total(samples, "provider_requests_total", outcome="permanent") == statuses[("file", 400)]
    )
    assert (
        _total(samples, "provider_requests_total", outcome="rate_limited")
        == statuses[("file", 429)]
    )
    assert _total(samples, "provider_request_duration_seconds_count") == len(log)

    # Outbox counters and gauges against the outbox tables.
    rejects = _total(samples, "outbox_handler_total", result="reject")
    assert rejects == dead == _total(samples, "outbox_dead_lettered_total")
    assert _value(
        samples, "outbox_dead_letter_backlog", kind="attachment_cleanup"
    ) == await _scalar(
        conn,
        "SELECT count(*) FROM modkit_outbox_dead_letters d JOIN modkit_outbox_partitions p"
        f" ON p.id = d.partition_id WHERE p.queue = '{AQ}'",
    )
    assert _value(samples, "cleanup_backlog", state="failed", resource_type="file") == failed
    assert _value(samples, "cleanup_backlog", state="pending", resource_type="file") == 0
    assert (
        _value(samples, "cleanup_backlog", state="pending", resource_type="vector_store")
        == stores_left
    )
    for queue in (AQ, CQ):
        assert _value(samples, "outbox_backlog", queue=queue) == 0
        assert _value(samples, "outbox_retry_rows", queue=queue, state="due") == 0
        assert _value(samples, "outbox_retry_rows", queue=queue, state="parked") == 0


async def _always_ready() -> tuple[bool, str]:
    return True, "ready"
