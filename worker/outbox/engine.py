"""The outbox engine: one object per process that runs rounds of work and reports them.

A round is "lease what is free, handle it, ack it". Rounds return values (RoundReport); the
runtime decides how often to run them and what to log or count, so the engine has no loops,
timers or metrics of its own and every behaviour can be tested one round at a time.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.config import OutboxConfig
from worker.db import AsyncConnectionPool
from worker.models import Handler, Reject
from worker.outbox import processor, retrier
from worker.outbox.capacity import Capacity
from worker.outbox.delivery import Envelope, Handled, RedeliveryPolicy, Runner, Settled, settle
from worker.outbox.isolation import run_alone
from worker.outbox.leases import heartbeat
from worker.outbox.maintenance import sequence_queues, vacuum


def new_worker_id() -> str:
    """Unique per process boot: a restarted pod reuses its name but never this id."""
    return f"{socket.gethostname()[:200]}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class EngineSettings:
    batch_size: int
    lease_seconds: float
    concurrency: int
    retry: RedeliveryPolicy
    handler_budget_seconds: float
    max_handler_crashes: int = 3  # process deaths while handled alone before a dead letter

    @classmethod
    def from_config(cls, outbox: OutboxConfig) -> EngineSettings:
        return cls(
            batch_size=outbox.batch_size,
            lease_seconds=outbox.lease_seconds,
            concurrency=outbox.concurrency,
            retry=RedeliveryPolicy(
                outbox.retry.base_seconds, outbox.retry.max_seconds, outbox.retry.max_deliveries
            ),
            # The heartbeat keeps the lease while a handler runs; this bounds a hung one.
            handler_budget_seconds=outbox.lease_seconds,
            max_handler_crashes=outbox.max_handler_crashes,
        )


@dataclass
class RoundReport:
    """What a round did: deliveries persisted by the ack, and those a lost lease threw away."""

    settled: list[Settled] = field(default_factory=list)
    lost: list[Settled] = field(default_factory=list)
    partitions: int = 0

    @property
    def handled(self) -> int:
        return len(self.settled)

    @property
    def dead_lettered(self) -> int:
        return sum(1 for s in self.settled if isinstance(s.verdict, Reject))

    @property
    def leases_lost(self) -> int:
        """Leases lost before the ack: a partition (its whole batch) or single retry rows."""
        return len({_lease_key(s.handled.envelope) for s in self.lost})

    def merge(self, other: RoundReport) -> None:
        self.settled.extend(other.settled)
        self.lost.extend(other.lost)
        self.partitions += other.partitions


def _lease_key(envelope: Envelope) -> tuple[str, int | None]:
    if envelope.retry_id is not None:
        return "retry", envelope.retry_id
    return "partition", envelope.partition_id


class Engine:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        handlers: Mapping[str, Handler],
        settings: EngineSettings,
        *,
        lease_pool: AsyncConnectionPool | None = None,
        worker_id: str | None = None,
        rng: random.Random | None = None,
    ):
        self.pool = pool
        # Heartbeats, acks and releases use their own connections: on the shared pool they
        # queued behind up to ``concurrency`` handlers for longer than a lease, and an idle
        # but overloaded replica lost leases it was still working under.
        self.lease_pool = lease_pool or pool
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.queues = tuple(handlers)
        self._rng = rng or random.Random()
        self._capacity = Capacity(settings.concurrency)
        self._runner = Runner(
            dict(handlers), self._capacity, budget_seconds=settings.handler_budget_seconds
        )
        # One suspect message at a time in the whole process, whatever its lane (isolation.py).
        self._alone = asyncio.Lock()

    async def sequence(self) -> int:
        return await sequence_queues(self.pool, self.queues)

    async def vacuum(self) -> int:
        return await vacuum(self.pool)

    async def wait_for_capacity(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the process wants more messages (``Capacity.wanted``), waiting up to
        ``timeout`` for a message to finish if it does not."""
        return await self._capacity.wait_until_wanted(timeout)

    async def process_partitions(
        self,
        queue: str,
        *,
        max_partitions: int,
        abort: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
    ) -> RoundReport:
        """Lease up to ``max_partitions`` partitions with work and process one batch of each.

        Takes only what this process can soon start: nothing while it has its slots' worth of
        messages and a quarter more (``Capacity.wanted``) and, while it is busy, batches of
        at most its ``room`` (free slots plus one wave of queue). Leasing greedily parked whole
        batches of more partitions in busy replicas while others idled: 4 replicas ran at under
        2x one. ``stop`` set (the caller's "stop leasing", e.g. SIGTERM): lease nothing.
        """
        abort = abort or asyncio.Event()
        if self._capacity.wanted == 0 or (stop is not None and stop.is_set()):
            return RoundReport()
        limit = self._capacity.lease_limit(self.settings.batch_size)
        leases: list[processor.PartitionLease] = []
        self._capacity.reserve(limit * max_partitions)
        try:
            leases = await processor.lease_partitions(
                self.pool,
                queue,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                limit=max_partitions,
            )
        finally:  # each lease keeps its share until its batch is read (_process_lease)
            self._capacity.unreserve(limit * (max_partitions - len(leases)))
        reports = await asyncio.gather(
            *(self._process_lease(lease, limit, abort) for lease in leases)
        )
        total = RoundReport()
        for report in reports:
            total.merge(report)
        return total

    async def _process_lease(
        self, lease: processor.PartitionLease, limit: int, abort: asyncio.Event
    ) -> RoundReport:
        try:
            envelopes = await processor.read_batch(self.pool, lease, limit=limit)
        finally:
            # No await from here to run_all, which admits the messages (Capacity).
            self._capacity.unreserve(limit)
        if not envelopes:
            await processor.release_lease(self.lease_pool, lease)
            return RoundReport()

        async def extend() -> bool:
            return await processor.extend_lease(
                self.lease_pool, lease, lease_seconds=self.settings.lease_seconds
            )

        settled = await self._handle(envelopes, extend, abort)
        acked = await processor.ack_batch(self.lease_pool, lease, settled)
        if acked:
            return RoundReport(settled, partitions=1)
        return RoundReport(lost=settled, partitions=1)

    async def process_retries(
        self,
        *,
        limit: int,
        abort: asyncio.Event | None = None,
        queues: Sequence[str] | None = None,
    ) -> RoundReport:
        """Lease up to ``limit`` due retry rows (of ``queues``, default all) and handle them."""
        envelopes = await retrier.lease_due_retries(
            self.pool,
            queues or self.queues,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            limit=limit,
        )
        if not envelopes:
            return RoundReport()

        async def extend() -> bool:
            held = await retrier.extend_retry_leases(
                self.lease_pool, envelopes, lease_seconds=self.settings.lease_seconds
            )
            return len(held) == len(envelopes)

        settled = await self._handle(envelopes, extend, abort or asyncio.Event())
        held = await retrier.ack_retries(self.lease_pool, settled)
        return RoundReport(
            settled=[s for s in settled if s.handled.envelope.retry_id in held],
            lost=[s for s in settled if s.handled.envelope.retry_id not in held],
        )

    async def next_retry_due(self) -> float | None:
        """Seconds until the earliest parked message is due (None: nothing parked)."""
        return await retrier.next_retry_due(self.pool, self.queues)

    async def _handle(
        self, envelopes: Sequence[Envelope], extend: processor.Extend, abort: asyncio.Event
    ) -> list[Settled]:
        """Run the batch: trusted messages concurrently, suspect ones alone (isolation.py)."""
        trusted = [e for e in envelopes if not e.suspect]
        suspect = [e for e in envelopes if e.suspect]
        async with heartbeat(extend, lease_seconds=self.settings.lease_seconds):
            together, alone = await asyncio.gather(
                self._runner.run_all(trusted, abort),
                run_alone(
                    self._runner,
                    self.lease_pool,
                    suspect,
                    abort,
                    max_crashes=self.settings.max_handler_crashes,
                    alone=self._alone,
                ),
            )
        handled: list[Handled] = [*together, *alone]
        return [settle(h, self.settings.retry, self._rng) for h in handled]
