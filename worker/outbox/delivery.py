"""Running the messages of a batch concurrently, and turning what they returned into rows.

Each message runs in its own task under the global concurrency limit and a time budget; a
handler's crash or hang becomes a Retry, never a lost message or a stuck partition. When the
process is shutting down past its grace deadline, unfinished messages are interrupted and
retried at once by whoever picks them up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, assert_never

import structlog

from worker.errors import DatabaseUnavailable
from worker.models import (
    BatchHandler,
    CallSlotHandler,
    Handler,
    Message,
    Ok,
    Outcome,
    Prepared,
    Reject,
    Retry,
    RetryReason,
    hold_slot,
)
from worker.observability.logging import bind_log_context, log_context
from worker.outbox.capacity import Capacity, SlotHold
from worker.outbox.enqueue import MAX_PAYLOAD_BYTES

log = structlog.get_logger("worker.outbox")


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
    """How one delivery is persisted: ``verdict`` is what the ack writes (record_outcomes).

    The verdict is the handler's outcome as decided: a Retry past ``max_deliveries`` becomes a
    Reject (a dead letter), and a Retry's ``retry_after_seconds`` is the delay chosen for it
    (the handler's is only a lower bound). ``handled`` keeps what the handler returned.
    """

    handled: Handled
    verdict: Outcome


def settle(handled: Handled, policy: RedeliveryPolicy, rng: random.Random) -> Settled:
    """Decide what to write for an outcome; a Retry past max_deliveries becomes a dead letter."""
    outcome = handled.outcome
    delivery = handled.envelope.message.delivery
    match outcome:
        case Ok() | Reject():
            return Settled(handled, outcome)
        case Retry(reason=RetryReason.DEFERRED, retry_after_seconds=hint):
            # Not a failure: parked until the tenant's fair turn (exactly that long, no
            # backoff), and lease_due_retries does not count the delivery it did not use.
            return Settled(handled, _delayed(outcome, max(0.0, hint or 0.0)))
        case Retry() if delivery >= policy.max_deliveries:
            limit = f"max deliveries ({policy.max_deliveries}) reached"
            return Settled(handled, Reject(f"{limit}; last error: {_error(outcome)}"))
        case Retry(reason=RetryReason.INTERRUPTED):
            return Settled(handled, _delayed(outcome, 0.0))
        case Retry(retry_after_seconds=hint):
            return Settled(handled, _delayed(outcome, policy.delay_seconds(delivery, hint, rng)))
        case _:
            assert_never(outcome)


def _delayed(retry: Retry, seconds: float) -> Retry:
    """The Retry as parked: due again in exactly ``seconds``."""
    return dataclasses.replace(retry, retry_after_seconds=seconds)


def _error(retry: Retry) -> str:
    """A retry's last error as the retry row and a dead letter keep it: reason, then detail."""
    reason = retry.reason.value
    return f"{reason}: {retry.detail}" if retry.detail else reason


def _columns(verdict: Outcome) -> tuple[str, str, str, float]:
    """The verdict as record_outcomes' kind, reason, error and delay columns."""
    match verdict:
        case Ok():
            return "ok", "", "", 0.0
        case Retry(reason=reason, retry_after_seconds=delay):
            return "retry", reason.value, _error(verdict), delay or 0.0
        case Reject(reason=text):
            return "reject", "", text, 0.0
        case _:
            assert_never(verdict)


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
            *_columns(row.verdict),
            message.delivery,
            envelope.dead_letter_id,
        )
        for column, value in zip(columns.values(), values, strict=True):
            column.append(value)
    return columns


class Runner:
    """Calls handlers in the process's slots (``Capacity``) under a per-message time budget."""

    def __init__(self, handlers: dict[str, Handler], capacity: Capacity, *, budget_seconds: float):
        self._handlers = handlers
        self._capacity = capacity
        self._budget = budget_seconds
        # What each queue's handler can do, looked up once: isinstance against a runtime
        # protocol walks its members every time (11 us per message for CallSlotHandler).
        self._batch_handlers = {q: h for q, h in handlers.items() if isinstance(h, BatchHandler)}
        self._around_calls = {q for q, h in handlers.items() if isinstance(h, CallSlotHandler)}

    async def run_all(self, envelopes: Sequence[Envelope], abort: asyncio.Event) -> list[Handled]:
        """Handle every envelope; on ``abort`` the unfinished ones end as Retry(interrupted).

        Handlers with a batch step (``BatchHandler``) first prepare the trusted messages of
        their queue together; a message that step settled ends here, without a task or slot.
        """
        self._capacity.admit(len(envelopes))
        try:
            prepared = await self._prepare(envelopes)
        except BaseException:  # cancelled (shutdown): none of them will run
            for _ in envelopes:
                self._capacity.finish()
            raise
        settled: dict[int, Handled] = {}
        tasks: dict[int, asyncio.Task[Handled]] = {}
        for n, (envelope, early) in enumerate(zip(envelopes, prepared, strict=True)):
            if early is not None:
                settled[n] = _settled_early(envelope, early)
                self._capacity.finish()
                continue
            task = asyncio.create_task(self._run_one(envelope), name=_task_name(envelope))
            task.add_done_callback(lambda _: self._capacity.finish())  # done, failed, cancelled
            tasks[n] = task
        await self._wait(list(tasks.values()), abort)
        return [
            settled[n] if n in settled else self._result(tasks[n], envelope)
            for n, envelope in enumerate(envelopes)
        ]

    async def _prepare(self, envelopes: Sequence[Envelope]) -> list[Prepared | None]:
        """Each batch handler's step for its queue's trusted messages; None where there is
        none, or where it failed (then each message's own handling meets the failure)."""
        prepared: list[Prepared | None] = [None] * len(envelopes)
        by_queue: dict[str, list[int]] = {}
        for n, envelope in enumerate(envelopes):
            message = envelope.message
            if not envelope.suspect and len(message.payload) <= MAX_PAYLOAD_BYTES:
                by_queue.setdefault(message.queue, []).append(n)
        for queue, indexes in by_queue.items():
            handler = self._batch_handlers.get(queue)
            if handler is None:
                continue
            try:
                async with asyncio.timeout(self._budget):
                    got = await handler.prepare([envelopes[n].message for n in indexes])
            except Exception as exc:  # the handlings run unprepared, each meeting it itself
                log.warning("batch_prepare_failed", queue=queue, error=type(exc).__name__)
                continue
            for n, early in zip(indexes, got, strict=True):
                prepared[n] = early
        return prepared

    @staticmethod
    async def _wait(tasks: list[asyncio.Task[Handled]], abort: asyncio.Event) -> None:
        """Until every task is done; on ``abort``, cancel the unfinished ones."""
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

    @staticmethod
    def _result(task: asyncio.Task[Handled], envelope: Envelope) -> Handled:
        if task.cancelled():
            interrupted = Retry(RetryReason.INTERRUPTED, "worker shutting down")
            return Handled(envelope, interrupted, 0.0)
        return task.result()

    async def _run_one(self, envelope: Envelope) -> Handled:
        message = envelope.message
        bind_log_context(**_message_fields(message))
        if envelope.suspect:  # handled alone after a lease that ended without an ack
            bind_log_context(redelivered=True)
        around_calls = message.queue in self._around_calls
        async with self._capacity.slot(at_once=not around_calls) as hold:
            started = time.monotonic()
            outcome = await self._call(message, hold)
            seconds = time.monotonic() - started
        _log_outcome(outcome, seconds)
        return Handled(envelope, outcome, seconds)

    async def _call(self, message: Message, hold: SlotHold) -> Outcome:
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
            async with asyncio.timeout(self._budget) as budget:
                hold_slot(_BudgetedSlot(hold, budget))
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


class _BudgetedSlot:
    """A handling's slot whose wait is not spent from its time budget.

    A ``CallSlotHandler`` waits for its slot inside its handler, so inside its budget; for any
    other handler the engine waits before the budget starts. Both get the budget for their
    own work: a wave of slow calls ahead (each up to a backend's timeout) must not time out
    the messages queued behind it, each a spent delivery.
    """

    def __init__(self, hold: SlotHold, budget: asyncio.Timeout) -> None:
        self._hold = hold
        self._budget = budget

    @property
    def held(self) -> bool:
        return self._hold.held

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        waiting_since, deadline = loop.time(), self._budget.when()
        self._budget.reschedule(None)  # the wait runs on no clock of the handling's
        try:
            await self._hold.acquire()
        finally:
            if deadline is not None:
                self._budget.reschedule(deadline + loop.time() - waiting_since)

    def release(self) -> None:
        self._hold.release()


def _message_fields(message: Message) -> dict[str, object]:
    """Where a message's log lines say it came from."""
    return {
        "queue": message.queue,
        "partition": message.partition,
        "seq": message.seq,
        "delivery": message.delivery,
    }


def _settled_early(envelope: Envelope, early: Prepared) -> Handled:
    """A message its batch step settled: logged as any handled message, in no time of its own."""
    with log_context(**_message_fields(envelope.message), **early.log):
        _log_outcome(early.outcome, 0.0)
    return Handled(envelope, early.outcome, 0.0)


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
