"""What is left to do, read from the database: ``status``, the backlog gauges, ``drain``.

One read serves the operator's ``status`` command and the periodic gauge refresh, so the
dashboard and the CLI never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from worker.db import AsyncConnectionPool, Conn, Database
from worker.db.queries import q
from worker.db.route_health import SuspectedRoute, read_suspected_routes
from worker.observability.metrics import BacklogSnapshot, Metrics, queue_kind
from worker.runtime.migrate import index_states


@dataclass(frozen=True)
class PartitionStatus:
    queue: str
    partition: int
    messages: int  # outbox messages not yet processed (incoming + after the cursor)
    oldest_age_seconds: float | None
    processed_seq: int
    attempts: int
    last_error: str | None
    leased_by: str | None
    lease_expires_in_seconds: float | None


@dataclass(frozen=True)
class RetryStatus:
    queue: str
    due: int
    parked: int
    oldest_age_seconds: float | None
    next_due_in_seconds: float | None  # the next parked (not yet due) one; None if none waits


@dataclass(frozen=True)
class DeadLetterStatus:
    queue: str
    status: str
    count: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class TenantStatus:
    """One tenant's cleanup left: attachment rows (not messages) and vector stores."""

    tenant_id: UUID
    attachments_pending: int
    attachments_failed: int
    vector_stores_left: int


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

    def messages(self, queue: str | None = None) -> int:
        """Outbox messages not yet processed (attachment rows are ``attachments``)."""
        return sum(p.messages for p in self.partitions if queue in (None, p.queue))

    def retry_rows(self, queue: str | None = None) -> int:
        return sum(r.due + r.parked for r in self.retries if queue in (None, r.queue))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


TOP_TENANTS = 10


async def read_status(
    conn: Conn, queues: Sequence[str], *, all_attachments: bool, with_indexes: bool = False
) -> Status:
    """One consistent-enough read of every backlog (not a single snapshot: it is a gauge).

    ``all_attachments`` (the ``status`` command, not the gauges' hot loop) also counts done
    rows and reads the per-tenant view; ``with_indexes`` adds the chat-service indexes that are
    missing (the status command)."""
    params = {"queues": list(queues)}
    partitions = [PartitionStatus(*row) for row in await _rows(conn, "partition_backlog", params)]
    retries = [RetryStatus(*row) for row in await _rows(conn, "retry_backlog", params)]
    dead = [DeadLetterStatus(*row) for row in await _rows(conn, "dead_letter_backlog", params)]
    counts = "attachment_status_counts" if all_attachments else "attachment_debt"
    attachments = {status: int(n) for status, n in await _rows(conn, counts, {})}
    vector_stores = (await _rows(conn, "outstanding_vector_stores", {}))[0][0]
    suspected = await read_suspected_routes(conn)
    tenants = []
    if all_attachments:
        found = await _rows(conn, "tenant_backlog", {"limit": TOP_TENANTS})
        tenants = [TenantStatus(*row) for row in found]
    problems = await _index_problems(conn) if with_indexes else []
    return Status(
        partitions, retries, dead, attachments, int(vector_stores), suspected, tenants, problems
    )


async def _index_problems(conn: Conn) -> list[IndexProblem]:
    return [
        IndexProblem(s.index.name, s.index.table, s.problem, s.repair)
        for s in await index_states(conn)
        if s.problem
    ]


async def _rows(conn: Conn, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(q(name), params)
    return await cur.fetchall()


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
