"""`cleanup-worker drain`: one pass over everything due, then exit (SPEC §7).

Runs the same engine rounds as the daemon, in one process, until nothing is due. With
``until_empty`` it also waits for parked retries to come due, until none is left or time is up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker.db import Database, backlog
from worker.models import Ok, Reject, Retry
from worker.outbox.engine import RoundReport
from worker.runtime.repair import resolve_finished_dead_letters_of
from worker.runtime.reporting import record_round
from worker.runtime.status import Status, read_status

if TYPE_CHECKING:  # the app pulls in the provider SDK; a summary type need not
    from worker.runtime.app import App

MAX_IDLE_WAIT_SECONDS = 5.0
PROGRESS_SECONDS = 0.5  # how often a busy pass re-reads the backlog for progress
RATE_WINDOW_SECONDS = 10.0  # the rate (and so the ETA) is measured over this recent window


@dataclass(frozen=True)
class DrainProgress:
    """Where a pass stands. ``total`` is counted up front (the backlog when the pass started)
    and grows only when new messages arrive; a retried delivery is not new work."""

    finished: int  # messages no longer waiting: handled for good, or taken by another replica
    total: int
    messages_left: int  # outbox messages not yet processed
    retries_left: int  # messages parked for a retry
    elapsed_seconds: float
    per_second: float | None  # finished per second over the recent window; None until known
    next_retry_in_seconds: float | None

    @property
    def eta_seconds(self) -> float | None:
        """Left divided by the recent rate; at least the wait for the next parked retry."""
        left = self.total - self.finished
        if left <= 0:
            return 0.0
        if not self.per_second:
            return self.next_retry_in_seconds if left == self.retries_left else None
        return max(left / self.per_second, self.next_retry_in_seconds or 0.0)


Progress = Callable[[DrainProgress], None]


class _ProgressCounter:
    """Turns backlog reads into ``DrainProgress``: total up front, rate over a window."""

    def __init__(self, started: float, first: Status):
        self._started = started
        self.total = first.messages() + first.retry_rows()
        self._samples: list[tuple[float, int]] = [(started, 0)]

    def snapshot(self, status: Status, now: float) -> DrainProgress:
        left = status.messages() + status.retry_rows()
        self.total = max(self.total, left + self._samples[-1][1])
        finished = self.total - left
        self._samples.append((now, finished))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
            self._samples.pop(0)
        since, then = self._samples[0]
        rate = (finished - then) / (now - since) if now - since >= 1.0 else None
        nexts = [r.next_due_in_seconds for r in status.retries if r.next_due_in_seconds]
        return DrainProgress(
            finished=finished,
            total=self.total,
            messages_left=status.messages(),
            retries_left=status.retry_rows(),
            elapsed_seconds=now - self._started,
            per_second=rate,
            next_retry_in_seconds=max(0.0, min(nexts)) if nexts else None,
        )


@dataclass
class QueueSummary:
    done: int = 0
    retried: int = 0
    dead_lettered: int = 0


@dataclass
class DrainSummary:
    queues: dict[str, QueueSummary] = field(default_factory=dict)
    attachments_failed: int = 0  # turned 'failed' during this pass (database truth)
    remaining_messages: int = 0  # outbox messages not processed (not attachment rows)
    remaining_retries: int = 0
    dead_letters_resolved: int = 0  # pending dead letters whose cleanup turned out finished
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def clean(self) -> bool:
        dead = sum(s.dead_lettered for s in self.queues.values())
        return dead == 0 and self.attachments_failed == 0

    def add(self, report: RoundReport) -> None:
        for settled in report.settled:
            summary = self.queues.setdefault(settled.handled.envelope.message.queue, QueueSummary())
            match settled.verdict:
                case Ok():
                    summary.done += 1
                case Retry():
                    summary.retried += 1
                case Reject():
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
    status = await _status(app, queues)
    counter = _ProgressCounter(started, status)
    if progress:  # the work is counted before the first message is handled
        progress(counter.snapshot(status, time.monotonic()))
    last_progress = time.monotonic()
    while True:
        report = await _one_round(app, queues)
        summary.add(report)
        out_of_time = max_seconds is not None and time.monotonic() - started >= max_seconds
        busy = bool(report.handled or report.lost)
        if busy and not out_of_time and time.monotonic() - last_progress < PROGRESS_SECONDS:
            continue
        status = await _status(app, queues)
        left = status.messages() + status.retry_rows()
        if progress:
            progress(counter.snapshot(status, time.monotonic()))
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
    summary.remaining_messages = status.messages()
    summary.remaining_retries = status.retry_rows()
    summary.attachments_failed = await _failed_since(app, since)
    summary.dead_letters_resolved = await resolve_finished_dead_letters_of(app)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


async def _one_round(app: App, queues: Sequence[str]) -> RoundReport:
    engine = app.engine
    await engine.sequence()
    total = RoundReport()
    outbox = app.config.outbox
    partitions = {q.name: q.partitions for q in outbox.queue_configs}
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
    """Until the next parked retry is due; briefly when others hold what is waiting."""
    if status.messages() or any(r.due for r in status.retries):
        return 0.2
    nexts = [r.next_due_in_seconds for r in status.retries if r.next_due_in_seconds is not None]
    soonest = min(nexts, default=MAX_IDLE_WAIT_SECONDS)
    return min(MAX_IDLE_WAIT_SECONDS, max(0.05, soonest))


async def _status(app: App, queues: Sequence[str]) -> Status:
    async with Database(app.pool).connection() as conn:
        return await read_status(conn, queues, all_attachments=False)


async def _database_now(app: App) -> datetime:
    async with Database(app.pool).connection() as conn:
        return await backlog.database_now(conn)


async def _failed_since(app: App, since: datetime) -> int:
    async with Database(app.pool).connection() as conn:
        return await backlog.attachments_failed_since(conn, since)
