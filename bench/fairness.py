"""FAIR: one tenant's mass deletion vs another tenant's few, on a rate-limited backend (SPEC §15).

The backend (the local provider) allows R = 20 requests/s and the worker's route is configured
to it. A busy tenant's backlog (1,500 attachment deletions at full size) is committed and the
worker is working on it; then a light tenant deletes 10 attachments, either in the busy tenant's
outbox partition or in another one. Measured in the same run, with the fair-share queue bound
on (the default, ``providers.fair_queue_seconds``) and off (``0``, calls of one tenant wait in
the route's queue without bound: the behaviour before fairness, apart from the round-robin
turns, which need no setting):

- seconds from the light tenant's commit to its last deletion done (goal: <= 10 s);
- the busy tenant's share of the budget over the 10 s after that commit: its deletions / (R x
  window) (goal: >= 0.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import sql
from bench.probes import Database
from bench.results import Measurement, Target
from bench.sandbox import ATTACHMENT_QUEUE, PARTITIONS, BenchEnv, WorkerSettings

if TYPE_CHECKING:
    from bench.scenarios import Scale

RATE = 20.0


@dataclass(frozen=True)
class FairSize:
    busy_backlog: int
    light_deletions: int
    warm_up: int  # busy deletions done before the light tenant commits
    window_seconds: float  # the busy tenant's share is taken over this long


SIZES = {
    "toy": FairSize(160, 3, 20, 3.0),
    "small": FairSize(600, 10, 40, 10.0),
    "full": FairSize(1_500, 10, 40, 10.0),
}


@dataclass(frozen=True)
class CaseResult:
    light_seconds: float
    busy_share: float
    busy_left: int  # the busy tenant's deletions not done when the light tenant's were
    statuses: str


async def fairness(env: BenchEnv, scale: Scale) -> list[Measurement]:
    size = SIZES[scale.name]
    out: list[Measurement] = []
    for same_partition in (True, False):
        where = "same partition" if same_partition else "other partition"
        for fair in (False, True):
            label = f"{where}, fairness {'on' if fair else 'off'}"
            got = await _case(env, size, same_partition=same_partition, fair=fair)
            light_target = Target("<=", 10.0) if fair else None
            share_target = Target(">=", 0.8) if fair else None
            out += [
                Measurement(
                    "FAIR", f"{label}: light tenant's {size.light_deletions} deletions",
                    got.light_seconds, "s", light_target,
                    detail=f"busy backlog {size.busy_backlog} at R={RATE:g}/s; busy tenant "
                           f"had {got.busy_left} left then; provider {got.statuses}"),
                Measurement(
                    "FAIR", f"{label}: busy tenant's share of the budget", got.busy_share,
                    "ratio", share_target,
                    detail=f"its deletions / (R x {size.window_seconds:g} s) after the light "
                           "tenant's commit"),
            ]  # fmt: skip
    return out


async def _case(env: BenchEnv, size: FairSize, *, same_partition: bool, fair: bool) -> CaseResult:
    busy = _tenant_in(1)
    light = _tenant_in(1 if same_partition else 2, not_=busy)
    settings = WorkerSettings(
        provider_max_rps=RATE, fair_queue_seconds=None if fair else 0.0
    )  # everything else: the product's defaults
    async with env.database() as dsn, _worker(env, settings, dsn) as summary:
        db = await Database.connect(dsn)
        try:
            await _seed(db, busy, size.busy_backlog)
            deadline = time.monotonic() + size.busy_backlog / RATE * 2 + 60
            await _wait_done(db, busy, size.warm_up, deadline)
            busy_before = await _done(db, busy)
            started = time.monotonic()
            await _seed(db, light, size.light_deletions)
            await _wait_done(db, light, size.light_deletions, deadline)
            light_seconds = time.monotonic() - started
            busy_at_light = await _done(db, busy)
            window_end = started + size.window_seconds
            await asyncio.sleep(max(0.0, window_end - time.monotonic()))
            busy_in_window = await _done(db, busy) - busy_before
            if light_seconds > size.window_seconds:  # its count was read late: take it then
                busy_in_window = busy_at_light - busy_before
                window = light_seconds
            else:
                window = size.window_seconds
        finally:
            await db.close()
        statuses = (await asyncio.to_thread(summary)).get("statuses", {})
    return CaseResult(
        light_seconds=light_seconds,
        busy_share=busy_in_window / (RATE * window),
        busy_left=size.busy_backlog - busy_at_light,
        statuses=str(statuses),
    )


@contextlib.asynccontextmanager
async def _worker(
    env: BenchEnv, settings: WorkerSettings, dsn: str
) -> AsyncIterator[Callable[[], dict[str, Any]]]:
    """The rate-limited provider and one ready worker; yields the provider's summary call."""
    fake = env.start_fake(rate_limit_rps=RATE)
    worker = env.start_worker("real", settings, dsn=dsn, provider_url=fake.url)
    try:
        await env.wait_ready(worker)
        yield fake.summary
    finally:
        await asyncio.to_thread(env.stop, worker.process)
        await asyncio.to_thread(env.stop, fake.process)


def _tenant_in(partition: int, *, not_: uuid.UUID | None = None) -> uuid.UUID:
    """A tenant whose messages go to ``partition`` (uuid as a 128-bit integer mod count)."""
    while True:
        tenant = uuid.uuid4()
        if tenant.int % PARTITIONS == partition and tenant != not_:
            return tenant


async def _seed(db: Database, tenant: uuid.UUID, n: int) -> None:
    """``n`` soft-deleted attachments of one tenant and their messages, in one transaction."""
    async with db.conn.transaction():
        await db.conn.execute(sql.q("seed_live_chats"), {"tenants": [tenant]})
        await db.conn.execute(
            sql.q("seed_attachment_messages"),
            {
                "n": n,
                "tenants": [tenant],
                "queue": ATTACHMENT_QUEUE,
                "partitions": PARTITIONS,
                "with_files": True,
            },
        )


async def _done(db: Database, tenant: uuid.UUID) -> int:
    return await db.scalar("tenant_attachments_done", {"tenant": tenant})


async def _wait_done(db: Database, tenant: uuid.UUID, count: int, deadline: float) -> None:
    while (done := await _done(db, tenant)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"tenant {tenant}: only {done} of {count} deletions done in time")
        await asyncio.sleep(0.05)
