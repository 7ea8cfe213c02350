"""Queue registration (the original's rules): idempotent, partition counts checked."""

from __future__ import annotations

import pytest

from worker.errors import InvalidQueueName, PartitionCountMismatch
from worker.outbox.queues import partition_for, partition_ids, register_queue

from .helpers import AQ, CQ, count, rows


async def _rows_of(conn, queue: str) -> dict[str, list]:
    partitions = await rows(
        conn,
        "SELECT id, partition, sequence FROM modkit_outbox_partitions WHERE queue = %s"
        " ORDER BY partition",
        (queue,),
    )
    ids = [p["id"] for p in partitions]
    processors = await rows(
        conn,
        "SELECT partition_id, processed_seq, attempts, locked_by FROM modkit_outbox_processor"
        " WHERE partition_id = ANY(%s) ORDER BY partition_id",
        (ids,),
    )
    counters = await rows(
        conn,
        "SELECT partition_id, counter FROM modkit_outbox_vacuum_counter"
        " WHERE partition_id = ANY(%s) ORDER BY partition_id",
        (ids,),
    )
    return {"partitions": partitions, "processors": processors, "counters": counters}


async def test_registration_creates_partition_processor_and_counter_rows(conn):
    await register_queue(conn, "test.queue-1", 8)
    got = await _rows_of(conn, "test.queue-1")
    assert [p["partition"] for p in got["partitions"]] == list(range(8))
    assert {p["sequence"] for p in got["partitions"]} == {0}
    assert [p["partition_id"] for p in got["processors"]] == [p["id"] for p in got["partitions"]]
    assert {(p["processed_seq"], p["attempts"], p["locked_by"]) for p in got["processors"]} == {
        (0, 0, None)
    }
    assert [c["partition_id"] for c in got["counters"]] == [p["id"] for p in got["partitions"]]
    assert {c["counter"] for c in got["counters"]} == {0}


async def test_registration_is_idempotent(conn):
    await register_queue(conn, "test.q", 4)
    first = await partition_ids(conn, "test.q")
    before = await count(conn, "modkit_outbox_partitions")
    await register_queue(conn, "test.q", 4)
    assert await partition_ids(conn, "test.q") == first
    assert await count(conn, "modkit_outbox_partitions") == before
    assert await count(conn, "modkit_outbox_processor") == before
    assert await count(conn, "modkit_outbox_vacuum_counter") == before


async def test_default_queues_are_registered_by_the_fixture(conn):
    assert len(await partition_ids(conn, AQ)) == 4
    assert len(await partition_ids(conn, CQ)) == 4
    await register_queue(conn, AQ, 4)  # as migrate does on every start


async def test_mismatching_partition_count_is_refused(conn):
    await register_queue(conn, "test.q", 4)
    with pytest.raises(PartitionCountMismatch, match=r"registered with 4 partitions.*8"):
        await register_queue(conn, "test.q", 8)
    with pytest.raises(PartitionCountMismatch):
        await register_queue(conn, AQ, 2)
    assert len(await partition_ids(conn, "test.q")) == 4
    assert len(await partition_ids(conn, AQ)) == 4


async def test_multiple_queues_get_distinct_ids(conn):
    await register_queue(conn, "test.a", 2)
    await register_queue(conn, "test.b", 2)
    a = await partition_ids(conn, "test.a")
    b = await partition_ids(conn, "test.b")
    assert len(a) == len(b) == 2
    assert not set(a) & set(b)
    assert not set(a + b) & set(await partition_ids(conn, AQ) + await partition_ids(conn, CQ))


async def test_zero_and_non_power_of_two_partition_counts_are_rejected(conn):
    before = await count(conn, "modkit_outbox_partitions")
    for partitions in [0, -4, 3, 6, 12, 65, 128]:
        with pytest.raises(ValueError, match="power of two"):
            await register_queue(conn, "test.bad", partitions)
    assert await count(conn, "modkit_outbox_partitions") == before


async def test_power_of_two_partition_counts_are_accepted(conn):
    for partitions in [1, 2, 16, 64]:
        await register_queue(conn, f"test.p{partitions}", partitions)
        assert len(await partition_ids(conn, f"test.p{partitions}")) == partitions


async def test_bad_queue_names_are_rejected_at_registration(conn):
    before = await count(conn, "modkit_outbox_partitions")
    for name in ["", "-queue", "queue.", "has space", "ümlaut", "a/b", "x" * 1025]:
        with pytest.raises(InvalidQueueName):
            await register_queue(conn, name, 4)
    assert await count(conn, "modkit_outbox_partitions") == before


def test_partition_for_is_the_uuid_as_integer_modulo_the_count():
    from uuid import UUID

    key = UUID("00000000-0000-0000-0000-00000000000b")
    assert partition_for(key, 4) == 3
    assert partition_for(key, 8) == 3
    assert partition_for(key, 1) == 0
    big = UUID("ffffffff-ffff-ffff-ffff-fffffffffffe")
    assert partition_for(big, 4) == 2
    assert partition_for(big, 64) == (2**128 - 2) % 64
