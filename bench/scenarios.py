"""The benchmarks B1..B7 of the performance issue (and FAIR, bench/fairness.py; TABLES,
bench/tables.py; COST, the cost figures of issue 16); each returns its measurements.

Every comparison (ours vs PGQueuer, ours vs the original model, achieved vs ideal, N replicas
vs one, worker vs the raw statements) is measured within the same call, on the same database
server, so the ratio is meaningful even on a shared, noisy machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import psutil

from bench import seed, tables
from bench.fairness import fairness
from bench.probes import Database, ProcessGroups, postgres_pids
from bench.results import Measurement, Target
from bench.runs import (
    Plan,
    Provider,
    RunResult,
    attachments_done,
    chats_done,
    drain,
    steady_rate,
)
from bench.sandbox import BenchEnv, WorkerSettings

Scenario = Callable[[BenchEnv, "Scale"], Awaitable[list[Measurement]]]

MB = 1024 * 1024
# No-op runs: batches of 100 (the default batch size; the engine reads at most the free slots).
NOOP_SETTINGS = WorkerSettings(concurrency=100)
UNLIMITED_RPS = 100_000.0


@dataclass(frozen=True)
class Scale:
    name: str
    noop_messages: int  # B1, B7
    attachment_messages: int  # B2
    chats: int  # B2
    attachments_per_chat: int  # B2
    latencies: tuple[tuple[float, tuple[int, ...]], ...]  # B3: (latency, concurrencies) pairs
    steady_seconds: float  # how long the steady window of a latency-bound drain should last
    replicas: tuple[int, ...]  # B5
    replica_concurrency: int  # B5
    replica_latency_seconds: float  # B5: long enough that 2 cores are not the limit
    rate_limit_rps: float  # B4
    rate_seconds: float  # B4 window
    idle_seconds: float  # B6
    pgqueuer_batches: tuple[int, ...]  # B1


SCALES = {
    "toy": Scale("toy", 400, 200, 20, 3, ((0.1, (8,)),), 1.0, (1, 2), 8, 0.1, 40.0, 2.0, 2.0,
                 (10,)),
    "small": Scale("small", 5_000, 3_000, 300, 5, ((0.1, (16, 64)), (0.5, (64,))), 4.0,
                   (1, 2, 4), 16, 0.5, 100.0, 8.0, 10.0, (10, 100)),
    "full": Scale("full", 30_000, 10_000, 1_000, 5,
                  ((0.1, (8, 16, 32, 64, 128)), (0.5, (16, 64, 128))), 15.0,
                  (1, 2, 4), 16, 0.5, 100.0, 15.0, 30.0, (10, 100)),
}  # fmt: skip


# Two cores run out well below the ideal rate of the largest concurrencies; sizing their
# backlogs by the ideal would only make those runs longer, not more accurate.
MAX_EXPECTED_RATE = 300.0


def latency_backlog(ideal_rate: float, scale: Scale, *, minimum: int = 200) -> int:
    """Enough messages for about ``steady_seconds`` of drain at ``ideal_rate``."""
    rate = min(ideal_rate, MAX_EXPECTED_RATE)
    return max(minimum, round(rate * scale.steady_seconds / 0.9))


# -- B1 queue overhead ------------------------------------------------------------------------


async def b1_queue_overhead(env: BenchEnv, scale: Scale) -> list[Measurement]:
    n = scale.noop_messages
    ours = await drain(env, Plan("noop", _seed_noop(n), n, NOOP_SETTINGS))
    out = [
        Measurement("B1", "ours: no-op drain", ours.window.rate, "msg/s",
                    detail=f"{n} msgs incl. sequencer; worker "
                           f"{ours.window.cpu_ms_per_message('worker'):.3f} ms CPU/msg"),
    ]  # fmt: skip
    pgqueuer, rates = await _pgqueuer_drains("B1", env, scale)
    out += pgqueuer
    if best := max(rates.values(), default=0.0):
        out.append(Measurement("B1", "ours / best PGQueuer", ours.window.rate / best, "ratio",
                               Target(">=", 1.0)))  # fmt: skip
    return out


# PGQueuer's own default (``QueueManager.run(batch_size=10)``): the configuration issue 16's
# reference figure (6,200 jobs/s) was measured with, as ours runs with the product's defaults.
PGQUEUER_DEFAULT_BATCH = 10


async def _pgqueuer_drains(
    bench: str, env: BenchEnv, scale: Scale
) -> tuple[list[Measurement], dict[int, float]]:
    """PGQueuer draining the no-op backlog at each of the scale's batch sizes, and its rate
    by batch size (none when the bench group, and so pgqueuer, is not installed)."""
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return [Measurement(bench, "PGQueuer", 0.0, "msg/s", detail="pgqueuer not installed")], {}
    n = scale.noop_messages
    out: list[Measurement] = []
    rates: dict[int, float] = {}
    for batch in scale.pgqueuer_batches:
        theirs = await drain(
            env,
            Plan("pgqueuer", _seed_pgqueuer(n), n, counter=_pgqueuer_done(n),
                 prepare=install_pgqueuer, extra_args=("--batch-size", str(batch))),
        )  # fmt: skip
        rates[batch] = theirs.window.rate
        out.append(Measurement(
            bench, f"PGQueuer batch {batch}: no-op drain", theirs.window.rate, "msg/s",
            detail=f"{n} jobs; worker {theirs.window.cpu_ms_per_message('worker'):.3f} ms CPU/msg",
        ))  # fmt: skip
    return out, rates


def _seed_noop(n: int, *, sequenced: bool = False) -> Callable[[Database], Awaitable[None]]:
    async def run(db: Database) -> None:
        await seed.seed_noop(db.conn, n, sequenced=sequenced)

    return run


def _seed_pgqueuer(n: int) -> Callable[[Database], Awaitable[None]]:
    async def run(db: Database) -> None:
        from pgqueuer import PsycopgDriver, Queries

        queries = Queries(PsycopgDriver(db.conn))
        async with db.conn.transaction():  # all jobs visible at once, as our backlog is
            for start in range(0, n, 10_000):
                size = min(10_000, n - start)
                await queries.enqueue(["noop"] * size, [None] * size, [0] * size)

    return run


def _pgqueuer_done(n: int) -> Callable[[Database], Awaitable[int]]:
    async def done(db: Database) -> int:
        return n - await db.scalar("pgqueuer_remaining")

    return done


async def install_pgqueuer(dsn: str) -> None:
    from pgqueuer import PsycopgDriver, Queries

    db = await Database.connect(dsn)
    try:
        await Queries(PsycopgDriver(db.conn)).install()
    finally:
        await db.close()


# -- B2 full job, zero-latency provider -------------------------------------------------------


async def b2_full_job(env: BenchEnv, scale: Scale) -> list[Measurement]:
    settings = _latency_settings(64)
    out: list[Measurement] = []
    n = scale.attachment_messages
    run = await _attachment_drain(env, n, settings)
    out += _cpu_split("attachment cleanups", run, n)
    chats, per_chat = scale.chats, scale.attachments_per_chat
    run = await drain(
        env,
        Plan(
            "real",
            _seed_chats(chats, per_chat),
            chats,
            settings,
            provider=Provider(),
            counter=chats_done,
        ),
    )
    out += _cpu_split(f"chat cleanups ({per_chat} files + store)", run, chats)
    out.append(Measurement("B2", "files deleted in chat cleanups", run.window.rate * per_chat,
                           "files/s"))  # fmt: skip
    return out


def _cpu_split(what: str, run: RunResult, n: int) -> list[Measurement]:
    w = run.window
    split = ", ".join(f"{g} {w.cores(g):.2f}" for g in ("worker", "postgres", "provider"))
    return [
        Measurement("B2", what, w.rate, "/s",
                    detail=f"{n} msgs; cores: {split}; {run.state()}"),
        Measurement("B2", f"{what}: worker CPU", w.cpu_ms_per_message("worker"), "ms/msg"),
        Measurement("B2", f"{what}: PostgreSQL CPU", w.cpu_ms_per_message("postgres"), "ms/msg"),
        Measurement("B2", f"{what}: provider CPU", w.cpu_ms_per_message("provider"), "ms/msg"),
    ]  # fmt: skip


async def _attachment_drain(
    env: BenchEnv, n: int, settings: WorkerSettings, *, with_files: bool = True
) -> RunResult:
    """``n`` attachment cleanups against a zero-latency provider (none at all without files:
    a call would fail and show in the run's state)."""
    provider = Provider() if with_files else None
    plan = Plan("real", _seed_attachments(n, with_files=with_files), n, settings,
                provider=provider, counter=attachments_done)  # fmt: skip
    return await drain(env, plan)


def _seed_attachments(n: int, *, with_files: bool = True) -> Callable[[Database], Awaitable[None]]:
    async def run(db: Database) -> None:
        await seed.seed_attachments(db.conn, n, with_files=with_files)

    return run


def _seed_chats(n: int, per_chat: int) -> Callable[[Database], Awaitable[None]]:
    async def run(db: Database) -> None:
        await seed.seed_chats(db.conn, n, attachments_per_chat=per_chat)

    return run


def _latency_settings(concurrency: int) -> WorkerSettings:
    """The product with concurrency C and provider limits that do not cap it."""
    return WorkerSettings(
        concurrency=concurrency,
        provider_max_concurrency=concurrency,
        provider_max_rps=UNLIMITED_RPS,
    )


# -- B3 latency-bound -------------------------------------------------------------------------


async def b3_latency_bound(env: BenchEnv, scale: Scale) -> list[Measurement]:
    out: list[Measurement] = []
    for latency, concurrencies in scale.latencies:
        out += await _b3_at(env, scale, latency, concurrencies)
    return out


async def _b3_at(
    env: BenchEnv, scale: Scale, latency: float, concurrencies: tuple[int, ...]
) -> list[Measurement]:
    at = f"L={latency * 1000:g}ms"
    provider = Provider(latency_seconds=latency)
    original_ideal = 4 / latency
    n = latency_backlog(original_ideal, scale, minimum=80)
    original = await drain(
        env, Plan("original", _seed_attachments(n), n, provider=provider, counter=attachments_done)
    )
    out = [
        Measurement("B3", f"{at} original model (4 processors, batch 10, sequential)",
                    original.window.rate, "msg/s", series=f"original {latency:g}",
                    detail=f"ideal {original_ideal:g}/s; {original.state()}"),
    ]  # fmt: skip
    for c in concurrencies:
        ideal = c / latency
        run, n = await _latency_drain(env, scale, latency, c)
        rate, window = run.window.rate, run.window
        out += [
            Measurement("B3", f"{at} C={c}: achieved", rate, "msg/s", series=f"ours {latency:g}",
                        x=c, detail=f"ideal {ideal:g}/s; {n} msgs; worker "
                                    f"{window.cores('worker'):.2f} cores; {run.state()}"),
            Measurement("B3", f"{at} C={c}: achieved / ideal", rate / ideal, "ratio",
                        Target(">=", 0.85)),
            Measurement("B3", f"{at} C={c}: ours / original model", rate / original.window.rate,
                        "ratio", Target(">=", 10.0)),
            Measurement("B6", f"peak RSS, {at} C={c}", max(run.peak_rss_bytes) / MB, "MB",
                        Target("<=", 150.0)),
        ]  # fmt: skip
    return out


async def _latency_drain(
    env: BenchEnv, scale: Scale, latency: float, concurrency: int
) -> tuple[RunResult, int]:
    """Attachment cleanups at provider latency L and concurrency C; the run and its backlog."""
    n = latency_backlog(concurrency / latency, scale)
    provider = Provider(latency_seconds=latency)
    run = await drain(env, Plan("real", _seed_attachments(n), n, _latency_settings(concurrency),
                                provider=provider, counter=attachments_done))  # fmt: skip
    return run, n


# -- B4 rate-limited upstream -----------------------------------------------------------------


async def b4_rate_limited(env: BenchEnv, scale: Scale) -> list[Measurement]:
    limit = scale.rate_limit_rps
    n = round(limit * (scale.rate_seconds + 10) * 1.5)  # outlasts the window
    out: list[Measurement] = []
    cases = [
        ("max_rps = 0.95 R", 1, 0.95 * limit, Target(">=", 0.9), Target("<=", 2.0)),
        ("max_rps = R", 1, limit, None, None),
        ("2 replicas x max_rps = R (over-subscribed)", 2, limit, None, None),
        ("4 replicas x max_rps = R (over-subscribed)", 4, limit, None, None),
    ]
    if scale.name == "toy":  # the smoke test: one case proves the machinery
        cases = cases[:1]
    for label, replicas, max_rps, rate_target, share_target in cases:
        settings = replace(_latency_settings(64), provider_max_rps=max_rps)
        plan = Plan(
            "real",
            _seed_attachments(n),
            n,
            settings,
            replicas=replicas,
            provider=Provider(rate_limit_rps=limit),
            counter=attachments_done,
        )
        warmup = min(2.0, scale.rate_seconds)
        run = await steady_rate(env, plan, warmup_seconds=warmup, seconds=scale.rate_seconds)
        out += [
            Measurement("B4", f"{label}: achieved / R", run.window.rate / limit, "ratio",
                        rate_target, detail=f"R={limit:g}/s; {run.window.rate:.1f} deletes/s"),
            Measurement("B4", f"{label}: 429 share", run.share_429 * 100, "%", share_target,
                        detail=f"statuses {run.statuses}"),
        ]  # fmt: skip
    return out


# -- B5 scale-out -----------------------------------------------------------------------------


async def b5_scale_out(env: BenchEnv, scale: Scale) -> list[Measurement]:
    c = scale.replica_concurrency
    settings = _latency_settings(c)
    latency = scale.replica_latency_seconds
    provider = Provider(latency_seconds=latency)
    rates: dict[int, float] = {}
    out: list[Measurement] = []
    for replicas in scale.replicas:
        ideal = replicas * c / latency
        n = latency_backlog(ideal, scale)
        run = await drain(env, Plan("real", _seed_attachments(n), n, settings,
                                    replicas=replicas, provider=provider,
                                    counter=attachments_done))  # fmt: skip
        rates[replicas] = run.window.rate
        split = ", ".join(f"{g} {run.window.cores(g):.2f}" for g in ("worker", "postgres",
                                                                      "provider"))  # fmt: skip
        out += [
            Measurement("B5", f"{replicas} replica(s) x C={c}: achieved", run.window.rate,
                        "msg/s", series="replicas", x=replicas,
                        detail=f"ideal {ideal:g}/s; cores: {split}; {run.state()}"),
            Measurement("B6", f"peak RSS per replica, {replicas} replica(s)",
                        max(run.peak_rss_bytes) / MB, "MB", Target("<=", 150.0)),
        ]  # fmt: skip
    for replicas in scale.replicas[1:]:
        target = Target(">=", 3.0) if replicas == 4 else None
        speed_up = rates[replicas] / rates[scale.replicas[0]]
        out.append(Measurement("B5", f"speed-up {replicas} vs 1 replica", speed_up, "x", target))
    return out


# -- B6 resources of an idle replica -----------------------------------------------------------


async def b6_idle(env: BenchEnv, scale: Scale) -> list[Measurement]:
    async with env.database() as dsn:
        worker = env.start_worker("real", WorkerSettings(), dsn=dsn)
        try:
            await env.wait_ready(worker)
            await asyncio.sleep(2.0)  # settle: first polls, pool filled
            db = await Database.connect(dsn)
            try:
                groups = ProcessGroups({"worker": lambda: [worker.pid],
                                        "postgres": postgres_pids(dsn)})  # fmt: skip
                xacts0, cpu0 = await db.scalar("database_transactions"), groups.sample()
                await asyncio.sleep(scale.idle_seconds)
                xacts1, cpu1 = await db.scalar("database_transactions"), groups.sample()
            finally:
                await db.close()
            rss = psutil.Process(worker.pid).memory_info().rss
        finally:
            await asyncio.to_thread(env.stop, worker.process)
    seconds = cpu1.at - cpu0.at
    own = 1  # the probe's own first read is counted in the delta
    return [
        Measurement("B6", "idle replica: CPU",
                    (cpu1.seconds["worker"] - cpu0.seconds["worker"]) / seconds * 100, "%",
                    Target("<=", 2.0), detail=f"over {seconds:.0f}s"),
        Measurement("B6", "idle replica: PostgreSQL CPU it causes",
                    (cpu1.seconds["postgres"] - cpu0.seconds["postgres"]) / seconds * 100, "%"),
        Measurement("B6", "idle replica: transactions/s", (xacts1 - xacts0 - own) / seconds,
                    "q/s", detail="pg_stat_database xact_commit+rollback delta"),
        Measurement("B6", "idle replica: RSS", rss / MB, "MB", Target("<=", 150.0)),
    ]  # fmt: skip


# -- B7 the SQL ceiling -----------------------------------------------------------------------


async def b7_sql_ceiling(env: BenchEnv, scale: Scale) -> list[Measurement]:
    n = scale.noop_messages
    sql_only = await drain(env, Plan("sql", _seed_noop(n, sequenced=True), n,
                                     extra_args=("--loops", "4")))  # fmt: skip
    worker = await drain(env, Plan("noop", _seed_noop(n, sequenced=True), n, NOOP_SETTINGS))
    return [
        Measurement("B7", "engine statements alone (4 loops, 1 conn each)", sql_only.window.rate,
                    "msg/s", detail=f"PostgreSQL {sql_only.window.cores('postgres'):.2f} cores"),
        Measurement("B7", "worker, no-op handler, same backlog", worker.window.rate, "msg/s",
                    detail=f"PostgreSQL {worker.window.cores('postgres'):.2f} cores, worker "
                           f"{worker.window.cores('worker'):.2f}"),
        Measurement("B7", "worker / SQL ceiling", worker.window.rate / sql_only.window.rate,
                    "ratio"),
    ]  # fmt: skip


# -- COST the cost figures of issue 16 (SPEC §15), as ratios within one run ------------------

COST_LATENCY_SECONDS = 0.1
COST_CONCURRENCY = 64
CPU_TARGET_MS = 1.0  # worker CPU per attachment cleanup with a provider call


async def cost(env: BenchEnv, scale: Scale) -> list[Measurement]:
    """DB-only cleanups vs PGQueuer's no-op jobs, achieved / ideal at L = 100 ms and C = 64,
    and the worker's CPU per cleanup with a provider call (the runs of B1, B2 and B3)."""
    n = scale.attachment_messages
    settings = _latency_settings(COST_CONCURRENCY)
    db_only = await _attachment_drain(env, n, settings, with_files=False)
    pgqueuer, rates = await _pgqueuer_drains("COST", env, scale)
    with_call = await _attachment_drain(env, n, settings)
    latency, c = COST_LATENCY_SECONDS, COST_CONCURRENCY
    ideal = c / latency
    bound, backlog = await _latency_drain(env, scale, latency, c)
    cpu_ms = with_call.window.cpu_ms_per_message("worker")
    out = [
        Measurement("COST", "DB-only attachment cleanups (no provider file)",
                    db_only.window.rate, "msg/s", detail=_cost_detail(db_only, n)),
        *pgqueuer,
        *_against_pgqueuer(db_only.window.rate, rates),
        Measurement("COST", f"L={latency * 1000:g}ms C={c}: achieved", bound.window.rate,
                    "msg/s", detail=f"ideal {ideal:g}/s; {backlog} msgs; worker "
                                    f"{bound.window.cores('worker'):.2f} cores; {bound.state()}"),
        Measurement("COST", f"L={latency * 1000:g}ms C={c}: achieved / ideal",
                    bound.window.rate / ideal, "ratio", Target(">=", 0.85)),
        Measurement("COST", "attachment cleanup with a provider call: worker CPU", cpu_ms,
                    "ms/msg", Target("<=", CPU_TARGET_MS), detail=_cost_detail(with_call, n)),
        Measurement("COST", f"{CPU_TARGET_MS:g} ms / worker CPU per cleanup with a call",
                    CPU_TARGET_MS / cpu_ms if cpu_ms else 0.0, "ratio", Target(">=", 1.0)),
    ]  # fmt: skip
    return out


def _against_pgqueuer(ours: float, rates: dict[int, float]) -> list[Measurement]:
    """DB-only cleanups against PGQueuer as it ships (issue 16's figure, with its target) and
    against its best batch size here (tuned: shown, no target)."""
    out: list[Measurement] = []
    if default := rates.get(PGQUEUER_DEFAULT_BATCH):
        out.append(Measurement(
            "COST", f"DB-only attachment cleanups / PGQueuer no-op at its default "
                    f"(batch {PGQUEUER_DEFAULT_BATCH})", ours / default, "ratio", Target(">=", 1.0),
        ))  # fmt: skip
    if best := max(rates.values(), default=0.0):
        batch = max(rates, key=lambda b: rates[b])
        out.append(Measurement("COST", "DB-only attachment cleanups / best PGQueuer no-op",
                               ours / best, "ratio", detail=f"tuned: batch {batch}"))  # fmt: skip
    return out


def _cost_detail(run: RunResult, n: int) -> str:
    w = run.window
    per_msg = ", ".join(f"{g} {w.cpu_ms_per_message(g):.3f}" for g in ("worker", "postgres",
                                                                         "provider"))  # fmt: skip
    return f"{n} msgs; CPU ms/msg: {per_msg}; {run.state()}"


# -- TABLES the chat service's tables at scale (issue 16; bench/tables.py) --------------------


async def tables_at_scale(env: BenchEnv, scale: Scale) -> list[Measurement]:
    return await tables.tables_at_scale(env, scale.name, scale.attachments_per_chat)


SCENARIOS: dict[str, Scenario] = {
    "B1": b1_queue_overhead,
    "B2": b2_full_job,
    "B3": b3_latency_bound,
    "B4": b4_rate_limited,
    "B5": b5_scale_out,
    "B6": b6_idle,
    "B7": b7_sql_ceiling,
    "TABLES": tables_at_scale,
    "FAIR": fairness,
    "COST": cost,
}
