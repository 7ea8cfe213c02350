"""`cleanup-worker drain`: one pass over everything due, then exit (SPEC §7).

Runs the same engine rounds as the daemon, in one process, until nothing is due. With
``until_empty`` it also waits for parked retries to come due, until none is left or time is up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from worker.db.pool import translate_errors
from worker.db.queries import q
from worker.outbox.engine import RoundReport
from worker.runtime.reporting import record_round
from worker.runtime.status import Status, read_status

if TYPE_CHECKING:  # the app pulls in the provider SDK; a summary type need not
    from worker.runtime.app import App

Progress = Callable[[int, int], None]  # (handled so far, remaining backlog)

MAX_IDLE_WAIT_SECONDS = 5.0
PROGRESS_SECONDS = 0.5  # how often a busy pass re-reads the backlog for progress


@dataclass
class QueueSummary:
    done: int = 0
    retried: int = 0
    dead_lettered: int = 0


@dataclass
class DrainSummary:
    queues: dict[str, QueueSummary] = field(default_factory=dict)
    attachments_failed: int = 0  # turned 'failed' during this pass (database truth)
    remaining_pending: int = 0
    remaining_retries: int = 0
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def clean(self) -> bool:
        dead = sum(s.dead_lettered for s in self.queues.values())
        return dead == 0 and self.attachments_failed == 0

    def add(self, report: RoundReport) -> None:
        for settled in report.settled:
            summary = self.queues.setdefault(settled.handled.envelope.message.queue, QueueSummary())
            match settled.kind:
                case "ok":
                    summary.done += 1
                case "retry":
                    summary.retried += 1
                case "reject":
                    summary.dead_lettered += 1

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"clean": self.clean}


async def drain(
    app: App,
    *,
    queues: Sequence[str],
    max_seconds: float | None,
    until_empty: bool,
    progress: Progress | None = None,
) -> DrainSummary:
    started = time.monotonic()
    since = await _database_now(app)
    summary = DrainSummary(queues={queue: QueueSummary() for queue in queues})
    handled, last_progress = 0, 0.0
    while True:
        report = await _one_round(app, queues)
        summary.add(report)
        handled += report.handled
        out_of_time = max_seconds is not None and time.monotonic() - started >= max_seconds
        busy = bool(report.handled or report.lost)
        if busy and not out_of_time and time.monotonic() - last_progress < PROGRESS_SECONDS:
            continue
        status = await _status(app, queues)
        left = status.pending() + status.retry_rows()
        if progress:
            progress(handled, left)
            last_progress = time.monotonic()
        if out_of_time:
            summary.timed_out = left > 0
            break
        if busy:
            continue
        # Idle round: nothing this process can lease right now.
        if not until_empty or left == 0:
            break
        wait = _wait_for_next_due(status)
        if max_seconds is not None:  # never sleep past --max-seconds
            wait = min(wait, max(0.0, started + max_seconds - time.monotonic()))
        await asyncio.sleep(wait)
    status = await _status(app, queues)
    summary.remaining_pending = status.pending()
    summary.remaining_retries = status.retry_rows()
    summary.attachments_failed = await _failed_since(app, since)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


async def _one_round(app: App, queues: Sequence[str]) -> RoundReport:
    engine = app.engine
    await engine.sequence()
    total = RoundReport()
    outbox = app.config.outbox
    partitions = {q.name: q.partitions for q in (outbox.attachment_queue, outbox.chat_queue)}
    reports = await asyncio.gather(
        *(_partitions_round(app, queue, partitions[queue]) for queue in queues),
        engine.process_retries(limit=outbox.batch_size, queues=queues),
    )
    for report in reports:
        record_round(app.metrics, report)
        total.merge(report)
    return total


async def _partitions_round(app: App, queue: str, max_partitions: int) -> RoundReport:
    """The queues share the handler slots: a full process waits for one (at most a handler's
    budget) instead of reading "full" as "nothing to do" and ending the pass early."""
    engine = app.engine
    await engine.wait_for_capacity(timeout=app.config.outbox.lease_seconds)
    return await engine.process_partitions(queue, max_partitions=max_partitions)


def _wait_for_next_due(status: Status) -> float:
    """Until the next parked retry is due; briefly when others hold what is pending."""
    if status.pending():
        return 0.2
    nexts = [r.next_due_in_seconds for r in status.retries if r.next_due_in_seconds is not None]
    soonest = min(nexts, default=MAX_IDLE_WAIT_SECONDS)
    return min(MAX_IDLE_WAIT_SECONDS, max(0.05, soonest))


async def _status(app: App, queues: Sequence[str]) -> Status:
    with translate_errors():
        async with app.pool.connection() as conn:
            return await read_status(conn, queues, all_attachments=False)


async def _database_now(app: App) -> Any:
    with translate_errors():
        async with app.pool.connection() as conn:
            cur = await conn.execute(q("database_now"))
            row = await cur.fetchone()
            assert row is not None
            return row[0]


async def _failed_since(app: App, since: Any) -> int:
    with translate_errors():
        async with app.pool.connection() as conn:
            cur = await conn.execute(q("attachments_failed_since"), {"since": since})
            row = await cur.fetchone()
            return int(row[0]) if row else 0
