"""The process's capacity: taken = reserved + unfinished, slots bounded, waiting lanes woken one
per freed message (worker/outbox/capacity.py). No database: the object is plain asyncio."""

from __future__ import annotations

import asyncio

import pytest

from worker.outbox.capacity import Capacity


async def _let_run() -> None:
    """Give woken tasks their turns on the loop (a wake-up takes a few iterations)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_taken_is_reserved_plus_unfinished_and_bounds_wanted_and_room() -> None:
    capacity = Capacity(4)  # ahead: 1 queued while all 4 slots run
    assert (capacity.idle, capacity.wanted, capacity.room) == (True, 5, 8)
    assert capacity.lease_limit(10) == 10  # idle: a whole batch

    capacity.reserve(3)  # a lane is leasing
    assert (capacity.taken, capacity.wanted, capacity.room, capacity.idle) == (3, 2, 5, False)
    assert capacity.lease_limit(10) == 5  # busy: its room only
    assert capacity.lease_limit(2) == 2  # never more than a batch

    capacity.admit(2)  # another lane's batch runs
    assert (capacity.taken, capacity.wanted, capacity.room) == (5, 0, 3)
    capacity.unreserve(3)  # the lease found nothing
    assert (capacity.taken, capacity.wanted, capacity.room) == (2, 3, 6)
    capacity.finish()
    capacity.finish()
    assert capacity.idle


def test_a_process_with_every_slot_running_still_wants_a_quarter_of_its_slots_queued() -> None:
    """So a slot that frees has its next message at hand, not a lease and a read away."""
    capacity = Capacity(64)
    capacity.admit(64)
    assert (capacity.wanted, capacity.room) == (16, 64)
    capacity.admit(16)
    assert capacity.wanted == 0
    few = Capacity(3)
    few.admit(3)
    assert few.wanted == 0  # a quarter of 3 slots is none: nothing queued ahead


def test_wanted_and_room_never_go_below_zero() -> None:
    capacity = Capacity(2)
    capacity.admit(7)  # a batch larger than the room (a retry round takes its whole limit)
    assert (capacity.wanted, capacity.room, capacity.lease_limit(10)) == (0, 0, 0)


def test_giving_back_what_was_never_taken_is_a_bug() -> None:
    capacity = Capacity(2)
    capacity.reserve(1)
    with pytest.raises(RuntimeError, match="unreserving 2 messages, 1 reserved"):
        capacity.unreserve(2)
    with pytest.raises(RuntimeError, match="never admitted"):
        capacity.finish()
    with pytest.raises(ValueError, match="at least one handler slot"):
        Capacity(0)


async def test_at_most_slots_handlers_run_at_once() -> None:
    capacity = Capacity(2)
    running = peak = 0

    async def handler() -> None:
        nonlocal running, peak
        async with capacity.slot():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(handler() for _ in range(5)))
    assert peak == 2


async def test_an_idle_process_wants_at_once_and_a_full_one_waits_until_the_timeout() -> None:
    capacity = Capacity(1)
    assert await capacity.wait_until_wanted(timeout=0.0)
    capacity.admit(1)
    assert not await capacity.wait_until_wanted(timeout=0.05)
    capacity.finish()
    assert await capacity.wait_until_wanted(timeout=0.0)


async def test_each_finished_message_wakes_one_waiting_lane() -> None:
    capacity = Capacity(2)
    capacity.admit(2)
    lanes = [asyncio.create_task(capacity.wait_until_wanted(timeout=30)) for _ in range(3)]
    await _let_run()
    assert not any(lane.done() for lane in lanes)

    capacity.finish()
    await _let_run()
    assert [lane.done() for lane in lanes] == [True, False, False]  # one slot, one lane
    assert lanes[0].result() is True

    capacity.finish()
    await _let_run()
    assert [lane.done() for lane in lanes] == [True, True, False]
    lanes[2].cancel()


async def test_a_reservation_given_back_wakes_up_to_that_many_lanes() -> None:
    capacity = Capacity(2)
    capacity.reserve(2)  # lanes leasing: the process looks full
    lanes = [asyncio.create_task(capacity.wait_until_wanted(timeout=30)) for _ in range(3)]
    await _let_run()
    assert not any(lane.done() for lane in lanes)

    capacity.unreserve(2)  # the leases found nothing
    await _let_run()
    assert [lane.done() for lane in lanes] == [True, True, False]
    lanes[2].cancel()


async def test_a_reservation_handed_to_the_runner_keeps_the_slots_taken() -> None:
    """The engine's path for a read batch: unreserve, then admit with no await between, so a
    lane woken by the unreserve finds the slots taken again and waits on."""
    capacity = Capacity(1)
    capacity.reserve(1)
    lane = asyncio.create_task(capacity.wait_until_wanted(timeout=30))
    await _let_run()

    capacity.unreserve(1)
    capacity.admit(1)
    await _let_run()
    assert not lane.done()  # woken, found no free slot, waiting again

    capacity.finish()
    await _let_run()
    assert lane.done()
    assert lane.result() is True


async def test_a_lane_that_gave_up_is_not_woken_in_place_of_one_still_waiting() -> None:
    capacity = Capacity(1)
    capacity.admit(1)
    gave_up = asyncio.create_task(capacity.wait_until_wanted(timeout=0.05))
    waiting = asyncio.create_task(capacity.wait_until_wanted(timeout=30))
    assert await gave_up is False

    capacity.finish()  # its waiter is first in line, but done: the next one is woken
    await _let_run()
    assert waiting.done()
    assert waiting.result() is True


async def test_a_cancelled_lane_is_skipped_too() -> None:
    capacity = Capacity(1)
    capacity.admit(1)
    cancelled = asyncio.create_task(capacity.wait_until_wanted(timeout=30))
    waiting = asyncio.create_task(capacity.wait_until_wanted(timeout=30))
    await _let_run()
    cancelled.cancel()
    await _let_run()

    capacity.finish()
    await _let_run()
    assert waiting.done()
    assert waiting.result() is True


async def test_a_slot_given_back_early_starts_the_next_handler_and_is_not_given_back_twice() -> (
    None
):
    capacity = Capacity(1)
    order: list[str] = []
    first_may_end = asyncio.Event()

    async def first() -> None:
        async with capacity.slot() as hold:
            order.append("first answered")
            hold.release()
            hold.release()  # idempotent: the slot is not counted free twice
            await first_may_end.wait()
            order.append("first returned")

    async def later(name: str) -> None:
        async with capacity.slot():
            order.append(f"{name} started")
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(first()), asyncio.create_task(later("second"))]
    await _let_run()
    assert order == ["first answered", "second started"]  # before the first returned
    third = asyncio.create_task(later("third"))
    await _let_run()
    assert "third started" not in order  # the second holds the only slot
    first_may_end.set()
    await asyncio.gather(*tasks, third)
    assert order[-1] == "third started"


async def test_a_slot_not_taken_at_once_is_held_only_between_acquire_and_release() -> None:
    capacity = Capacity(1)
    async with capacity.slot(at_once=False) as lazy:
        assert not lazy.held
        async with capacity.slot() as other:  # the only slot is free: taken at once
            assert other.held
            waiting = asyncio.create_task(lazy.acquire())
            await _let_run()
            assert not waiting.done()  # at most one holder
        await waiting
        assert lazy.held
        await lazy.acquire()  # already held: not taken twice
        lazy.release()
        assert not lazy.held
        async with capacity.slot() as again:
            assert again.held
