"""What is left to do, read from the database: ``status``, the backlog gauges, ``drain``.

One read serves the operator's ``status`` command and the periodic gauge refresh, so the
dashboard and the CLI never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.db import AsyncConnectionPool, Conn, Database, backlog
from worker.db.backlog import DeadLetterStatus, PartitionStatus, RetryStatus, TenantStatus
from worker.db.route_health import SuspectedRoute, read_suspected_routes
from worker.observability.metrics import BacklogSnapshot, Metrics, queue_kind
from worker.runtime.migrate import index_states


@dataclass(frozen=True)
class IndexProblem:
    """An index the worker needs on a chat-service table that is missing or INVALID."""

    name: str
    table: str
    problem: str  # "missing" | "invalid"
    repair: str  # what a DBA runs (or: cleanup-worker migrate)


@dataclass(frozen=True)
class Status:
    partitions: list[PartitionStatus]
    retries: list[RetryStatus]
    dead_letters: list[DeadLetterStatus]
    attachments: dict[str, int] = field(default_factory=dict)
    outstanding_vector_stores: int = 0
    suspected_routes: list[SuspectedRoute] = field(default_factory=list)
    top_tenants: list[TenantStatus] = field(default_factory=list)
    index_problems: list[IndexProblem] = field(default_factory=list)
    # Keys of ``attachments`` that are the planner's estimates (the history of a large table).
    attachments_estimated: list[str] = field(default_factory=list)

    def messages(self, queue: str | None = None) -> int:
        """Outbox messages not yet processed (attachment rows are ``attachments``)."""
        return sum(p.messages for p in self.partitions if queue in (None, p.queue))

    def retry_rows(self, queue: str | None = None) -> int:
        return sum(r.due + r.parked for r in self.retries if queue in (None, r.queue))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


TOP_TENANTS = 10
# Above this many attachment rows (the planner's count) `status` estimates the done rows
# instead of scanning the table for the history: 0.3 s at 2 million rows, and growing.
EXACT_HISTORY_ROWS = 100_000


async def read_status(
    conn: Conn, queues: Sequence[str], *, all_attachments: bool, with_indexes: bool = False
) -> Status:
    """One consistent-enough read of every backlog (not a single snapshot: it is a gauge).

    ``all_attachments`` (the ``status`` command, not the gauges' hot loop) also counts done
    rows and reads the per-tenant view; ``with_indexes`` adds the chat-service indexes that are
    missing (the status command)."""
    attachments = await backlog.attachment_debt(conn)
    estimated: list[str] = []
    if all_attachments:
        history, estimated = await backlog.attachment_history(conn, exact_up_to=EXACT_HISTORY_ROWS)
        attachments |= history
    return Status(
        partitions=await backlog.partitions(conn, queues),
        retries=await backlog.retries(conn, queues),
        dead_letters=await backlog.dead_letters(conn, queues),
        attachments=attachments,
        outstanding_vector_stores=await backlog.outstanding_vector_stores(conn),
        suspected_routes=await read_suspected_routes(conn),
        top_tenants=await backlog.top_tenants(conn, TOP_TENANTS) if all_attachments else [],
        index_problems=await _index_problems(conn) if with_indexes else [],
        attachments_estimated=estimated,
    )


async def _index_problems(conn: Conn) -> list[IndexProblem]:
    return [
        IndexProblem(s.index.name, s.index.table, s.problem, s.repair)
        for s in await index_states(conn)
        if s.problem
    ]


def backlog_snapshot(status: Status) -> BacklogSnapshot:
    """The gauge values of a status read (dead letters: the unresolved ones, by queue kind)."""
    queues = sorted({p.queue for p in status.partitions})
    oldest: dict[str, float] = {}
    ages = [(p.queue, p.oldest_age_seconds) for p in status.partitions]
    ages += [(r.queue, r.oldest_age_seconds) for r in status.retries]  # parked is not done
    for queue, age in ages:
        if age is not None:
            oldest[queue] = max(oldest.get(queue, 0.0), age)
    dead_count: dict[str, int] = {}
    dead_age: dict[str, float] = {}
    for d in status.dead_letters:
        if d.status in ("pending", "reprocessing"):
            kind = queue_kind(d.queue)
            dead_count[kind] = dead_count.get(kind, 0) + d.count
            dead_age[kind] = max(dead_age.get(kind, 0.0), d.oldest_age_seconds or 0.0)
    return BacklogSnapshot(
        outbox_backlog={queue: status.messages(queue) for queue in queues},
        outbox_oldest_pending_age_seconds={queue: oldest.get(queue, 0.0) for queue in queues},
        retry_due={r.queue: r.due for r in status.retries},
        retry_parked={r.queue: r.parked for r in status.retries},
        dead_letters=dead_count,
        dead_letter_oldest_age_seconds=dead_age,
        attachments_pending=status.attachments.get("pending", 0),
        attachments_failed=status.attachments.get("failed", 0),
        vector_stores_pending=status.outstanding_vector_stores,
    )


async def refresh_backlog(
    pool: AsyncConnectionPool, metrics: Metrics, queues: Sequence[str]
) -> None:
    """Read the backlog and set every backlog gauge (the daemon does this periodically)."""
    async with Database(pool).connection() as conn:
        status = await read_status(conn, queues, all_attachments=False)
    metrics.set_backlog(backlog_snapshot(status))
