"""The demo's world for `cleanup-worker demo`: the worker doing its real job on an embedded default.

A throwaway PostgreSQL (the test harness's provisioning, the embedded wheel by default) and the
local OpenAI-compatible server; a seeded world of tenants, chats, attachments and vector stores
deleted through the chat service's own flows, with poison messages and injected provider faults;
one drain with live progress; then a summary in which every number is read back from the
database or from the server's request log, not counted on the side.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import psycopg

from cwlab.fake_openai import FakeOpenAI, Fault
from cwlab.postgres import start_postgres
from cwlab.queries import lab_sql
from worker.config import (
    BackendConfig,
    CircuitBreakerConfig,
    Config,
    ProvidersConfig,
    Queues,
    RetryConfig,
    TenantOverride,
    redact_passwords,
)
from worker.db import Conn
from worker.db.pool import connect, connection_kwargs
from worker.errors import UsageError
from worker.outbox.enqueue import enqueue
from worker.producer import delete_attachment, delete_chat
from worker.runtime.app import open_app
from worker.runtime.drain import Progress, drain
from worker.runtime.migrate import migrate

OPENAI_KEY, AZURE_KEY, REVOKED_KEY = "sk-demo-openai", "demo-azure-key", "sk-demo-revoked"
DEMO_API_KEYS = (OPENAI_KEY, AZURE_KEY)  # what the local server accepts: the revoked key gets 401
KEY_ENV = {
    "DEMO_OPENAI_KEY": OPENAI_KEY,
    "DEMO_AZURE_KEY": AZURE_KEY,
    "DEMO_REVOKED_KEY": REVOKED_KEY,
}


DEMO_DATABASE = "cleanup_worker_demo"


def start_demo_database(stack: contextlib.ExitStack, *, keep: bool) -> tuple[str, str]:
    """A throwaway server with a demo database; returns its DSN and, if kept, how to stop it."""
    server = start_postgres()
    stack.callback(server.close)  # a no-op once detached
    with psycopg.connect(server.dsn(), **connection_kwargs()) as conn:
        conn.execute(f"CREATE DATABASE {DEMO_DATABASE}".encode())
    return server.dsn(DEMO_DATABASE), server.detach() if keep else ""


async def refuse_unless_empty(dsn: str) -> None:
    """The demo seeds fake tenants, chats and poison messages: into an empty scratch database
    only, never one that already holds an application's (or an earlier demo's) tables."""
    async with await connect(dsn) as conn:
        cur = await conn.execute(lab_sql("relations_present"))
        row = await cur.fetchone()
    count, example = row if row else (0, None)
    if count:
        raise UsageError(
            f"demo: refusing to seed {redact_passwords(dsn)}: it is not empty ({count}"
            f" relation(s), e.g. {example}); give --dsn a new empty database, or leave --dsn out"
            " for a throwaway one"
        )


@dataclass(frozen=True)
class Tenant:
    id: UUID
    name: str
    backend: str  # the storage_backend label its rows carry
    setup: str  # what is special about its routing, for the summary


@dataclass
class World:
    tenants: list[Tenant]
    chats_deleted: int = 0
    attachments_deleted_alone: int = 0
    poison_messages: int = 0
    faults: Counter[str] = field(default_factory=Counter)


def demo_tenants(rng: random.Random) -> list[Tenant]:
    def tid() -> UUID:
        return UUID(int=rng.getrandbits(128), version=4)

    return [
        Tenant(tid(), "acme", "openai", "shared key"),
        Tenant(tid(), "globex", "openai", "shared key"),
        Tenant(tid(), "initech", "azure", "own endpoint"),
        Tenant(tid(), "umbrella", "openai", "key revoked"),
    ]


def demo_config(base: Config, fake: FakeOpenAI, tenants: list[Tenant], dsn: str) -> Config:
    """Providers pointed at the local server; a retry schedule of seconds, not an hour."""
    initech, umbrella = tenants[2], tenants[3]
    providers = ProvidersConfig(
        # Seconds, not the production half-minute, so the demo's broken tenant settles quickly.
        circuit_breaker=CircuitBreakerConfig(failure_threshold=5, cooldown_seconds=1.0),
        backends={
            "openai": BackendConfig(
                kind="openai",
                base_url=fake.openai_base_url,
                api_key_env="DEMO_OPENAI_KEY",
                timeout_seconds=2.0,
            ),
            "azure": BackendConfig(
                kind="azure",
                endpoint=fake.url + "/azure-shared",
                api_version="2025-03-01-preview",
                api_key_env="DEMO_AZURE_KEY",
                timeout_seconds=2.0,
            ),
        },
        tenants={
            str(initech.id): {
                "azure": TenantOverride(
                    endpoint=fake.url + "/initech", api_key_env="DEMO_AZURE_KEY"
                )
            },
            str(umbrella.id): {"openai": TenantOverride(api_key_env="DEMO_REVOKED_KEY")},
        },
    )
    outbox = replace(
        base.outbox,
        poll_interval_seconds=0.2,
        retry=RetryConfig(base_seconds=0.3, max_seconds=2.0, max_deliveries=8),
    )
    return replace(
        base, database=replace(base.database, dsn=dsn), outbox=outbox, providers=providers
    )


async def seed_world(
    conn: Conn,
    fake: FakeOpenAI,
    queues: Queues,
    tenants: list[Tenant],
    *,
    chats: int,
    fault_rate: float,
    rng: random.Random,
) -> World:
    """Chats with attachments and vector stores, deleted the way the chat service deletes."""
    world = World(tenants)
    for n in range(chats):
        tenant = tenants[n % len(tenants)]
        user = uuid.uuid4()
        chat = await _create_chat(conn, tenant, user)
        attachments = [
            await _create_attachment(conn, fake, tenant, chat, user, rng)
            for _ in range(rng.randint(1, 12))
        ]
        if rng.random() < 0.6:
            await _create_vector_store(conn, fake, tenant, chat)
        for _, file_id in attachments:
            if file_id and rng.random() < fault_rate:
                world.faults[_inject_fault(fake, file_id, rng)] += 1
        if rng.random() < 0.5:
            if attachments and rng.random() < 0.3:  # one deleted alone before its chat
                await delete_attachment(
                    conn,
                    queues,
                    tenant_id=tenant.id,
                    chat_id=chat,
                    attachment_id=attachments[0][0],
                    user_id=user,
                )
                world.attachments_deleted_alone += 1
            await delete_chat(conn, queues, tenant_id=tenant.id, chat_id=chat, user_id=user)
            world.chats_deleted += 1
        else:
            for att_id, _ in attachments:
                if rng.random() < 0.3:
                    await delete_attachment(
                        conn,
                        queues,
                        tenant_id=tenant.id,
                        chat_id=chat,
                        attachment_id=att_id,
                        user_id=user,
                    )
                    world.attachments_deleted_alone += 1
    world.poison_messages = await _enqueue_poison(conn, queues)
    return world


def _inject_fault(fake: FakeOpenAI, file_id: str, rng: random.Random) -> str:
    kind = rng.choice(["rate_limited", "server_error", "connection_reset"])
    if kind == "rate_limited":
        fake.inject(Fault(status=429, headers={"Retry-After": "1"}, times=1, path_contains=file_id))
    elif kind == "server_error":
        fake.inject(Fault(status=503, times=3, path_contains=file_id))
    else:
        fake.inject(Fault(reset=True, times=2, path_contains=file_id))
    return kind


async def _create_chat(conn: Conn, tenant: Tenant, user: UUID) -> UUID:
    chat = uuid.uuid4()
    await conn.execute(
        lab_sql("insert_chat"), {"id": chat, "tenant_id": tenant.id, "user_id": user}
    )
    return chat


async def _create_attachment(
    conn: Conn, fake: FakeOpenAI, tenant: Tenant, chat: UUID, user: UUID, rng: random.Random
) -> tuple[UUID, str | None]:
    attachment = uuid.uuid4()
    kind = rng.choice(["document", "document", "image"])
    uploaded = rng.random() > 0.1  # some never reached the provider
    file_id = f"file-{uuid.uuid4().hex[:24]}" if uploaded else None
    if file_id:
        fake.add_file(file_id)
    await conn.execute(
        lab_sql("insert_attachment"),
        {
            "id": attachment,
            "tenant_id": tenant.id,
            "chat_id": chat,
            "user_id": user,
            "filename": f"{kind}-{attachment.hex[:6]}",
            "content_type": "application/pdf" if kind == "document" else "image/png",
            "size_bytes": rng.randint(1_000, 5_000_000),
            "storage_backend": tenant.backend,
            "provider_file_id": file_id,
            "status": "ready" if uploaded else "pending",
            "attachment_kind": kind,
        },
    )
    return attachment, file_id


async def _create_vector_store(conn: Conn, fake: FakeOpenAI, tenant: Tenant, chat: UUID) -> None:
    store_id = f"vs_{uuid.uuid4().hex[:24]}"
    fake.add_vector_store(store_id)
    await conn.execute(
        lab_sql("insert_vector_store"),
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.id,
            "chat_id": chat,
            "vector_store_id": store_id,
            "provider": tenant.backend,
        },
    )


async def _enqueue_poison(conn: Conn, queues: Queues) -> int:
    poison = [
        (queues.attachment_queue, b"{not json"),
        (queues.attachment_queue, json.dumps({"event_type": "attachment_deleted"}).encode()),
        (
            queues.chat_queue,
            json.dumps(
                {
                    "reason": "chat_archived",
                    "tenant_id": str(uuid.uuid4()),
                    "chat_id": str(uuid.uuid4()),
                    "system_request_id": str(uuid.uuid4()),
                }
            ).encode(),
        ),
    ]
    for queue, payload in poison:
        await enqueue(conn, queue, 0, payload)
    return len(poison)


async def read_summary(
    conn: Conn, fake: FakeOpenAI, world: World, seconds: float
) -> dict[str, Any]:
    """The result, from the database and the server's request log only (stable snake_case
    keys, counts as numbers: ``demo --json`` prints it as it is)."""
    deleted_files = {r.resource_id for r in fake.deletes("file")}
    cur = await conn.execute(lab_sql("attachment_outcomes"))
    counts: dict[UUID, Counter[str]] = {t.id: Counter() for t in world.tenants}
    for tenant_id, file_id, status in await cur.fetchall():
        tenant = counts.setdefault(tenant_id, Counter())
        tenant["files_deleted"] += file_id in deleted_files
        tenant[f"attachments_{status}"] += 1
    cur = await conn.execute(lab_sql("vector_stores_left"))
    row = await cur.fetchone()
    cur = await conn.execute(lab_sql("pending_dead_letter_errors"))
    reasons = Counter(reason_class(row[0] or "") for row in await cur.fetchall())
    answers = Counter(_answer_class(r.status) for r in fake.requests() if r.resource != "other")
    return {
        "seconds": round(seconds, 1),
        "tenants": [
            {
                "tenant_id": str(t.id),
                "name": t.name,
                "backend": t.backend,
                "setup": t.setup,
                **{key: counts[t.id][key] for key in TENANT_COUNTS},
            }
            for t in world.tenants
        ],
        "vector_stores": {
            "deleted": len({r.resource_id for r in fake.deletes("vector_store")}),
            "left": row[0] if row else 0,
        },
        "provider_answers": dict(sorted(answers.items())),
        "dead_letters": {
            "pending": sum(reasons.values()),
            "by_reason": [{"reason": r, "count": n} for r, n in reasons.most_common()],
        },
    }


TENANT_COUNTS = ("files_deleted", "attachments_done", "attachments_failed", "attachments_pending")
_IDS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|(?:file-|vs_)[A-Za-z0-9]+"
)
_COUNTS = re.compile(r"\b\d+ (attachment\(s\))")


def reason_class(reason: str) -> str:
    """A dead-letter reason without the ids and per-chat counts in it, so identical causes
    group together."""
    return _COUNTS.sub(r"N \1", _IDS.sub("<id>", reason))


def _answer_class(status: int | None) -> str:
    if status is None:
        return "connection_reset"
    named = {200: "deleted_200", 204: "deleted_204", 404: "not_found_404", 401: "unauthorized_401"}
    named[429] = "rate_limited_429"
    if status in named:
        return named[status]
    return f"server_error_{status}" if status >= 500 else f"http_{status}"


@dataclass(frozen=True)
class DemoOptions:
    chats: int = 40
    seed: int = 1
    fault_rate: float = 0.15
    max_seconds: float = 60.0


async def run_demo(
    base: Config,
    options: DemoOptions,
    *,
    dsn: str,
    fake: FakeOpenAI,
    progress: Progress,
    note: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Migrate, seed, drain until empty; returns the summary read back from the sources.

    ``note`` hears each step before it starts, so a person watching never sees a blank screen."""
    rng = random.Random(options.seed)
    tenants = demo_tenants(rng)
    config = demo_config(base, fake, tenants, dsn)
    outbox = config.outbox
    queues = outbox.queues
    note(f"demo: seeding {options.chats} chats for {len(tenants)} tenants ...")
    async with await connect(dsn) as conn:
        await migrate(conn, queues=outbox.queue_configs, with_app_schema=True)
        world = await seed_world(
            conn, fake, queues, tenants, chats=options.chats, fault_rate=options.fault_rate, rng=rng
        )
    note("demo: draining (one pass until nothing is left; faults retried with backoff) ...")
    started = time.monotonic()
    async with open_app(config, environ=dict(KEY_ENV)) as app:
        drained = await drain(
            app,
            queues=app.queues,
            max_seconds=options.max_seconds,
            until_empty=True,
            progress=progress,
        )
    seconds = time.monotonic() - started
    async with await connect(dsn) as conn:
        summary = await read_summary(conn, fake, world, seconds)
    return summary | {
        "world": {
            "chats": options.chats,
            "chats_deleted": world.chats_deleted,
            "attachments_deleted_alone": world.attachments_deleted_alone,
            "poison_messages": world.poison_messages,
            "faults_injected": dict(sorted(world.faults.items())),
        },
        "drain": drained.as_json(),
    }
