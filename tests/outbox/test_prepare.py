"""A handler's batch step (``BatchHandler.prepare``, SPEC §15) as the runner drives it.

Messages the step settles end without a handler call, task or slot; the others are handled
as always; a failing or hanging step costs nothing but the step (every message is handled as
if there were none); suspect messages are never prepared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import pytest
from structlog.testing import capture_logs

from worker.errors import DatabaseUnavailable
from worker.models import Message, Ok, Outcome, Prepared, Retry, RetryReason, provider_slot
from worker.observability.logging import merge_log_context
from worker.outbox.capacity import Capacity
from worker.outbox.delivery import Envelope, Runner

from .helpers import AQ

NOW = datetime.now(UTC)


def envelopes(count: int, *, suspect: bool = False) -> list[Envelope]:
    return [
        Envelope(Message(AQ, 0, seq, b"{}", "application/json", NOW, 1), 1, suspect=suspect)
        for seq in range(1, count + 1)
    ]


@dataclass
class Batching:
    """Settles even seqs in its step; leaves odd ones to the handler."""

    fail: BaseException | None = None
    hang: bool = False
    prepared: list[list[int]] = field(default_factory=list)
    called: list[int] = field(default_factory=list)

    async def __call__(self, message: Message) -> Outcome:
        self.called.append(message.seq)
        return Retry(RetryReason.SERVER_ERROR, "handled in full")

    async def prepare(self, messages: Sequence[Message]) -> list[Prepared | None]:
        self.prepared.append([m.seq for m in messages])
        if self.hang:
            await asyncio.sleep(60)
        if self.fail is not None:
            raise self.fail
        return [
            Prepared(Ok(), log={"attachment_id": f"a{m.seq}"}) if m.seq % 2 == 0 else None
            for m in messages
        ]


async def test_settled_messages_need_no_handler_call_or_slot() -> None:
    handler = Batching()
    capacity = Capacity(1)
    runner = Runner({AQ: handler}, capacity, budget_seconds=5.0)

    with capture_logs(processors=[merge_log_context]) as logs:
        handled = await runner.run_all(envelopes(7), asyncio.Event())

    assert handler.prepared == [[1, 2, 3, 4, 5, 6, 7]]
    assert handler.called == [1, 3, 5, 7]  # not settled: handled as always
    assert [h.outcome == Ok() for h in handled] == [False, True] * 3 + [False]
    assert capacity.idle
    lines = {e["seq"]: e for e in logs if e["event"] == "message_handled"}
    assert sorted(lines) == [1, 2, 3, 4, 5, 6, 7]  # one line per message, settled or not
    assert lines[2]["outcome"] == "ok"
    assert (lines[2]["attachment_id"], lines[2]["queue"], lines[2]["partition"]) == ("a2", AQ, 0)
    assert "attachment_id" not in lines[3]
    # A settled message's ids stay on its own line.
    assert all("attachment_id" not in e for e in logs if e["event"] != "message_handled")


@pytest.mark.parametrize(
    "failure", [RuntimeError("bug"), DatabaseUnavailable("database down")], ids=["bug", "down"]
)
async def test_a_failing_step_leaves_every_message_to_its_handler(failure: Exception) -> None:
    handler = Batching(fail=failure)
    runner = Runner({AQ: handler}, Capacity(4), budget_seconds=5.0)

    with capture_logs() as logs:
        handled = await runner.run_all(envelopes(4), asyncio.Event())

    assert handler.called == [1, 2, 3, 4]
    assert all(isinstance(h.outcome, Retry) for h in handled)
    [warning] = [e for e in logs if e["event"] == "batch_prepare_failed"]
    assert warning["error"] == type(failure).__name__


async def test_a_hanging_step_is_cut_at_the_handler_budget() -> None:
    handler = Batching(hang=True)
    runner = Runner({AQ: handler}, Capacity(4), budget_seconds=0.2)

    handled = await asyncio.wait_for(runner.run_all(envelopes(2), asyncio.Event()), 5)

    assert handler.called == [1, 2]
    assert [h.outcome for h in handled] == [Retry(RetryReason.SERVER_ERROR, "handled in full")] * 2


async def test_suspect_messages_are_never_prepared() -> None:
    handler = Batching()
    runner = Runner({AQ: handler}, Capacity(4), budget_seconds=5.0)

    await runner.run_all(envelopes(3, suspect=True), asyncio.Event())

    assert handler.prepared == []
    assert handler.called == [1, 2, 3]


async def test_a_step_cancelled_by_shutdown_gives_back_every_admitted_message() -> None:
    handler = Batching(hang=True)
    capacity = Capacity(4)
    runner = Runner({AQ: handler}, capacity, budget_seconds=30.0)

    running = asyncio.create_task(runner.run_all(envelopes(3), asyncio.Event()))
    while not handler.prepared:  # noqa: ASYNC110 (waits for the step to start)
        await asyncio.sleep(0.01)
    assert capacity.taken == 3
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert capacity.idle
    assert handler.called == []


@dataclass
class CallsInSlots:
    """A ``CallSlotHandler``: work before and after its call, the call in ``provider_slot``."""

    slot_around_calls: Literal[True] = True
    may_finish: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[int] = field(default_factory=list)
    calling: int = 0
    most_calling: int = 0
    answered: int = 0
    all_answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, message: Message) -> Outcome:
        self.started.append(message.seq)  # the take, in the real handler
        async with provider_slot():
            self.calling += 1
            self.most_calling = max(self.most_calling, self.calling)
            await asyncio.sleep(0.01)
            self.calling -= 1
        self.answered += 1
        if self.answered == 3:
            self.all_answered.set()
        await self.may_finish.wait()  # the row write
        return Ok()


async def test_a_call_slot_handler_holds_its_slot_only_around_its_calls() -> None:
    """The slots ration provider calls: every message starts, one calls at a time (one slot),
    and a message writing its result holds none."""
    handler = CallsInSlots()
    capacity = Capacity(1)
    runner = Runner({AQ: handler}, capacity, budget_seconds=5.0)
    run = asyncio.create_task(runner.run_all(envelopes(3), asyncio.Event()))
    async with asyncio.timeout(5):  # each answered call frees the slot for the next
        await handler.all_answered.wait()
    assert sorted(handler.started) == [1, 2, 3]
    assert handler.most_calling == 1
    assert capacity.taken == 3  # unfinished until they return
    handler.may_finish.set()
    handled = await run
    assert [h.outcome for h in handled] == [Ok(), Ok(), Ok()]
    assert capacity.idle


async def test_any_other_handler_holds_its_slot_from_start_to_end() -> None:
    handler = CallsInSlots()
    plain = Recording(handler)  # the same work, not a CallSlotHandler
    runner = Runner({AQ: plain}, Capacity(1), budget_seconds=5.0)
    run = asyncio.create_task(runner.run_all(envelopes(2), asyncio.Event()))
    await asyncio.sleep(0.1)
    assert handler.started == [1]  # the second waits for the first's slot
    handler.may_finish.set()
    await run
    assert handler.started == [1, 2]


@dataclass
class Recording:
    """Calls another handler, without declaring ``slot_around_calls``."""

    inner: CallsInSlots

    async def __call__(self, message: Message) -> Outcome:
        return await self.inner(message)


async def test_outside_the_engine_a_provider_slot_is_nothing_to_wait_for() -> None:
    async with provider_slot():  # a handler called directly (tests, one-shot paths)
        pass


@dataclass
class CallsTaking:
    """A ``CallSlotHandler`` whose one call takes ``seconds``."""

    seconds: float
    slot_around_calls: Literal[True] = True

    async def __call__(self, message: Message) -> Outcome:
        async with provider_slot():
            await asyncio.sleep(self.seconds)
        return Ok()


async def test_waiting_for_a_slot_is_not_spent_from_the_handling_budget() -> None:
    """A CallSlotHandler's handling waits for its slot inside its handler, but the budget is
    for its own work: three calls of 0.2 s through one slot, with a 0.3 s budget, all end Ok
    (the third waited 0.4 s for the slot; for other handlers the engine waits before the
    budget starts)."""
    runner = Runner({AQ: CallsTaking(0.2)}, Capacity(1), budget_seconds=0.3)
    handled = await runner.run_all(envelopes(3), asyncio.Event())
    assert [h.outcome for h in handled] == [Ok(), Ok(), Ok()]


async def test_a_handler_still_overrunning_its_own_budget_is_stopped() -> None:
    runner = Runner({AQ: CallsTaking(60)}, Capacity(1), budget_seconds=0.2)
    [handled] = await runner.run_all(envelopes(1), asyncio.Event())
    assert isinstance(handled.outcome, Retry)
    assert handled.outcome.reason is RetryReason.HANDLER_TIMEOUT
