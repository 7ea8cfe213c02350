"""Enqueue inside the caller's transaction (SPEC §4.1).

The message exists if and only if the caller's transaction commits: a soft-delete and its
cleanup message are written together or not at all.
"""

from __future__ import annotations

from worker.db import Conn
from worker.db.queries import q
from worker.errors import InvalidPayloadType, PartitionOutOfRange, PayloadTooLarge
from worker.outbox.queues import require_partition_ids, validate_queue_name

MAX_PAYLOAD_BYTES = 64 * 1024
JSON = "application/json"


def validate_payload_type(payload_type: str) -> str:
    if not 1 <= len(payload_type) <= 1024 or not all(32 <= ord(c) < 127 for c in payload_type):
        raise InvalidPayloadType(
            f"invalid payload type {payload_type[:80]!r}: use 1-1024 printable ASCII characters"
        )
    return payload_type


def validate_payload(payload: bytes) -> bytes:
    # A str would reach PostgreSQL as bytea *text* input ('\x41' is stored as b'A'): refuse it.
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(
            f"payload must be bytes, got {type(payload).__name__}: encode it first "
            "(e.g. json.dumps(event).encode())"
        )
    size = memoryview(payload).nbytes
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload of {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    return payload


async def enqueue(
    conn: Conn,
    queue: str,
    partition: int,
    payload: bytes,
    payload_type: str = JSON,
) -> int:
    """Write one message; returns its incoming id. Raises an OutboxError, writing nothing."""
    validate_queue_name(queue)
    validate_payload_type(payload_type)
    validate_payload(payload)
    partition_ids = await require_partition_ids(conn, queue)
    if not 0 <= partition < len(partition_ids):
        raise PartitionOutOfRange(
            f"partition {partition} out of range for queue {queue!r} (0..{len(partition_ids) - 1})"
        )
    cur = await conn.execute(
        q("enqueue"),
        {
            "partition_id": partition_ids[partition],
            "payload": payload,
            "payload_type": payload_type,
        },
    )
    row = await cur.fetchone()
    assert row is not None  # an INSERT ... RETURNING of one row
    return int(row[0])
