"""What a benchmark runs against: one PostgreSQL server for the whole run, a fresh database per
scenario, the local provider as its own process, and worker processes.

Everything is local (unix socket, loopback HTTP). Worker processes get a YAML config written
here; the real product runs as ``python -m worker run``, the other modes as
``python -m bench.worker_proc``. Every process started here is stopped by its pid on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
import yaml

from cwlab.postgres import PostgresServer, start_postgres
from worker.config import Config
from worker.runtime.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
API_KEY_ENV = "BENCH_OPENAI_API_KEY"
API_KEY = "sk-bench"
ATTACHMENT_QUEUE = "mini-chat.attachment_cleanup"
CHAT_QUEUE = "mini-chat.chat_cleanup"
PARTITIONS = 4  # the default of both the original and this worker
TEMPLATE = "bench_template"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 40.0

WorkerMode = Literal["real", "noop", "original", "sql", "pgqueuer"]


@dataclass(frozen=True)
class WorkerSettings:
    """The knobs a benchmark turns; everything else is the product's default."""

    concurrency: int = 32
    batch_size: int = 100
    pool_max_size: int = 10
    provider_max_concurrency: int = 16
    provider_max_rps: float = 50.0
    file_concurrency: int = 8
    log_level: str = "info"
    fair_queue_seconds: float | None = None  # None: the product's default

    def config(self, *, dsn: str, provider_url: str, http_port: int) -> dict[str, Any]:
        config = self._config(dsn=dsn, provider_url=provider_url, http_port=http_port)
        if self.fair_queue_seconds is not None:
            config["providers"]["fair_queue_seconds"] = self.fair_queue_seconds
        return config

    def _config(self, *, dsn: str, provider_url: str, http_port: int) -> dict[str, Any]:
        return {
            "database": {"dsn": dsn, "pool_min_size": 2, "pool_max_size": self.pool_max_size},
            "outbox": {"concurrency": self.concurrency, "batch_size": self.batch_size},
            "cleanup": {"file_concurrency": self.file_concurrency},
            "providers": {
                "backends": {
                    "openai": {
                        "kind": "openai",
                        "base_url": f"{provider_url}/v1",
                        "api_key_env": API_KEY_ENV,
                        "max_concurrency": self.provider_max_concurrency,
                        "max_rps": self.provider_max_rps,
                    }
                }
            },
            "observability": {
                "http_host": "127.0.0.1",
                "http_port": http_port,
                "log_format": "json",
                "log_level": self.log_level,
            },
        }


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    http_port: int | None
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Fake:
    """The local OpenAI-compatible server, as its own process (its CPU is measured apart)."""

    process: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def summary(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_fake/summary", timeout=30) as answer:
            result: dict[str, Any] = json.load(answer)
        return result


@dataclass
class BenchEnv:
    """One PostgreSQL server and a scratch directory for the whole run."""

    server: PostgresServer
    workdir: Path
    _children: list[subprocess.Popen[Any]] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls) -> AsyncIterator[BenchEnv]:
        with (
            start_postgres() as server,
            tempfile.TemporaryDirectory(prefix="cw-bench-") as tmp,
        ):
            env = cls(server, Path(tmp))
            try:
                await env._create_template()
                yield env
            finally:
                env.stop_all()

    # -- databases -------------------------------------------------------------------------

    def _admin(self, *statements: str) -> None:
        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    async def _create_template(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{TEMPLATE}"', f'CREATE DATABASE "{TEMPLATE}"')
        await _migrate(self.server.dsn(TEMPLATE))

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """A fresh migrated database (worker schema, chat-service tables, both queues)."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        await asyncio.to_thread(self._admin, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        try:
            yield self.server.dsn(name)
        finally:
            await asyncio.to_thread(self._admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- processes -------------------------------------------------------------------------

    def start_fake(
        self, *, latency_seconds: float = 0.0, rate_limit_rps: float | None = None
    ) -> Fake:
        fake = launch_fake(latency_seconds=latency_seconds, rate_limit_rps=rate_limit_rps)
        self._children.append(fake.process)
        return fake

    def start_worker(
        self,
        mode: WorkerMode,
        settings: WorkerSettings,
        *,
        dsn: str,
        provider_url: str = "http://127.0.0.1:9",
        extra_args: tuple[str, ...] = (),
    ) -> Worker:
        """A worker process: ``real`` is ``python -m worker run``; the others bench modes."""
        port = free_port() if mode in ("real", "noop") else None
        config = settings.config(dsn=dsn, provider_url=provider_url, http_port=port or 0)
        name = f"worker-{uuid.uuid4().hex[:8]}"
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log_path = self.workdir / f"{name}.log"
        if mode == "real":
            args = [sys.executable, "-m", "worker", "--config", str(config_path), "run"]
        else:
            args = [sys.executable, "-m", "bench.worker_proc", mode, str(config_path),
                    *extra_args]  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
        environ[API_KEY_ENV] = API_KEY
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=ROOT
            )
        self._children.append(process)
        return Worker(process, port, log_path)

    async def wait_ready(self, worker: Worker) -> None:
        """Until the worker answers /readyz (real, noop) or has connected (the others)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited early: {tail(worker.log_path)}")
            if await asyncio.to_thread(_is_ready, worker):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"worker not ready after {READY_TIMEOUT_SECONDS:g}s")

    def stop(self, process: subprocess.Popen[Any]) -> None:
        """SIGTERM, then SIGKILL after a grace period; by pid, only our own children."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ValueError):
            self._children.remove(process)

    def stop_all(self) -> None:
        for process in list(self._children):
            self.stop(process)


def launch_fake(*, latency_seconds: float = 0.0, rate_limit_rps: float | None = None) -> Fake:
    """The local provider as its own process (any id exists until deleted); the caller stops it."""
    args = [sys.executable, "-m", "cwlab.fake_openai", "--implicit-ids",
            "--latency", str(latency_seconds)]  # fmt: skip
    if rate_limit_rps is not None:
        args += ["--rate-limit-rps", str(rate_limit_rps)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        process.wait()
        raise RuntimeError(f"fake provider did not start (printed {url!r})")
    return Fake(process, url)


def _is_ready(worker: Worker) -> bool:
    if worker.http_port is None:
        return b"ready" in worker.log_path.read_bytes()
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.http_port}/readyz", timeout=2
        ) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


async def _migrate(dsn: str) -> None:
    config = Config()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(
            conn,
            queues=[config.outbox.attachment_queue, config.outbox.chat_queue],
            with_app_schema=True,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])
