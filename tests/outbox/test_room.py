"""A busy process leases only what it can soon start (scale-out across replicas)."""

from __future__ import annotations

import asyncio

from worker.models import Message, Ok

from .helpers import AQ, enqueue_many, make_engine, processor_row


async def test_a_busy_process_takes_batches_of_its_room_only(pool, conn):
    await enqueue_many(conn, AQ, 0, range(3))
    release = asyncio.Event()

    async def held(message: Message):
        if message.partition == 0:
            await release.wait()
        return Ok()

    engine = make_engine(pool, {AQ: held}, concurrency=4)
    await engine.sequence()
    busy = asyncio.create_task(engine.process_partitions(AQ, max_partitions=1))
    await asyncio.sleep(0.3)
    await enqueue_many(conn, AQ, 1, range(10))
    await engine.sequence()
    # 3 messages in flight: one free slot; room = 2 x 4 - 3 = 5 messages, not a whole batch.
    report = await engine.process_partitions(AQ, max_partitions=1)
    assert report.handled == 5
    release.set()
    assert (await busy).handled == 3


async def test_a_process_with_every_slot_running_leases_the_next_messages_ahead(pool, conn):
    """4 slots, 4 running: it still wants a quarter of its slots queued, so a slot that frees
    starts its next message without waiting for a lease and a read; it takes its room."""
    await enqueue_many(conn, AQ, 0, range(4))
    release = asyncio.Event()

    async def held(message: Message):
        if message.partition == 0:
            await release.wait()
        return Ok()

    engine = make_engine(pool, {AQ: held}, concurrency=4, batch_size=4)
    await engine.sequence()
    busy = asyncio.create_task(engine.process_partitions(AQ, max_partitions=1))
    await asyncio.sleep(0.3)
    await enqueue_many(conn, AQ, 1, range(10))
    await engine.sequence()
    assert await engine.wait_for_capacity(timeout=0.0)
    ahead = await engine.process_partitions(AQ, max_partitions=1)
    assert ahead.handled == 4  # room = 2 x 4 - 4
    release.set()
    assert (await busy).handled == 4


async def test_a_saturated_process_leaves_partitions_to_others(pool, conn):
    await enqueue_many(conn, AQ, 0, range(4))
    await enqueue_many(conn, AQ, 1, range(4))
    release = asyncio.Event()

    async def held(message: Message):
        await release.wait()
        return Ok()

    engine = make_engine(pool, {AQ: held}, concurrency=2)
    await engine.sequence()
    busy = asyncio.create_task(engine.process_partitions(AQ, max_partitions=1))
    await asyncio.sleep(0.3)
    # No free slot: it leases nothing, and another replica takes the other partition.
    idle = await engine.process_partitions(AQ, max_partitions=1)
    assert idle.partitions == 0
    other = make_engine(pool, {AQ: _ok})
    assert (await other.process_partitions(AQ, max_partitions=1)).handled == 4
    release.set()
    assert (await busy).handled == 4


async def test_stop_means_lease_nothing(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    engine = make_engine(pool, {AQ: _ok})
    await engine.sequence()
    stop = asyncio.Event()
    stop.set()
    assert (await engine.process_partitions(AQ, max_partitions=4, stop=stop)).partitions == 0
    assert (await processor_row(conn, AQ, 0))["locked_by"] is None


async def test_a_full_process_wakes_one_waiting_lane_per_finished_message(pool, conn):
    await enqueue_many(conn, AQ, 0, range(2))
    releases = {0: asyncio.Event(), 1: asyncio.Event()}

    async def held(message: Message):
        await releases[message.seq - 1].wait()
        return Ok()

    engine = make_engine(pool, {AQ: held}, concurrency=2)
    await engine.sequence()
    assert await engine.wait_for_capacity(timeout=0.0)  # idle: free at once
    busy = asyncio.create_task(engine.process_partitions(AQ, max_partitions=1))
    await asyncio.sleep(0.3)
    # Full: a waiter gives up after its timeout with no slot.
    assert not await engine.wait_for_capacity(timeout=0.2)
    lanes = [asyncio.create_task(engine.wait_for_capacity(timeout=30)) for _ in range(3)]
    await asyncio.sleep(0.1)
    assert not any(lane.done() for lane in lanes)
    releases[0].set()
    await asyncio.sleep(0.3)
    assert [lane.done() for lane in lanes] == [True, False, False]  # one slot, one lane
    assert lanes[0].result() is True
    releases[1].set()
    await busy
    await asyncio.sleep(0.1)
    assert [lane.done() for lane in lanes] == [True, True, False]
    lanes[2].cancel()


async def test_lanes_leasing_at_once_see_each_others_batches(pool, conn):
    """Lanes of one process decide how much to lease before the database answers: an idle
    process's lanes must not all see it idle and each take a whole batch."""
    for partition in range(3):
        await enqueue_many(conn, AQ, partition, range(10))
    release = asyncio.Event()

    async def held(message: Message):
        await release.wait()
        return Ok()

    engine = make_engine(pool, {AQ: held}, concurrency=4, batch_size=10)
    await engine.sequence()
    lanes = [asyncio.create_task(engine.process_partitions(AQ, max_partitions=1))
             for _ in range(3)]  # fmt: skip
    await asyncio.sleep(0.5)
    release.set()
    reports = await asyncio.gather(*lanes)
    assert sorted(r.handled for r in reports) == [0, 0, 10]  # one batch; two partitions left
    other = make_engine(pool, {AQ: _ok})
    assert (await other.process_partitions(AQ, max_partitions=4)).handled == 20


async def _ok(message: Message) -> Ok:
    return Ok()
