"""Enqueue inside the caller's transaction (§4.1): validation and atomicity."""

from __future__ import annotations

import pytest

from worker.errors import (
    InvalidPayloadType,
    InvalidQueueName,
    OutboxError,
    PartitionOutOfRange,
    PayloadTooLarge,
    QueueNotRegistered,
)
from worker.outbox.enqueue import MAX_PAYLOAD_BYTES, enqueue

from .helpers import AQ, CQ, count, rows


async def _nothing_written(conn) -> None:
    assert await count(conn, "modkit_outbox_body") == 0
    assert await count(conn, "modkit_outbox_incoming") == 0


async def test_enqueue_writes_body_and_incoming_row(conn):
    incoming_id = await enqueue(conn, CQ, 3, b'{"k": 1}')
    [row] = await rows(
        conn,
        "SELECT i.id, p.queue, p.partition, b.payload, b.payload_type, b.created_at"
        " FROM modkit_outbox_incoming i JOIN modkit_outbox_partitions p ON p.id = i.partition_id"
        " JOIN modkit_outbox_body b ON b.id = i.body_id",
    )
    assert row["id"] == incoming_id
    assert (row["queue"], row["partition"]) == (CQ, 3)
    assert bytes(row["payload"]) == b'{"k": 1}'
    assert row["payload_type"] == "application/json"
    assert row["created_at"] is not None


async def test_bad_queue_names_rejected(conn):
    for name in ["", "-a", "a-", ".a", "a b", "a\nb", "é", "x" * 1025]:
        with pytest.raises(InvalidQueueName):
            await enqueue(conn, name, 0, b"{}")
    await _nothing_written(conn)


async def test_unregistered_queue_rejected(conn):
    with pytest.raises(QueueNotRegistered, match="not registered"):
        await enqueue(conn, "mini-chat.never_registered", 0, b"{}")
    await _nothing_written(conn)


async def test_partition_out_of_range_rejected(conn):
    for partition in [-1, 4, 1000]:
        with pytest.raises(PartitionOutOfRange, match=r"0\.\.3"):
            await enqueue(conn, AQ, partition, b"{}")
    await _nothing_written(conn)


async def test_payload_over_64_kib_rejected_and_exactly_64_kib_accepted(conn):
    assert MAX_PAYLOAD_BYTES == 64 * 1024
    with pytest.raises(PayloadTooLarge):
        await enqueue(conn, AQ, 0, b"x" * (64 * 1024 + 1))
    await _nothing_written(conn)
    await enqueue(conn, AQ, 0, b"y" * (64 * 1024))
    [row] = await rows(conn, "SELECT length(payload) AS n FROM modkit_outbox_body")
    assert row["n"] == 64 * 1024


async def test_bad_payload_types_rejected(conn):
    for payload_type in ["", "x" * 1025, "text/plain\n", "tab\there", "jsön", "\x7f"]:
        with pytest.raises(InvalidPayloadType):
            await enqueue(conn, AQ, 0, b"{}", payload_type)
    await _nothing_written(conn)


async def test_printable_ascii_payload_types_accepted(conn):
    await enqueue(conn, AQ, 0, b"{}", "x" * 1024)
    await enqueue(conn, AQ, 0, b"plain", "text/plain; charset=utf-8")
    assert await count(conn, "modkit_outbox_body") == 2


async def test_payload_that_is_not_bytes_is_refused(conn):
    # A str would otherwise be parsed by PostgreSQL as bytea text ('\x41' -> b'A').
    for bad in ['{"json": "as str"}', "\\x41", {"a": 1}, None, 42]:
        with pytest.raises(TypeError, match="bytes"):
            await enqueue(conn, AQ, 0, bad)
    await _nothing_written(conn)


async def test_bytearray_and_memoryview_payloads_accepted(conn):
    await enqueue(conn, AQ, 0, bytearray(b'{"a": 1}'))
    await enqueue(conn, AQ, 0, memoryview(b'{"b": 2}'))
    stored = await rows(conn, "SELECT payload FROM modkit_outbox_body ORDER BY id")
    assert [bytes(r["payload"]) for r in stored] == [b'{"a": 1}', b'{"b": 2}']


async def test_enqueue_rolls_back_with_the_callers_transaction(conn):
    async def caller() -> None:
        async with conn.transaction():
            await enqueue(conn, AQ, 0, b'{"n": 1}')
            await enqueue(conn, CQ, 1, b'{"n": 2}')
            raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError, match="caller failed"):
        await caller()
    await _nothing_written(conn)


async def test_a_refused_enqueue_aborts_the_whole_transaction(conn):
    async def caller() -> None:
        async with conn.transaction():
            await enqueue(conn, AQ, 0, b'{"n": 1}')
            await enqueue(conn, AQ, 9, b'{"n": 2}')

    with pytest.raises(OutboxError):
        await caller()
    await _nothing_written(conn)


async def test_enqueue_commits_with_the_callers_transaction(conn):
    async with conn.transaction():
        await enqueue(conn, AQ, 0, b'{"n": 1}')
        await enqueue(conn, AQ, 1, b'{"n": 2}')
    assert await count(conn, "modkit_outbox_incoming") == 2
