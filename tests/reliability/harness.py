"""The reliability harness: a real cluster of ``cleanup-worker run`` processes on one database.

Shared by the CI tests (``tests/reliability/test_scenarios.py``, small sizes) and the figures
script (``scripts/reliability.py``, full sizes); the scenarios themselves live in
``scenarios.py``. Nothing here is mocked:

* PostgreSQL: a sandbox server (``cwlab.postgres``), one fresh database per scenario,
  reached as a role whose **password is a recognisable secret** (the DSN carries it).
* Provider: an in-process ``FakeOpenAI`` on 127.0.0.1; every tenant has its **own key** (a
  recognisable secret) and most have their own endpoint prefix, so the request log shows which
  tenant's credentials and route every request used.
* Workers: ``python -m worker --log-format json --log-level debug run`` subprocesses, stdout
  and stderr captured to files, metrics scraped from their HTTP port (scenario 12 starts them
  through ``poison_worker.py``, a test-only wrapper that adds a poison pill).
* PgBouncer (scenario 10): the suite's own (``tests/pgbouncer.py``), which can be killed and
  started again here (``RestartablePgBouncer``).

Instrumentation (test database only, never product code): AFTER triggers copy every change of
a partition lease (``modkit_outbox_processor``) and of a retry-row lease
(``cleanup_worker_retries``) into audit tables, stamped with ``clock_timestamp()``. Row locks
serialise the changes of one row, so the audit order of a row is its commit order; that gives
the exact lease timeline of every partition and every parked message (``check_leases``).

Every loop here is bounded in count or time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import yaml
from dsn import rows, scalar
from pgbouncer import PgBouncer, locate
from psycopg.conninfo import make_conninfo

from cwlab.fake_openai import FakeOpenAI, Fault, RecordedRequest
from cwlab.postgres import PostgresServer
from worker import producer
from worker.config import QueueConfig
from worker.runtime.migrate import migrate

REPO = Path(__file__).resolve().parents[2]
AQ = "mini-chat.attachment_cleanup"
CQ = "mini-chat.chat_cleanup"
PARTITIONS = 4
QUEUES = producer.Queues(AQ, PARTITIONS, CQ, PARTITIONS)
AZURE_VERSION = "2025-03-01-preview"
TENANT_AZURE_VERSION = "2024-10-21"
# How a worker process is started (a debugging wrapper may replace it).
WORKER_COMMAND = [sys.executable, "-m", "worker"]
STARTUP_SECONDS = 60.0
# No batch lasts this long (batch_size / concurrency rounds of a lease_seconds budget each).
WEDGED_SECONDS = 90.0  # importing the SDK on a loaded 2-core machine, several at once

# -- secrets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """Recognisable secret values; none may ever appear in output (SPEC §6, §9).

    Most are deliberately *not* shaped like an OpenAI key (``sk-…``), so only the worker's
    registry of runtime secrets can mask them, not a generic pattern.
    """

    dsn_password: str
    keys: Mapping[str, str]  # env var name -> key

    @classmethod
    def fresh(cls, key_envs: Iterable[str]) -> Secrets:
        tag = secrets.token_hex(4)
        keys = {}
        for n, env in enumerate(sorted(key_envs)):
            # One in three looks like an OpenAI key; the others only the registry can catch.
            keys[env] = (
                f"sk-RELIAB{n}-{tag}-{secrets.token_hex(8)}"
                if n % 3 == 0
                else f"RELIAB-KEY{n}-{tag}-{secrets.token_hex(8)}"
            )
        return cls(f"RELIAB-DSNPW-{tag}-{secrets.token_hex(6)}", keys)

    def values(self) -> list[str]:
        return [self.dsn_password, *self.keys.values()]

    def forms(self) -> list[str]:
        """Each secret as it could appear: raw, URL-encoded, and its distinctive core."""
        found: set[str] = set()
        for value in self.values():
            found |= {value, urllib.parse.quote(value, safe=""), value.split("-", 1)[1]}
        return sorted(found, key=len, reverse=True)

    def leaks(self, text: str) -> list[str]:
        return [form for form in self.forms() if form in text]


# -- tenants and routing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """A tenant, the label its rows carry, and the route (prefix, key env) it must use."""

    id: UUID
    name: str
    label: str  # storage_backend / provider label
    key_env: str
    prefix: str  # path prefix at the fake ("" = the shared backend's own URL)
    override: bool

    def path_ok(self, path: str) -> bool:
        api = "/openai/" if self.label == "azure" else "/v1/"
        return path.startswith(f"{self.prefix}{api}")


SHARED_OPENAI_ENV = "RELIAB_KEY_OPENAI"
SHARED_AZURE_ENV = "RELIAB_KEY_AZURE"
SHARED_AZURE_PREFIX = "/az-shared"


def make_tenants(rng: random.Random, *, revoked: bool = False) -> list[Tenant]:
    """Eight tenants over every routing shape: shared OpenAI, own OpenAI base URL and key,
    shared Azure, own Azure endpoint and key. ``revoked``: the last one's key is not accepted
    by the provider (401 for every request: an auth-broken tenant)."""

    def tid() -> UUID:
        return UUID(int=rng.getrandbits(128), version=4)

    tenants = [
        Tenant(tid(), "shared-oa-1", "openai", SHARED_OPENAI_ENV, "", False),
        Tenant(tid(), "shared-oa-2", "openai", SHARED_OPENAI_ENV, "", False),
        Tenant(tid(), "shared-oa-3", "openai", SHARED_OPENAI_ENV, "", False),
        Tenant(tid(), "own-oa-1", "openai", "RELIAB_KEY_OWN_OA_1", "/own-oa-1", True),
        Tenant(tid(), "own-oa-2", "openai", "RELIAB_KEY_OWN_OA_2", "/own-oa-2", True),
        Tenant(tid(), "shared-az-1", "azure", SHARED_AZURE_ENV, SHARED_AZURE_PREFIX, False),
        Tenant(tid(), "own-az-1", "azure", "RELIAB_KEY_OWN_AZ_1", "/own-az-1", True),
        Tenant(tid(), "own-oa-3", "openai", "RELIAB_KEY_OWN_OA_3", "/own-oa-3", True),
    ]
    if revoked:
        last = tenants[-1]
        tenants[-1] = Tenant(
            last.id, "revoked-oa", "openai", "RELIAB_KEY_REVOKED", "/revoked-oa", True
        )
    return tenants


def key_envs(tenants: Sequence[Tenant]) -> set[str]:
    return {SHARED_OPENAI_ENV, SHARED_AZURE_ENV} | {t.key_env for t in tenants}


# -- configuration ---------------------------------------------------------------------------


def worker_config(
    fake_url: str, tenants: Sequence[Tenant], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A fast configuration for the cluster (every key documented in config.example.yaml)."""
    # 2 s (the most a 5 s lease allows): on a loaded 2-core machine a prompt answer must not
    # turn into a client-side timeout, which would show up as a repeat delete.
    backend_limits = {"timeout_seconds": 2.0, "max_concurrency": 64, "max_rps": 10000}
    config: dict[str, Any] = {
        "database": {"pool_min_size": 1, "pool_max_size": 10},
        "outbox": {
            "attachment_queue": {"name": AQ, "partitions": PARTITIONS},
            "chat_queue": {"name": CQ, "partitions": PARTITIONS},
            "batch_size": 50,
            "lease_seconds": 5,
            "concurrency": 32,
            "poll_interval_seconds": 0.2,
            "vacuum_interval_seconds": 2,
            "shutdown_grace_seconds": 3,
            "retry": {"base_seconds": 0.5, "max_seconds": 2, "max_deliveries": 8},
        },
        "cleanup": {"max_attempts": 5, "file_concurrency": 8},
        "providers": {
            # A fault on one file must not open the breaker for every other file of a route.
            "circuit_breaker": {"failure_threshold": 1000, "cooldown_seconds": 1},
            "backends": {
                "openai": {
                    "kind": "openai",
                    "base_url": f"{fake_url}/v1",
                    "api_key_env": SHARED_OPENAI_ENV,
                    **backend_limits,
                },
                "azure": {
                    "kind": "azure",
                    "endpoint": f"{fake_url}{SHARED_AZURE_PREFIX}",
                    "api_version": AZURE_VERSION,
                    "api_key_env": SHARED_AZURE_ENV,
                    **backend_limits,
                },
            },
            "tenants": {},
        },
        "observability": {
            "http_host": "127.0.0.1",
            "http_port": 0,
            "log_format": "json",
            "log_level": "debug",
            "backlog_refresh_seconds": 1,
        },
    }
    for t in tenants:
        if not t.override:
            continue
        if t.label == "azure":
            route = {
                "endpoint": f"{fake_url}{t.prefix}",
                "api_key_env": t.key_env,
                "api_version": TENANT_AZURE_VERSION,
            }
        else:
            route = {"base_url": f"{fake_url}{t.prefix}/v1", "api_key_env": t.key_env}
        config["providers"]["tenants"][str(t.id)] = {t.label: route}
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


# -- the database ----------------------------------------------------------------------------

ROLE = "cw_reliability"

AUDIT_SQL = """
CREATE TABLE rel_lease_audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    kind        TEXT NOT NULL,          -- 'partition' | 'retry'
    op          TEXT NOT NULL,
    partition_id BIGINT NOT NULL,
    seq         BIGINT,                 -- retry rows: the parked message
    old_by      TEXT, new_by TEXT,
    old_until   TIMESTAMPTZ, new_until TIMESTAMPTZ,
    old_seq     BIGINT, new_seq BIGINT, -- partitions: the cursor
    reason      TEXT                    -- retry rows: why parked
);
-- The worker id of a lease's holder: locked_by is the worker id plus a fencing token (a UUID
-- per acquisition); the checks below compare holders with the worker ids of the logs.
CREATE FUNCTION rel_worker(locked_by TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(locked_by, '/[0-9a-f-]{36}$', '')
$$;
CREATE FUNCTION rel_audit_processor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rel_lease_audit (kind, op, partition_id, old_by, new_by, old_until, new_until,
                                 old_seq, new_seq)
    VALUES ('partition', TG_OP, NEW.partition_id,
            rel_worker(OLD.locked_by), rel_worker(NEW.locked_by),
            OLD.locked_until, NEW.locked_until, OLD.processed_seq, NEW.processed_seq);
    RETURN NULL;
END $$;
CREATE TRIGGER rel_audit_processor AFTER UPDATE ON modkit_outbox_processor
    FOR EACH ROW EXECUTE FUNCTION rel_audit_processor();
CREATE FUNCTION rel_audit_retries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO rel_lease_audit (kind, op, partition_id, seq, new_by, new_until, reason)
        VALUES ('retry', TG_OP, NEW.partition_id, NEW.seq, rel_worker(NEW.locked_by),
                NEW.locked_until, NEW.reason);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO rel_lease_audit (kind, op, partition_id, seq, old_by, new_by, old_until,
                                     new_until, reason)
        VALUES ('retry', TG_OP, NEW.partition_id, NEW.seq,
                rel_worker(OLD.locked_by), rel_worker(NEW.locked_by),
                OLD.locked_until, NEW.locked_until, NEW.reason);
    ELSE
        INSERT INTO rel_lease_audit (kind, op, partition_id, seq, old_by, old_until)
        VALUES ('retry', TG_OP, OLD.partition_id, OLD.seq, rel_worker(OLD.locked_by),
                OLD.locked_until);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER rel_audit_retries AFTER INSERT OR UPDATE OR DELETE ON cleanup_worker_retries
    FOR EACH ROW EXECUTE FUNCTION rel_audit_retries();
"""


def _admin(server: PostgresServer, *statements: str, params: Any = None) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode() if params is None else statement, params)


async def create_database(server: PostgresServer, name: str, password: str) -> str:
    """A fresh, migrated database with the audit triggers; returns the secret-bearing DSN."""
    _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        # Superuser only because the sandbox has no grants set up; the password is the point.
        quoted = password.replace("'", "''")
        conn.execute(f"{verb} ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{quoted}'".encode())
    dsn = make_conninfo(server.dsn(name), user=ROLE, password=password)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(
            conn,
            queues=[QueueConfig(AQ, PARTITIONS), QueueConfig(CQ, PARTITIONS)],
            with_app_schema=True,
        )
        await conn.execute(AUDIT_SQL.encode())
    return dsn


def drop_database(server: PostgresServer, name: str) -> None:
    with contextlib.suppress(psycopg.Error):
        _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- PgBouncer --------------------------------------------------------------------------------


class RestartablePgBouncer(PgBouncer):
    """The suite's PgBouncer (``tests/pgbouncer.py``: transaction pooling, scram, a userlist of
    plain passwords) that can also be killed and started again on the same port with the same
    configuration: a PgBouncer pod replaced under running clients."""

    def kill(self) -> None:
        """Every client and server connection is cut at once."""
        self._proc.kill()
        self._proc.wait(10)

    def start_again(self) -> None:
        """The same binary, configuration and port; returns once it accepts a login."""
        binary, env = locate()
        self._spawn(binary, env, log_mode="ab")
        self._wait_ready(self.dsn())

    def logins(self, dbname: str) -> int:
        """Client logins to ``dbname`` PgBouncer logged (it logs every one by default)."""
        path = self._dir / "pgbouncer.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text.count(f"login attempt: db={dbname} ")


# -- worker processes ------------------------------------------------------------------------


def _subprocess_env(changes: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CLEANUP_WORKER") and not k.startswith("RELIAB_")
    }
    env.update(changes)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Replica:
    """One ``cleanup-worker run`` process; output in files (a pipe could fill up and block)."""

    def __init__(
        self,
        name: str,
        config_path: Path,
        env: Mapping[str, str],
        logdir: Path,
        command: Sequence[str] = WORKER_COMMAND,
    ):
        self.name = name
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        self.worker_id: str | None = None
        self.http_port: int | None = None
        self.exit_code: int | None = None
        self.started_at = time.monotonic()
        self.stopped_at: float | None = None
        self.killed = False  # SIGKILLed: its metrics died with it
        self.last_metrics = ""
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    *command,
                    "--config",
                    str(config_path),
                    "--log-format",
                    "json",
                    "--log-level",
                    "debug",
                    "run",
                ],
                env=_subprocess_env(env),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr_text().splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "<not json>", "line": line}
            found.append(event if isinstance(event, dict) else {"event": "<not an object>"})
        return found

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    async def wait_started(self, timeout: float = STARTUP_SECONDS) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "worker_started":
                    self.worker_id = event["worker_id"]
                    self.http_port = int(event["http_port"])
                    return
            if not self.running:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not start within {timeout}s:\n{self.tail()}")

    def scrape(self, timeout: float = 5.0) -> str:
        """``/metrics`` now (also kept as ``last_metrics``); "" when it does not answer."""
        if self.http_port is None or not self.running:
            return ""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                self.last_metrics = resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return ""
        return self.last_metrics

    def signal(self, signum: int) -> None:
        if self.running:
            self.proc.send_signal(signum)

    def kill9(self) -> None:
        if self.running:
            self.killed = True
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.exit_code = self.proc.returncode
            self.stopped_at = time.monotonic()

    async def wait(self, timeout: float) -> int | None:  # noqa: ASYNC109
        """Exit code, or None if still running after ``timeout``."""
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exit_code = code
        self.stopped_at = self.stopped_at or time.monotonic()
        return code

    def reap(self) -> None:
        """Make sure the process is gone (cleanup path)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        self.exit_code = self.proc.returncode


# -- the world: what was seeded, and what must happen to it --------------------------------


@dataclass
class Att:
    id: UUID
    tenant: Tenant
    chat_id: UUID
    file_id: str | None
    deleted_alone: bool = False  # its own attachment_deleted message


@dataclass
class World:
    tenants: list[Tenant]
    attachments: dict[UUID, Att] = field(default_factory=dict)  # every one to be cleaned up
    kept: dict[UUID, Att] = field(default_factory=dict)  # attachments of live chats, kept
    deleted_chats: dict[UUID, Tenant] = field(default_factory=dict)
    live_chats: dict[UUID, Tenant] = field(default_factory=dict)
    vector_stores: dict[str, tuple[UUID, Tenant]] = field(default_factory=dict)  # of deleted chats
    kept_vector_stores: set[str] = field(default_factory=set)
    owner: dict[str, Tenant] = field(default_factory=dict)  # provider id -> owning tenant
    # Deliberate debt: ids expected to end failed / left behind, with why.
    expected_failed: set[UUID] = field(default_factory=set)
    expected_kept_stores: set[str] = field(default_factory=set)
    # Injected faults per provider id: (kind, number of requests hit; None = all).
    faults: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    messages: int = 0  # enqueued by the producer flows
    extra_messages: int = 0  # enqueued directly (bad input, good raw events)

    @property
    def files(self) -> dict[str, Att]:
        return {a.file_id: a for a in self.attachments.values() if a.file_id}

    @property
    def total_messages(self) -> int:
        return self.messages + self.extra_messages


@dataclass(frozen=True)
class SeedPlan:
    chats: int  # deleted whole
    files_per_chat: tuple[int, int]
    live_chats: int  # kept; some of their attachments deleted one by one
    singles_per_live_chat: tuple[int, int]
    alone_before_chat: float = 0.2  # share of deleted chats with one attachment deleted first
    vector_store_share: float = 0.6
    no_file_share: float = 0.05  # attachments never uploaded (no provider file)


async def seed(
    dsn: str,
    fake: FakeOpenAI,
    tenants: list[Tenant],
    plan: SeedPlan,
    rng: random.Random,
    *,
    prepare: Callable[[World], None] | None = None,
    interleave: Callable[[Any], Awaitable[int]] | None = None,
) -> World:
    """Rows in bulk, then deletes through the chat service's flows (``worker.producer``).

    ``prepare`` runs once the world is known and before anything is committed (inject faults).
    ``interleave`` enqueues messages of its own halfway through the flows, in the same
    transaction (they land amid the backlog); it returns how many (``extra_messages``).
    """
    world = World(tenants)
    now = datetime.now(UTC)
    chats: list[tuple[Any, ...]] = []
    atts: list[tuple[Any, ...]] = []
    stores: list[tuple[Any, ...]] = []
    users: dict[UUID, UUID] = {}

    def new_chat(tenant: Tenant, deleted: bool) -> UUID:
        chat, user = uuid.uuid4(), uuid.uuid4()
        users[chat] = user
        chats.append((chat, tenant.id, user, "gpt-4o", "reliability", now, now))
        (world.deleted_chats if deleted else world.live_chats)[chat] = tenant
        return chat

    def new_attachment(tenant: Tenant, chat: UUID) -> Att:
        att = Att(uuid.uuid4(), tenant, chat, None)
        if rng.random() >= plan.no_file_share:
            att.file_id = f"file-{uuid.uuid4().hex[:24]}"
            world.owner[att.file_id] = tenant
        atts.append(
            (
                att.id,
                tenant.id,
                chat,
                users[chat],
                f"f-{att.id.hex[:8]}.pdf",
                "application/pdf",
                1024,
                tenant.label,
                att.file_id,
                "ready" if att.file_id else "pending",
                "document",
                now,
            )
        )
        return att

    def new_store(tenant: Tenant, chat: UUID, files: list[str]) -> str:
        vs = f"vs_{uuid.uuid4().hex[:24]}"
        stores.append((uuid.uuid4(), tenant.id, chat, vs, tenant.label, now))
        world.owner[vs] = tenant
        fake.add_vector_store(vs, files)
        return vs

    to_delete: list[tuple[UUID, Tenant, Att | None]] = []
    for n in range(plan.chats):
        tenant = tenants[n % len(tenants)]
        chat = new_chat(tenant, deleted=True)
        chat_atts = [new_attachment(tenant, chat) for _ in range(rng.randint(*plan.files_per_chat))]
        for att in chat_atts:
            world.attachments[att.id] = att
        alone = None
        if chat_atts and rng.random() < plan.alone_before_chat:
            alone = chat_atts[0]
            alone.deleted_alone = True
        if rng.random() < plan.vector_store_share:
            vs = new_store(tenant, chat, [a.file_id for a in chat_atts if a.file_id])
            world.vector_stores[vs] = (chat, tenant)
        to_delete.append((chat, tenant, alone))
    singles: list[Att] = []
    for n in range(plan.live_chats):
        tenant = tenants[(n * 3 + 1) % len(tenants)]
        chat = new_chat(tenant, deleted=False)
        count = rng.randint(*plan.singles_per_live_chat)
        chat_atts = [new_attachment(tenant, chat) for _ in range(count + 1)]
        for att in chat_atts[:count]:
            att.deleted_alone = True
            world.attachments[att.id] = att
            singles.append(att)
        world.kept[chat_atts[-1].id] = chat_atts[-1]  # one stays: the chat is alive
        if rng.random() < 0.3:
            world.kept_vector_stores.add(new_store(tenant, chat, []))
    for att in [*world.attachments.values(), *world.kept.values()]:
        if att.file_id:
            fake.add_file(att.file_id)
    # The chat service's own flows, one transaction each, interleaved as users would delete.
    flows: list[Callable[[Any], Awaitable[Any]]] = []
    for chat, tenant, alone in to_delete:

        async def delete_chat(
            conn: Any, chat: UUID = chat, tenant: Tenant = tenant, alone: Att | None = alone
        ) -> None:
            if alone is not None:
                assert await producer.delete_attachment(
                    conn,
                    QUEUES,
                    tenant_id=tenant.id,
                    chat_id=chat,
                    attachment_id=alone.id,
                    user_id=users[chat],
                )
                world.messages += 1
            await producer.delete_chat(
                conn, QUEUES, tenant_id=tenant.id, chat_id=chat, user_id=users[chat]
            )
            world.messages += 1

        flows.append(delete_chat)
    for att in singles:

        async def delete_one(conn: Any, att: Att = att) -> None:
            assert await producer.delete_attachment(
                conn,
                QUEUES,
                tenant_id=att.tenant.id,
                chat_id=att.chat_id,
                attachment_id=att.id,
                user_id=users[att.chat_id],
            )
            world.messages += 1

        flows.append(delete_one)
    rng.shuffle(flows)
    if prepare is not None:
        prepare(world)
    # One outer transaction: the whole backlog appears at once (the flows' transactions
    # become savepoints inside it), so replicas started before compete for all of it.
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        conn.transaction(),
        conn.cursor() as cur,
    ):
        await cur.executemany(
            "INSERT INTO chats (id, tenant_id, user_id, model, title, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            chats,
        )
        await cur.executemany(
            "INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename,"
            " content_type, size_bytes, storage_backend, provider_file_id, status,"
            " attachment_kind, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            atts,
        )
        await cur.executemany(
            "INSERT INTO chat_vector_stores (id, tenant_id, chat_id, vector_store_id,"
            " provider, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
            stores,
        )
        for n, flow in enumerate(flows):
            if interleave is not None and n == len(flows) // 2:
                world.extra_messages += await interleave(conn)
            await flow(conn)
    return world


# -- provider faults -------------------------------------------------------------------------

TIMEOUT_DELAY_SECONDS = 2.8  # > the backends' 2 s timeout: the client gives up first


def inject(
    fake: FakeOpenAI,
    world: World,
    resource_id: str,
    kind: str,
    times: int | None,
    *,
    timeout_delay: float = TIMEOUT_DELAY_SECONDS,
) -> None:
    """Fault the first ``times`` requests for one provider id (None: every request)."""
    match kind:
        case "server_error":
            fault = Fault(status=rng_status(resource_id), times=times, path_contains=resource_id)
        case "reset":
            fault = Fault(reset=True, times=times, path_contains=resource_id)
        case "timeout":
            fault = Fault(delay_seconds=timeout_delay, times=times, path_contains=resource_id)
        case "rate_limited":
            # Retry-After at most the in-call wait cap (2 s): honoured inside the call.
            fault = Fault(
                status=429, headers={"Retry-After": "1"}, times=times, path_contains=resource_id
            )
        case "bad_request":
            fault = Fault(status=400, times=times, path_contains=resource_id)
        case _:
            raise ValueError(kind)
    fake.inject(fault)
    world.faults[resource_id] = (kind, times)


def rng_status(resource_id: str) -> int:
    return (500, 502, 503, 504)[sum(map(ord, resource_id)) % 4]


# -- the cluster -----------------------------------------------------------------------------


class Cluster:
    """A database, a fake provider and the replicas of one scenario run."""

    def __init__(
        self,
        server: PostgresServer,
        workdir: Path,
        name: str,
        *,
        seed: int = 1,
        revoked_tenant: bool = False,
        fake_latency: float = 0.0,
        config: Mapping[str, Any] | None = None,
    ):
        self.server = server
        self.workdir = workdir
        self.name = name
        self.rng = random.Random(seed)
        self.tenants = make_tenants(self.rng, revoked=revoked_tenant)
        self.secrets = Secrets.fresh(key_envs(self.tenants))
        accepted = [v for k, v in self.secrets.keys.items() if k != "RELIAB_KEY_REVOKED"]
        self.fake = FakeOpenAI(api_keys=accepted, latency_seconds=fake_latency)
        self.config_overrides = dict(config or {})
        self.db_name = f"rel_{name}_{uuid.uuid4().hex[:8]}"
        self.dsn = ""
        # What the workers connect with, when not ``dsn`` (the harness itself: always ``dsn``).
        self.worker_dsn: str | None = None
        # How the workers are started (a test-only wrapper may replace it) and extra env.
        self.replica_command: Sequence[str] = WORKER_COMMAND
        self.replica_env: dict[str, str] = {}
        self.replicas: list[Replica] = []
        self.config_path = workdir / f"{name}.yaml"
        self.logdir = workdir / f"{name}-logs"
        self.cli_outputs: list[str] = []  # every CLI run's output, for the secret scan

    async def __aenter__(self) -> Cluster:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.fake.start()
        self.dsn = await create_database(self.server, self.db_name, self.secrets.dsn_password)
        assert self.secrets.dsn_password in self.dsn
        config = worker_config(self.fake.url, self.tenants, self.config_overrides)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for replica in self.replicas:
            replica.reap()
        self.fake.stop()
        if not os.environ.get("RELIAB_KEEP_DB"):  # debugging: keep it (the server's life)
            drop_database(self.server, self.db_name)

    @property
    def env(self) -> dict[str, str]:
        return {"CLEANUP_WORKER_DSN": self.worker_dsn or self.dsn, **self.secrets.keys}

    def start_replica(self) -> Replica:
        replica = Replica(
            f"r{len(self.replicas)}",
            self.config_path,
            {**self.env, **self.replica_env},
            self.logdir,
            self.replica_command,
        )
        self.replicas.append(replica)
        return replica

    async def start_replicas(self, n: int) -> list[Replica]:
        started = [self.start_replica() for _ in range(n)]
        await asyncio.gather(*(r.wait_started() for r in started))
        return started

    @property
    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.running]

    async def stop_all(self, timeout: float = 30.0) -> dict[str, int | None]:  # noqa: ASYNC109
        """SIGTERM every running replica; their exit codes (None: did not exit in time)."""
        live = self.running
        for replica in live:
            replica.scrape()  # the final counters, before the HTTP server goes away
            replica.signal(signal.SIGTERM)
        codes = await asyncio.gather(*(r.wait(timeout) for r in live))
        return {r.name: c for r, c in zip(live, codes, strict=True)}

    def run_cli(
        self, *args: str, timeout: float = 60.0, env_changes: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "worker",
                "--config",
                str(self.config_path),
                "--log-format",
                "json",
                "--log-level",
                "debug",
                *args,
            ],
            env=_subprocess_env({**self.env, **(env_changes or {})}),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.cli_outputs.append(done.stdout + done.stderr)
        return done

    # -- database truth ------------------------------------------------------------------

    async def progress(self) -> int:
        """A number that grows with every acked batch or finished attachment."""
        return int(
            await scalar(
                self.dsn,
                "SELECT (SELECT coalesce(sum(processed_seq), 0) FROM modkit_outbox_processor)"
                " + (SELECT count(*) FROM attachments WHERE cleanup_status IN ('done', 'failed'))"
                " + (SELECT count(*) FROM rel_lease_audit WHERE kind = 'retry'"
                "    AND op = 'DELETE')",
            )
        )

    async def outstanding(self) -> dict[str, int]:
        """What is not finished yet: zero everywhere means drained."""
        row = (
            await rows(
                self.dsn,
                "SELECT (SELECT count(*) FROM modkit_outbox_incoming) AS incoming,"
                " (SELECT count(*) FROM modkit_outbox_outgoing o"
                "   JOIN modkit_outbox_processor pr ON pr.partition_id = o.partition_id"
                "   WHERE o.seq > pr.processed_seq) AS unacked,"
                " (SELECT count(*) FROM cleanup_worker_retries) AS parked,"
                " (SELECT count(*) FROM attachments WHERE cleanup_status = 'pending') AS pending",
            )
        )[0]
        return {k: int(v) for k, v in row.items()}

    async def wait_drained(
        self,
        timeout: float,  # noqa: ASYNC109
        *,
        on_tick: Callable[[dict[str, int]], Awaitable[None]] | None = None,
        every: float = 0.25,
    ) -> float:
        """Seconds until nothing is outstanding; AssertionError with the state on timeout.
        ``on_tick`` sees what is outstanding, so chaos can follow progress, not the clock;
        ``every`` is how often it looks (a fast machine drains a small backlog in a second)."""
        started = time.monotonic()
        deadline = started + timeout
        last: dict[str, int] = {}
        held: dict[int, tuple[str, int, float]] = {}  # partition -> holder, cursor, since
        while time.monotonic() < deadline:
            last = await self.outstanding()
            if not any(last.values()):
                return time.monotonic() - started
            if on_tick is not None:
                await on_tick(last)
            await self._check_not_wedged(held)
            await asyncio.sleep(every)
        tails = "\n".join(f"--- {r.name}\n{r.tail(10)}" for r in self.replicas[-4:])
        raise AssertionError(f"not drained after {timeout}s: {last}\n{tails}")

    async def _check_not_wedged(self, held: dict[int, tuple[str, int, float]]) -> None:
        """Fail fast when a partition stays leased by one live worker, its lease extended,
        with the cursor still, far longer than any batch can take (every message has a
        lease_seconds budget): the wedged lane of docs/RELIABILITY.md finding 1."""
        now = time.monotonic()
        for r in await rows(
            self.dsn,
            "SELECT p.queue, p.partition, pr.partition_id, pr.locked_by, pr.processed_seq"
            " FROM modkit_outbox_processor pr JOIN modkit_outbox_partitions p"
            " ON p.id = pr.partition_id WHERE pr.locked_until > now()",
        ):
            key = (r["locked_by"], r["processed_seq"])
            holder, cursor, since = held.get(r["partition_id"], (None, None, now))
            if (holder, cursor) != key:
                held[r["partition_id"]] = (*key, now)
            elif now - since > WEDGED_SECONDS:
                raise AssertionError(
                    f"{r['queue']}[{r['partition']}] wedged: leased by {holder} and kept"
                    f" alive for {now - since:.0f}s with the cursor at {cursor} (finding 1:"
                    " a heartbeat that swallowed its cancellation)"
                )

    async def live_leases(self) -> tuple[int, int]:
        p = await scalar(
            self.dsn, "SELECT count(*) FROM modkit_outbox_processor WHERE locked_by IS NOT NULL"
        )
        r = await scalar(
            self.dsn, "SELECT count(*) FROM cleanup_worker_retries WHERE locked_by IS NOT NULL"
        )
        return int(p), int(r)


async def wait_until(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float,  # noqa: ASYNC109
    what: str,
    every: float = 0.1,
) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")


@contextlib.asynccontextmanager
async def cluster(
    server: PostgresServer, workdir: Path, name: str, **kwargs: Any
) -> AsyncIterator[Cluster]:
    async with Cluster(server, workdir, name, **kwargs) as c:
        yield c


# -- verification ----------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a scenario proved; ``problems`` must be empty."""

    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def require(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def check(self) -> None:
        if self.problems:
            raise AssertionError("\n".join(self.problems[:40]))


def _requests_by_resource(fake: FakeOpenAI) -> dict[str, list[RecordedRequest]]:
    by: dict[str, list[RecordedRequest]] = defaultdict(list)
    for r in fake.requests():
        if r.resource_id is not None and r.method == "DELETE":
            by[r.resource_id].append(r)
    for reqs in by.values():
        reqs.sort(key=lambda r: r.at)
    return by


async def verify_nothing_lost(c: Cluster, world: World, v: Verdict) -> None:
    """SPEC §11 "loses nothing", from the database and the fake's state, never from the worker.

    * every attachment to clean is terminal (done, or failed only where failure was meant);
    * every vector-store row of a deleted chat is gone (unless its failure was meant);
    * every provider file / store of those chats is gone at the fake (same exception);
    * every message is past its cursor and no parked retry is left: each one was acked Ok or
      dead-lettered, and every dead letter says why;
    * nothing that was not to be deleted was touched (live attachments, their files).
    """
    status = {
        r["id"]: r
        for r in await rows(
            c.dsn,
            "SELECT id, cleanup_status, cleanup_attempts, last_cleanup_error FROM attachments",
        )
    }
    lost_rows = []
    unexpected_failed = []
    for att in world.attachments.values():
        s = status[att.id]["cleanup_status"]
        if s not in ("done", "failed"):
            lost_rows.append(att.id)
        elif s == "failed" and att.id not in world.expected_failed:
            unexpected_failed.append(att.id)
        elif s == "done" and att.id in world.expected_failed:
            v.problems.append(f"attachment {att.id} meant to fail ended done")
    touched = [a.id for a in world.kept.values() if status[a.id]["cleanup_status"] is not None]
    files_left = c.fake.files
    lost_files = [
        f for f, a in world.files.items() if f in files_left and a.id not in world.expected_failed
    ]
    kept_files_gone = [
        a.file_id for a in world.kept.values() if a.file_id and a.file_id not in files_left
    ]
    vs_rows = {
        r["vector_store_id"]
        for r in await rows(
            c.dsn,
            "SELECT v.vector_store_id FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id"
            " WHERE c.deleted_at IS NOT NULL",
        )
    }
    lost_store_rows = sorted(vs_rows - world.expected_kept_stores)
    stores_left = c.fake.vector_stores
    lost_stores = [
        s for s in world.vector_stores if s in stores_left and s not in world.expected_kept_stores
    ]
    kept_stores_gone = [s for s in world.kept_vector_stores if s not in stores_left]
    out = await c.outstanding()
    sums = (
        await rows(
            c.dsn,
            "SELECT (SELECT coalesce(sum(sequence), 0) FROM modkit_outbox_partitions) AS sequenced,"
            " (SELECT coalesce(sum(processed_seq), 0) FROM modkit_outbox_processor) AS processed,"
            " (SELECT count(*) FROM modkit_outbox_dead_letters) AS dead,"
            " (SELECT count(*) FROM modkit_outbox_dead_letters"
            "  WHERE coalesce(btrim(last_error), '') = '') AS dead_without_reason",
        )
    )[0]
    unaccounted = world.total_messages - int(sums["processed"]) + out["incoming"]
    lost_messages = out["incoming"] + out["unacked"] + out["parked"] + max(0, unaccounted)
    v.require(
        int(sums["sequenced"]) == world.total_messages,
        f"{sums['sequenced']} messages sequenced, {world.total_messages} enqueued",
    )
    v.require(
        sums["dead_without_reason"] == 0,
        f"{sums['dead_without_reason']} dead letters without a reason",
    )
    lost = (
        len(lost_rows) + len(lost_files) + len(lost_store_rows) + len(lost_stores) + lost_messages
    )
    v.figures.update(
        messages=world.total_messages,
        attachments=len(world.attachments),
        files=len(world.files),
        vector_stores=len(world.vector_stores),
        dead_letters=int(sums["dead"]),
        failed_rows=sum(1 for a in world.attachments if status[a]["cleanup_status"] == "failed"),
        lost=lost,
    )
    v.require(not lost_rows, f"{len(lost_rows)} attachments not terminal, e.g. {lost_rows[:3]}")
    v.require(
        not unexpected_failed,
        f"{len(unexpected_failed)} attachments failed unexpectedly,"
        f" e.g. {[status[i]['last_cleanup_error'] for i in unexpected_failed[:3]]}",
    )
    v.require(not lost_files, f"{len(lost_files)} provider files leaked, e.g. {lost_files[:3]}")
    v.require(
        not lost_store_rows, f"{len(lost_store_rows)} vector-store rows left: {lost_store_rows[:3]}"
    )
    v.require(not lost_stores, f"{len(lost_stores)} vector stores leaked: {lost_stores[:3]}")
    v.require(lost_messages == 0, f"messages not finished: {out}, unaccounted {unaccounted}")
    v.require(not touched, f"{len(touched)} attachments of live chats were taken into cleanup")
    v.require(not kept_files_gone, f"{len(kept_files_gone)} files of live attachments deleted")
    v.require(not kept_stores_gone, f"{len(kept_stores_gone)} vector stores of live chats deleted")


def count_repeats(c: Cluster, world: World) -> dict[str, int]:
    """DELETE requests per provider resource: the first un-faulted one is the delete; any later
    un-faulted one is a repeat (it can only answer 404). Requests an injected fault answered
    are the fault's, not repeats: the first ``times`` requests of a resource (arrival order)."""
    by = _requests_by_resource(c.fake)
    repeats = 0
    repeated_resources = 0
    requests = 0
    for resource, reqs in by.items():
        requests += len(reqs)
        _, times = world.faults.get(resource, ("", 0))
        hit = len(reqs) if times is None else min(times, len(reqs))
        clean = len(reqs) - hit
        if clean > 1:
            repeats += clean - 1
            repeated_resources += 1
    return {
        "delete_requests": requests,
        "repeat_deletes": repeats,
        "repeated_resources": repeated_resources,
    }


def verify_routing(c: Cluster, world: World, v: Verdict) -> None:
    """Every request for a resource carries its owning tenant's key and path prefix; and every
    request at all goes to the endpoint that belongs to the key it carries (a crafted id such
    as ``../../other-tenant/v1/files/x`` must not move a request to another tenant's route)."""
    wrong: list[str] = []
    key_of = c.secrets.keys
    routes_of_key: dict[str | None, set[tuple[str, str]]] = defaultdict(set)
    for t in world.tenants:
        routes_of_key[key_of[t.key_env]].add(
            (t.prefix, "/openai/" if t.label == "azure" else "/v1/")
        )
    for r in c.fake.requests():
        if r.resource_id is None:
            continue
        tenant = world.owner.get(r.resource_id)
        if tenant is not None and (
            r.api_key != key_of[tenant.key_env] or not tenant.path_ok(r.path)
        ):
            own = r.api_key == key_of[tenant.key_env]
            wrong.append(f"{tenant.name}: {r.method} {r.path} key={'own' if own else 'OTHER'}")
        routes = routes_of_key.get(r.api_key, set())
        if not any(r.path.startswith(prefix + api) for prefix, api in routes):
            wrong.append(f"{r.method} {r.path}: not a route of the key it carries")
    v.figures["misrouted_requests"] = len(wrong)
    v.require(not wrong, f"{len(wrong)} requests with another tenant's route or key: {wrong[:3]}")


def verify_no_secrets(c: Cluster, v: Verdict, extra_texts: Mapping[str, str] | None = None) -> None:
    """No secret (raw, URL-encoded or its core) in any output: every replica's stdout and
    stderr (JSON, debug level), its last /metrics, CLI runs, and whatever else is given."""
    texts: dict[str, str] = dict(extra_texts or {})
    for r in c.replicas:
        texts[f"{r.name}.stderr"] = r.stderr_text()
        texts[f"{r.name}.stdout"] = r.stdout_text()
        texts[f"{r.name}/metrics"] = r.last_metrics
    for n, out in enumerate(c.cli_outputs):
        texts[f"cli#{n}"] = out
    leaked = {name: c.secrets.leaks(text) for name, text in texts.items()}
    leaked = {k: vals for k, vals in leaked.items() if vals}
    v.figures["secret_leaks"] = sum(len(x) for x in leaked.values())
    v.figures["log_lines_scanned"] = sum(t.count("\n") for t in texts.values())
    v.require(not leaked, f"secrets leaked into {sorted(leaked)}")


async def database_texts(c: Cluster) -> dict[str, str]:
    """Operator-visible text the worker wrote into the database (reasons, errors)."""
    dead = await rows(c.dsn, "SELECT last_error FROM modkit_outbox_dead_letters")
    errors = await rows(
        c.dsn, "SELECT last_cleanup_error FROM attachments WHERE last_cleanup_error IS NOT NULL"
    )
    return {
        "dead_letters.last_error": "\n".join(str(r["last_error"]) for r in dead),
        "attachments.last_cleanup_error": "\n".join(str(r["last_cleanup_error"]) for r in errors),
    }


def verify_clean_logs(c: Cluster, v: Verdict, *, allow_crash: bool = False) -> None:
    """Every stderr line is one JSON object; no loop crashed; no traceback of a bug."""
    not_json = 0
    crashed = []
    for r in c.replicas:
        for e in r.events():
            if e.get("event") in ("<not json>", "<not an object>"):
                not_json += 1
            if e.get("event") in ("loop_crashed", "handler_crashed"):
                crashed.append(f"{r.name}: {e.get('event')} {str(e.get('exception', ''))[-300:]}")
    v.figures["non_json_log_lines"] = not_json
    v.require(not_json == 0, f"{not_json} log lines are not JSON objects")
    if not allow_crash:
        v.require(not crashed, f"crashes: {crashed[:3]}")


# -- lease exclusivity -----------------------------------------------------------------------


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class _Timeline:
    """The lease state of one object (a partition, or one parked message) over time."""

    at: list[float] = field(default_factory=list)
    holder: list[str | None] = field(default_factory=list)
    until: list[float] = field(default_factory=list)

    def state(self, t: float) -> tuple[str | None, float]:
        i = bisect_right(self.at, t) - 1
        if i < 0:
            return None, 0.0
        return self.holder[i], self.until[i]

    def judge(self, worker: str, t: float) -> str:
        """``held`` (worker holds it, unexpired, at t), ``expired`` (its own lease ran out,
        nobody took it), ``taken_over`` (another worker took it from this one since this one
        last held it), or ``not_held`` (never held, or released by the worker itself)."""
        i = bisect_right(self.at, t) - 1
        if i < 0:
            return "not_held"
        if self.holder[i] == worker:
            return "held" if self.until[i] >= t else "expired"
        j = i
        while j >= 0 and self.holder[j] != worker:
            j -= 1
        if j < 0:
            return "not_held"
        # Row j+1 ended this worker's hold: another holder = a takeover; None = its own release.
        return "taken_over" if self.holder[j + 1] is not None else "not_held"


async def check_leases(
    c: Cluster, v: Verdict, *, expect_takeovers: bool = False, expect_stale_handling: bool = False
) -> dict[str, int]:
    """No partition (and no parked message) is ever held by two workers at once.

    1. From the audit (database side): every change of holder takes a lease that was free
       or expired at that instant; taking over a live lease would be a violation.
    2. From the workers' own logs: every ``message_handled`` line of worker W for message
       (partition, seq) at time t lies where the audit says W held that partition's lease, or
       the parked message's row lease, unexpired, at t. Handling starts after the lease is
       taken (committed before the batch is read) and ends before the ack releases it, so a
       line outside W's lease means W handled a message while it did not own it. Lines a
       worker wrote after its lease was taken over are counted as ``stale_handling`` (only
       expected when a process was frozen past its lease, scenario 8); their acks must fail.
    """
    audit = await rows(c.dsn, "SELECT * FROM rel_lease_audit ORDER BY id")
    parts = {
        (r["queue"], int(r["partition"])): int(r["id"])
        for r in await rows(c.dsn, "SELECT id, queue, partition FROM modkit_outbox_partitions")
    }
    timelines: dict[tuple[Any, ...], _Timeline] = defaultdict(_Timeline)
    takeovers = 0
    live_takeovers: list[str] = []
    acquisitions = 0
    for a in audit:
        key = (
            ("partition", a["partition_id"])
            if a["kind"] == "partition"
            else ("retry", a["partition_id"], a["seq"])
        )
        at = a["at"].timestamp()
        if a["new_by"] is not None and a["new_by"] != a["old_by"]:
            acquisitions += 1
            if a["old_by"] is not None:
                takeovers += 1
                if a["old_until"] is not None and a["old_until"].timestamp() >= at:
                    live_takeovers.append(f"{key} from {a['old_by']} to {a['new_by']}")
        timeline = timelines[key]
        timeline.at.append(at)
        timeline.holder.append(a["new_by"] if a["op"] != "DELETE" else None)
        until = a["new_until"].timestamp() if a["new_until"] is not None else 0.0
        timeline.until.append(until)
    handled = 0
    outside: list[str] = []
    stale = 0
    expired_own = 0
    first_deliveries: Counter[tuple[int, int]] = Counter()
    for r in c.replicas:
        if r.worker_id is None:
            continue
        for e in r.events():
            if e.get("event") != "message_handled" or "seq" not in e:
                continue
            handled += 1
            t = _ts(e["timestamp"])
            pid = parts[(e["queue"], int(e["partition"]))]
            seq = int(e["seq"])
            verdicts = [
                timelines[k].judge(r.worker_id, t)
                for k in (("partition", pid), ("retry", pid, seq))
                if k in timelines
            ]
            if "held" in verdicts:
                pass
            elif "expired" in verdicts:
                expired_own += 1  # its own lease had run out; nobody else held it
            elif "taken_over" in verdicts:
                stale += 1  # lost to a takeover: this worker's ack must fail
            else:
                outside.append(f"{r.name} {e['queue']}[{e['partition']}]#{seq} at {e['timestamp']}")
            # A batch redelivered after a lease that ended without an ack keeps delivery 1
            # (lease churn is not a delivery) and says so: not a first delivery handled twice.
            if int(e.get("delivery", 1)) == 1 and not e.get("redelivered"):
                first_deliveries[(pid, seq)] += 1
    twice = sum(1 for n in first_deliveries.values() if n > 1)
    figures = {
        "lease_acquisitions": acquisitions,
        "lease_takeovers_after_expiry": takeovers,
        "handled_lines_checked": handled,
        "stale_handling": stale,
        "handled_after_own_lease_expired": expired_own,
        "first_deliveries_handled_twice": twice,
    }
    v.figures.update(figures)
    v.require(not live_takeovers, f"live leases taken over: {live_takeovers[:3]}")
    v.require(not outside, f"{len(outside)} messages handled without a lease: {outside[:3]}")
    v.require(handled > 0, "no message_handled lines to check")
    if not expect_stale_handling:
        v.require(stale == 0, f"{stale} messages handled while another worker held the lease")
    if not expect_takeovers:
        v.require(takeovers == 0, f"{takeovers} leases taken over after expiry")
        v.require(twice == 0, f"{twice} messages delivered for the first time twice")
    return figures


# -- metrics ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def metric_sum(texts: Iterable[str], name: str, **labels: str) -> float:
    total = 0.0
    for text in texts:
        for n, ls, value in parse_metrics(text):
            if n == name and all(ls.get(k) == val for k, val in labels.items()):
                total += value
    return total


# -- small helpers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    return f"{os.cpu_count()} CPU ({cpu}){mem}, Python {sys.version.split()[0]}, {sys.platform}"
