"""Running `cleanup-worker` the two ways an operator does: in-process through click, and as a
real ``python -m worker`` subprocess; plus config files, seeding and database truth.

Everything here talks to the real PostgreSQL of the test session and to a real ``FakeOpenAI``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import yaml
from click.testing import CliRunner
from dsn import rows, scalar
from factories import Attachment, Chat, create_attachment, create_chat, create_vector_store

from cwlab.fake_openai import FakeOpenAI
from worker import producer
from worker.cli import main
from worker.db.pool import connection_kwargs
from worker.outbox.enqueue import enqueue

REPO = Path(__file__).resolve().parents[2]
AQ = "mini-chat.attachment_cleanup"
CQ = "mini-chat.chat_cleanup"
QUEUES = producer.Queues(AQ, 4, CQ, 4)

KEY_ENV = "CW_TEST_OPENAI_KEY"
API_KEY = "sk-test-SECRET-KEY-123"
DSN_PASSWORD = "s3cr3t-DSN-pw"
SECRETS = (API_KEY, DSN_PASSWORD)
# A socket directory that does not exist: libpq fails at once (no TCP timeout to wait out).
UNREACHABLE_DSN = "postgresql://nobody@/cw?host=/nonexistent/cleanup-worker-sock&port=5432"
MAX_ATTEMPTS = 3


def make_config(
    fake: FakeOpenAI | None, *, extra: Mapping[str, Any] | None = None, **outbox: Any
) -> dict[str, Any]:
    """A fast configuration: short polls and leases, small retry backoff, one OpenAI backend."""
    config: dict[str, Any] = {
        "database": {"pool_min_size": 1, "pool_max_size": 12},
        "outbox": {
            "batch_size": 50,
            "lease_seconds": 5,
            "concurrency": 32,
            "poll_interval_seconds": 0.1,
            "vacuum_interval_seconds": 2,
            "shutdown_grace_seconds": 2,
            "retry": {"base_seconds": 0.2, "max_seconds": 1, "max_deliveries": 6},
            **outbox,
        },
        "cleanup": {"max_attempts": MAX_ATTEMPTS, "file_concurrency": 8},
        "providers": {
            # A fault on one file must not open the breaker for every other file.
            "circuit_breaker": {"failure_threshold": 1000, "cooldown_seconds": 1},
            "backends": {
                "openai": {
                    "kind": "openai",
                    "base_url": fake.openai_base_url if fake else "http://127.0.0.1:9/v1",
                    "api_key_env": KEY_ENV,
                    "timeout_seconds": 2,
                    "max_concurrency": 32,
                    "max_rps": 10000,
                }
            },
        },
        "observability": {
            "http_host": "127.0.0.1",
            "http_port": 0,
            "log_format": "json",
            "log_level": "info",
            "backlog_refresh_seconds": 1,
        },
    }
    for dotted, value in (extra or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def base_env(dsn: str | None, **extra: str | None) -> dict[str, str | None]:
    """Environment changes for a CLI run: our DSN and key; the caller's CLEANUP_WORKER_* unset.

    Values of None unset a variable (CliRunner semantics; ``subprocess_env`` honours it too).
    """
    env: dict[str, str | None] = {
        name: None
        for name in os.environ
        if name.startswith("CLEANUP_WORKER__")
        or name in ("CLEANUP_WORKER_CONFIG", "CLEANUP_WORKER_DSN")
    }
    env[KEY_ENV] = API_KEY
    env["CLEANUP_WORKER_DSN"] = dsn
    env.update(extra)
    return env


def subprocess_env(changes: Mapping[str, str | None]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


INVOKE_SECONDS = 100.0  # below the suite's per-test timeout, so the stack is shown


def invoke(args: list[str], env: Mapping[str, str | None]) -> Result:
    """`cleanup-worker ARGS` in this process through click (``worker.cli.main``).

    Runs in its own thread: the command calls ``asyncio.run``, which must not replace the test's
    own event loop. A run that does not finish fails with the stack of where it is stuck.
    """
    outcome: list[Result | BaseException] = []

    def go() -> None:
        runner = CliRunner()
        try:
            with runner.isolation(env=dict(env)) as (out, err, _mixed):
                try:
                    main(args)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                else:  # main always exits
                    raise AssertionError("worker.cli.main returned without SystemExit")
                sys.stdout.flush()
                sys.stderr.flush()
                outcome.append(Result(code, out.getvalue().decode(), err.getvalue().decode()))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=go, name=f"cli {' '.join(args)[:60]}", daemon=True)
    thread.start()
    thread.join(INVOKE_SECONDS)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame else "?"
        raise AssertionError(
            f"cleanup-worker {args} still running after {INVOKE_SECONDS}s:\n{stack}"
        )
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


async def ainvoke(args: list[str], env: Mapping[str, str | None]) -> Result:
    return await asyncio.to_thread(invoke, args, env)


def run_subprocess(
    args: list[str], env: Mapping[str, str | None], *, timeout: float = 90
) -> Result:
    """`python -m worker ARGS` as a real process."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


async def arun_subprocess(
    args: list[str], env: Mapping[str, str | None], *, within: float = 90
) -> Result:
    return await asyncio.to_thread(run_subprocess, args, env, timeout=within)


def assert_one_line_error(result: Result, *needles: str, code: int = 2) -> str:
    """A user mistake: the documented exit code and one clear line on stderr, no traceback."""
    assert result.code == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    assert "Traceback" not in result.stderr, result
    for needle in needles:
        assert needle in lines[0], result
    return lines[0]


def assert_secret_free(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret[:6]}... leaked in:\n{text[-3000:]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, cut mid-answer
        return 0, f"{type(exc).__name__}: {exc}"


async def ahttp_get(port: int, path: str, *, within: float = 5.0) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, port, path, timeout=within)


async def wait_for(
    check: Callable[[], Awaitable[Any]], *, within: float, what: str, every: float = 0.1
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(every)


# -- seeding through the chat service's flows --------------------------------------------------


@dataclass
class World:
    """What a test seeded: chats deleted whole, attachments deleted one by one."""

    deleted_chats: list[Chat]
    chat_attachments: list[Attachment]
    single_attachments: list[Attachment]
    vector_stores: list[str]

    @property
    def files(self) -> list[str]:
        return [
            a.provider_file_id
            for a in (*self.chat_attachments, *self.single_attachments)
            if a.provider_file_id
        ]


async def seed(
    dsn: str,
    fake: FakeOpenAI,
    *,
    chats: int = 1,
    files_per_chat: int = 2,
    singles: int = 2,
    tenants: int = 2,
    with_vector_store: bool = True,
    missing_at_provider: int = 0,
) -> World:
    """Chats deleted whole (with files and a vector store) and single attachments deleted from
    an active chat, each through the producer flow; the resources exist at ``fake``."""
    world = World([], [], [], [])
    tenant_ids = [uuid.uuid4() for _ in range(tenants)]
    async with await psycopg.AsyncConnection.connect(dsn, **connection_kwargs()) as conn:
        for i in range(chats):
            tenant = tenant_ids[i % tenants]
            chat = await create_chat(conn, tenant)
            files = []
            for _ in range(files_per_chat):
                att = await create_attachment(conn, chat.id, tenant)
                world.chat_attachments.append(att)
                files.append(att.provider_file_id)
                fake.add_file(att.provider_file_id)
            if with_vector_store:
                store = await create_vector_store(conn, chat.id, tenant)
                fake.add_vector_store(store.vector_store_id, files)
                world.vector_stores.append(store.vector_store_id)
            await producer.delete_chat(
                conn, QUEUES, tenant_id=tenant, chat_id=chat.id, user_id=chat.user_id
            )
            world.deleted_chats.append(chat)
        if singles:
            tenant = tenant_ids[0]
            active = await create_chat(conn, tenant)
            for n in range(singles):
                att = await create_attachment(conn, active.id, tenant)
                if n >= missing_at_provider:
                    fake.add_file(att.provider_file_id)
                await producer.delete_attachment(
                    conn,
                    QUEUES,
                    tenant_id=tenant,
                    chat_id=active.id,
                    attachment_id=att.id,
                    user_id=active.user_id,
                )
                world.single_attachments.append(att)
    return world


async def delete_single(
    dsn: str, fake: FakeOpenAI | None, n: int, tenant: UUID | None = None
) -> list[Attachment]:
    """``n`` attachments of one active chat, each deleted alone (one message each)."""
    tenant = tenant or uuid.uuid4()
    made = []
    async with await psycopg.AsyncConnection.connect(dsn, **connection_kwargs()) as conn:
        chat = await create_chat(conn, tenant)
        for _ in range(n):
            att = await create_attachment(conn, chat.id, tenant)
            if fake is not None:
                fake.add_file(att.provider_file_id)
            made.append(att)
        for att in made:
            await producer.delete_attachment(
                conn, QUEUES, tenant_id=tenant, chat_id=chat.id, attachment_id=att.id,
                user_id=chat.user_id,
            )  # fmt: skip
    return made


async def enqueue_raw(dsn: str, queue: str, payload: bytes, partition: int = 0) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, **connection_kwargs()) as conn:
        await enqueue(conn, queue, partition, payload)


# -- database truth ------------------------------------------------------------------------------


async def truth(dsn: str) -> dict[str, Any]:
    """The numbers a drain summary must agree with."""
    statuses = await rows(
        dsn,
        "SELECT coalesce(cleanup_status, 'none') AS s, count(*) AS n FROM attachments"
        " WHERE deleted_at IS NOT NULL OR cleanup_status IS NOT NULL GROUP BY 1",
    )
    dead = await rows(
        dsn,
        "SELECT p.queue, d.status, count(*) AS n FROM modkit_outbox_dead_letters d"
        " JOIN modkit_outbox_partitions p ON p.id = d.partition_id GROUP BY 1, 2",
    )
    retries = await rows(
        dsn,
        "SELECT p.queue, count(*) AS n FROM cleanup_worker_retries r"
        " JOIN modkit_outbox_partitions p ON p.id = r.partition_id GROUP BY 1",
    )
    return {
        "attachments": {r["s"]: r["n"] for r in statuses},
        "dead_letters": {(r["queue"], r["status"]): r["n"] for r in dead},
        "retries": {r["queue"]: r["n"] for r in retries},
        "unprocessed": await unprocessed(dsn),
        "vector_store_rows": await scalar(
            dsn,
            "SELECT count(*) FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id"
            " WHERE c.deleted_at IS NOT NULL",
        ),
    }


async def unprocessed(dsn: str) -> int:
    """Messages not past a cursor: incoming plus outgoing after processed_seq."""
    return int(
        await scalar(
            dsn,
            "SELECT (SELECT count(*) FROM modkit_outbox_incoming)"
            " + (SELECT count(*) FROM modkit_outbox_outgoing o"
            "    JOIN modkit_outbox_processor pr ON pr.partition_id = o.partition_id"
            "    WHERE o.seq > pr.processed_seq)",
        )
    )


async def cursors_at_end(dsn: str) -> bool:
    return bool(
        await scalar(
            dsn,
            "SELECT bool_and(pr.processed_seq = p.sequence) FROM modkit_outbox_processor pr"
            " JOIN modkit_outbox_partitions p ON p.id = pr.partition_id",
        )
    ) and not await scalar(dsn, "SELECT count(*) FROM modkit_outbox_incoming")


class DaemonProcess:
    """`python -m worker ... run` with its output in a file (a pipe could fill up and block it)."""

    def __init__(self, args: list[str], env: Mapping[str, str | None], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *args, "run"],
            env=subprocess_env(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait(self, within: float) -> int:
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {within}s:\n{self.tail()}"
            ) from None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"event": "<not json>", "line": line})
        return found

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
