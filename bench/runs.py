"""One measured run: start the provider and the workers, seed a backlog, watch it drain.

Order matters for fairness: every process is started and ready (imports done, pool open)
before the backlog is committed in one transaction, and the rate is taken from the steady
part of the drain, so start-up never counts for any side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.probes import Database, ProcessGroups, Window, postgres_pids, watch_drain
from bench.sandbox import BenchEnv, Fake, Worker, WorkerMode, WorkerSettings, tail

Seed = Callable[[Database], Awaitable[None]]
Counter = Callable[[Database], Awaitable[int]]


async def acked(db: Database) -> int:
    """Messages acked so far (the cursor sum; every scenario database starts at 0)."""
    return await db.scalar("processed_total")


async def attachments_done(db: Database) -> int:
    """Attachment cleanups finished, one by one (acks move in whole batches: too coarse for
    the slow, latency-bound runs)."""
    return await db.scalar("attachments_done")


async def chats_done(db: Database) -> int:
    return await db.scalar("chats_done")


@dataclass(frozen=True)
class Provider:
    """The local provider's behaviour for a run (None: no provider process at all)."""

    latency_seconds: float = 0.0
    rate_limit_rps: float | None = None


@dataclass(frozen=True)
class Plan:
    mode: WorkerMode
    seed: Seed
    total: int  # messages the drain is complete at
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    replicas: int = 1
    provider: Provider | None = None
    extra_args: tuple[str, ...] = ()
    # Called with the fresh database's DSN before any process starts (e.g. a schema install).
    prepare: Callable[[str], Awaitable[None]] | None = None
    # How progress is read: messages done since the seed.
    counter: Counter = acked
    timeout_seconds: float = 600.0


@dataclass
class RunResult:
    window: Window
    outcome: dict[str, int] = field(default_factory=dict)
    provider_summary: dict[str, Any] = field(default_factory=dict)
    peak_rss_bytes: list[int] = field(default_factory=list)

    @property
    def statuses(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.provider_summary.get("statuses", {}).items()}

    @property
    def share_429(self) -> float:
        total = sum(self.statuses.values())
        return self.statuses.get("429", 0) / total if total else 0.0

    def state(self) -> str:
        """ "clean", or "PROBLEM ..." when the run did not do the real work cleanly."""
        bad = {k: v for k, v in self.outcome.items() if k != "done" and v}
        return "PROBLEM " + ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else "clean"


@asynccontextmanager
async def _processes(
    env: BenchEnv, plan: Plan, dsn: str
) -> AsyncIterator[tuple[Fake | None, list[Worker]]]:
    """The plan's provider and worker replicas, started and ready; stopped on exit."""
    if plan.prepare is not None:
        await plan.prepare(dsn)
    fake = _start_fake(env, plan.provider)
    workers = [
        env.start_worker(plan.mode, plan.settings, dsn=dsn,
                         provider_url=fake.url if fake else "http://127.0.0.1:9",
                         extra_args=plan.extra_args)
        for _ in range(plan.replicas)
    ]  # fmt: skip
    try:
        await asyncio.gather(*(env.wait_ready(w) for w in workers))
        yield fake, workers
    finally:
        for worker in workers:
            await asyncio.to_thread(env.stop, worker.process)
        if fake is not None:
            await asyncio.to_thread(env.stop, fake.process)


async def drain(env: BenchEnv, plan: Plan) -> RunResult:
    async with env.database() as dsn, _processes(env, plan, dsn) as (fake, workers):
        db = await Database.connect(dsn)
        try:
            groups = ProcessGroups({
                "worker": lambda: [w.pid for w in workers],
                "postgres": postgres_pids(dsn),
                "provider": lambda: [fake.pid] if fake else [],
            })  # fmt: skip
            await plan.seed(db)

            async def done() -> int:
                return await plan.counter(db)

            window = await watch_drain(
                done,
                plan.total,
                groups,
                timeout_seconds=plan.timeout_seconds,
                alive=lambda: _dead(workers),
            )
            result = RunResult(window, peak_rss_bytes=[groups.peak_rss(w.pid) for w in workers])
            if plan.mode in ("real", "original"):
                result.outcome = await db.row("outcome_totals")
        finally:
            await db.close()
        if fake is not None:
            result.provider_summary = await asyncio.to_thread(fake.summary)
        return result


async def steady_rate(
    env: BenchEnv, plan: Plan, *, warmup_seconds: float, seconds: float
) -> RunResult:
    """Like ``drain`` but over a fixed time on a backlog that outlasts it (rate-limited runs)."""
    async with env.database() as dsn, _processes(env, plan, dsn) as (fake, _workers):
        db = await Database.connect(dsn)
        try:
            await plan.seed(db)
            while await plan.counter(db) == 0:  # noqa: ASYNC110 (polls the database)
                await asyncio.sleep(0.05)
            await asyncio.sleep(warmup_seconds)
            start, t0 = await plan.counter(db), time.monotonic()
            before = await asyncio.to_thread(fake.summary) if fake else {}
            await asyncio.sleep(seconds)
            end, t1 = await plan.counter(db), time.monotonic()
            after = await asyncio.to_thread(fake.summary) if fake else {}
        finally:
            await db.close()
        window = Window(messages=end - start, seconds=t1 - t0, total_seconds=t1 - t0)
        return RunResult(window, provider_summary=_summary_delta(before, after))


def _dead(workers: list[Worker]) -> str | None:
    for worker in workers:
        if worker.process.poll() is not None:
            return f"worker exited ({worker.process.returncode}): {tail(worker.log_path)}"
    return None


def _start_fake(env: BenchEnv, provider: Provider | None) -> Fake | None:
    if provider is None:
        return None
    return env.start_fake(
        latency_seconds=provider.latency_seconds, rate_limit_rps=provider.rate_limit_rps
    )


def _summary_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Requests and statuses the provider saw between two summaries."""
    old = before.get("statuses", {})
    new = after.get("statuses", {})
    return {"statuses": {k: int(v) - int(old.get(k, 0)) for k, v in new.items()}}
