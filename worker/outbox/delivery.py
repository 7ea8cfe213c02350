"""Running the messages of a batch concurrently, and turning what they returned into rows.

Each message runs in its own task under the global concurrency limit and a time budget; a
handler's crash or hang becomes a Retry, never a lost message or a stuck partition. When the
process is shutting down past its grace deadline, unfinished messages are interrupted and
retried at once by whoever picks them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, assert_never

import structlog

from worker.errors import DatabaseUnavailable
from worker.models import Handler, Message, Ok, Outcome, Reject, Retry, RetryReason
from worker.outbox.enqueue import MAX_PAYLOAD_BYTES

log = structlog.get_logger("worker.outbox")

Kind = Literal["ok", "retry", "reject"]


@dataclass(frozen=True)
class Envelope:
    """A message plus where it came from (partition row, replayed dead letter, retry row)."""

    message: Message
    partition_id: int
    dead_letter_id: int | None = None
    retry_id: int | None = None
    retry_token: str | None = None  # fencing token of the retry row's lease
    # Its previous lease ended without an outcome (a crash, a lost lease): handled alone, so
    # a message that kills the process is found (isolation.py).
    suspect: bool = False


@dataclass(frozen=True)
class Handled:
    envelope: Envelope
    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class RedeliveryPolicy:
    """When a retried message is delivered again, and how often before it is dead-lettered.

    Exponential backoff with jitter; a provider's Retry-After is a lower bound. Not the
    provider layer's ``CallRetryPolicy``, which retries within one call.
    """

    base_seconds: float
    max_seconds: float
    max_deliveries: int
    jitter: float = 0.2

    def delay_seconds(self, delivery: int, hint: float | None, rng: random.Random) -> float:
        # The exponent is bounded (2**63 s is forever) so huge delivery counts cannot overflow;
        # the cap holds after jitter too. Only a provider's hint may go past it.
        backoff = min(self.max_seconds, self.base_seconds * 2 ** min(max(0, delivery - 1), 63))
        backoff = min(self.max_seconds, backoff * (1 + rng.uniform(-self.jitter, self.jitter)))
        return float(max(backoff, hint or 0.0))


@dataclass(frozen=True)
class Settled:
    """How one delivery is persisted (see the record_outcomes statement)."""

    handled: Handled
    kind: Kind
    reason: str
    error: str
    delay_seconds: float


def settle(handled: Handled, policy: RedeliveryPolicy, rng: random.Random) -> Settled:
    """Decide what to write for an outcome; a Retry past max_deliveries becomes a dead letter."""
    outcome = handled.outcome
    delivery = handled.envelope.message.delivery
    match outcome:
        case Ok():
            return Settled(handled, "ok", "", "", 0.0)
        case Reject(reason=reason):
            return Settled(handled, "reject", "reject", reason, 0.0)
        case Retry(reason=reason, detail=detail, retry_after_seconds=hint):
            error = f"{reason.value}: {detail}" if detail else reason.value
            if reason is RetryReason.DEFERRED:
                # Not a failure: parked until the tenant's fair turn (exactly that long, no
                # backoff), and lease_due_retries does not count the delivery it did not use.
                return Settled(handled, "retry", reason.value, error, max(0.0, hint or 0.0))
            if delivery >= policy.max_deliveries:
                final = f"max deliveries ({policy.max_deliveries}) reached; last error: {error}"
                return Settled(handled, "reject", "max_deliveries", final, 0.0)
            if reason is RetryReason.INTERRUPTED:
                return Settled(handled, "retry", reason.value, error, 0.0)
            delay = policy.delay_seconds(delivery, hint, rng)
            return Settled(handled, "retry", reason.value, error, delay)
        case _:
            assert_never(outcome)


def outcome_params(rows: Sequence[Settled]) -> dict[str, list[Any]]:
    """Column arrays for record_outcomes (one statement per batch, not one per message)."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "partition_ids",
            "seqs",
            "payloads",
            "payload_types",
            "created_ats",
            "kinds",
            "reasons",
            "errors",
            "delays",
            "deliveries",
            "dead_letter_ids",
        )
    }
    for row in rows:
        envelope = row.handled.envelope
        message = envelope.message
        values: tuple[object, ...] = (
            envelope.partition_id,
            message.seq,
            message.payload,
            message.payload_type,
            message.created_at,
            row.kind,
            row.reason,
            row.error,
            row.delay_seconds,
            message.delivery,
            envelope.dead_letter_id,
        )
        for column, value in zip(columns.values(), values, strict=True):
            column.append(value)
    return columns


class Runner:
    """Calls handlers under the global concurrency limit and a per-message time budget."""

    def __init__(self, handlers: dict[str, Handler], *, concurrency: int, budget_seconds: float):
        self._handlers = handlers
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._budget = budget_seconds
        self._unfinished = 0  # messages handed to run_all and not finished yet
        self._reserved = 0  # messages being leased and read, not handed to run_all yet
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def _taken(self) -> int:
        return self._unfinished + self._reserved

    @property
    def idle(self) -> bool:
        return self._taken == 0

    @property
    def free_slots(self) -> int:
        """Slots not taken by a message running, waiting for one, or being leased."""
        return max(0, self._concurrency - self._taken)

    @property
    def room(self) -> int:
        """Messages this process can take on now: its slots plus one wave of queue.

        The queue keeps the slots busy while a batch's messages finish one by one; more than
        one wave would only sit here while other replicas with free slots wait for work.
        """
        return max(0, 2 * self._concurrency - self._taken)

    def reserve(self, count: int) -> None:
        """Count ``count`` messages as taken while they are leased and read.

        Lanes decide how much to lease before awaiting the database: unreserved, every lane of
        an idle process saw it idle at once and each leased a full batch, and other replicas
        had nothing left to lease (4 replicas drained at under 3x one).
        """
        self._reserved += count

    def unreserve(self, count: int) -> None:
        self._reserved -= count
        for _ in range(min(count, len(self._slot_waiters))):
            self._wake_slot_waiter()

    async def wait_for_slot(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether a slot is free, waiting up to ``timeout`` for one to free up.

        A finished message wakes one waiter, so lanes refill a freed slot at once instead of
        after a poll interval, without all of them racing for it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.free_slots:
            if (left := deadline - loop.time()) <= 0:
                return False
            waiter = loop.create_future()
            self._slot_waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, left)
        return True

    async def run_all(self, envelopes: Sequence[Envelope], abort: asyncio.Event) -> list[Handled]:
        """Handle every envelope; on ``abort`` the unfinished ones end as Retry(interrupted)."""
        tasks = [asyncio.create_task(self._run_one(e), name=_task_name(e)) for e in envelopes]
        self._unfinished += len(tasks)
        for created in tasks:
            created.add_done_callback(self._finished)
        aborted = asyncio.create_task(abort.wait())
        pending: set[asyncio.Future[Any]] = set(tasks)
        try:
            while pending and not aborted.done():
                _, pending = await asyncio.wait(
                    pending | {aborted}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(aborted)
        finally:
            aborted.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return [
            self._result(task, envelope) for task, envelope in zip(tasks, envelopes, strict=True)
        ]

    def _finished(self, _task: asyncio.Task[Handled]) -> None:
        self._unfinished -= 1
        self._wake_slot_waiter()

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():  # a waiter that timed out is cancelled, hence done
                waiter.set_result(None)
                return

    @staticmethod
    def _result(task: asyncio.Task[Handled], envelope: Envelope) -> Handled:
        if task.cancelled():
            interrupted = Retry(RetryReason.INTERRUPTED, "worker shutting down")
            return Handled(envelope, interrupted, 0.0)
        return task.result()

    async def _run_one(self, envelope: Envelope) -> Handled:
        message = envelope.message
        structlog.contextvars.bind_contextvars(
            queue=message.queue,
            partition=message.partition,
            seq=message.seq,
            delivery=message.delivery,
        )
        if envelope.suspect:  # handled alone after a lease that ended without an ack
            structlog.contextvars.bind_contextvars(redelivered=True)
        async with self._slots:
            started = time.monotonic()
            outcome = await self._call(message)
            seconds = time.monotonic() - started
        _log_outcome(outcome, seconds)
        return Handled(envelope, outcome, seconds)

    async def _call(self, message: Message) -> Outcome:
        if (size := len(message.payload)) > MAX_PAYLOAD_BYTES:
            # Enqueue enforces the limit, but other producers write the tables directly: never
            # parse what no valid message can be (a 50 MB payload would stall every slot).
            return Reject(
                f"payload of {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit (not parsed)"
            )
        handler = self._handlers.get(message.queue)
        if handler is None:
            return Reject(f"no handler for queue {message.queue!r}")
        try:
            async with asyncio.timeout(self._budget):
                outcome = await handler(message)
        except TimeoutError:
            return Retry(RetryReason.HANDLER_TIMEOUT, f"handler exceeded {self._budget:g}s")
        except DatabaseUnavailable as exc:
            return Retry(RetryReason.DATABASE, str(exc))
        except Exception as exc:  # a handler bug must not stall the partition
            log.exception("handler_crashed")
            return Retry(RetryReason.HANDLER_ERROR, type(exc).__name__)
        if not isinstance(outcome, Ok | Retry | Reject):  # a bug too: must not crash the round
            log.error("handler_bad_outcome", returned=type(outcome).__name__)
            return Retry(RetryReason.HANDLER_ERROR, f"handler returned {type(outcome).__name__}")
        return outcome


def _log_outcome(outcome: Outcome, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 1)
    match outcome:
        case Ok():
            log.info("message_handled", outcome="ok", duration_ms=duration_ms)
        case Retry(reason=RetryReason.DEFERRED, detail=detail):
            log.info("message_handled", outcome="deferred", detail=detail, duration_ms=duration_ms)
        case Retry(reason=reason, detail=detail):
            log.warning(
                "message_handled",
                outcome="retry",
                reason=reason.value,
                detail=detail,
                duration_ms=duration_ms,
            )
        case Reject(reason=reason):
            log.warning("message_handled", outcome="reject", reason=reason, duration_ms=duration_ms)
        case _:
            assert_never(outcome)


def _task_name(envelope: Envelope) -> str:
    message = envelope.message
    return f"handle:{message.queue}:{message.partition}:{message.seq}"
