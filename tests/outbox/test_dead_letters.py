"""Dead letters for operators (§4.6): list, replay, resolve, reject again, discard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.models import Message, Ok, Reject, Retry, RetryReason
from worker.outbox import dead_letters as dl
from worker.outbox.dead_letters import Filter

from .helpers import (
    AQ,
    CQ,
    Recorder,
    count,
    dead_letters,
    drain,
    enqueue_many,
    make_engine,
    make_retries_due,
    payload,
    retry_rows,
    rows,
)


def _reject_all(message: Message):
    return Reject(f"bad payload {message.seq}")


async def _make_dead_letters(pool, conn) -> dict[Any, Any]:
    """Two dead letters on the attachment queue (partitions 0 and 3), one on the chat queue.

    Returns ids by queue (sorted lists) and by (queue, partition).
    """
    await enqueue_many(conn, AQ, 0, range(1))
    await enqueue_many(conn, AQ, 3, range(1, 2))
    await enqueue_many(conn, CQ, 1, range(2, 3))
    engine = make_engine(pool, {AQ: Recorder(_reject_all), CQ: Recorder(_reject_all)})
    await drain(engine, AQ)
    await drain(engine, CQ)
    made = await dead_letters(conn)
    assert len(made) == 3
    ids: dict[Any, Any] = {(d["queue"], d["partition"]): d["id"] for d in made}
    ids[AQ] = sorted(d["id"] for d in made if d["queue"] == AQ)
    ids[CQ] = [d["id"] for d in made if d["queue"] == CQ]
    return ids


async def test_list_returns_the_fields(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    [letter] = await dl.list_dead_letters(conn, Filter(queue=CQ))
    assert letter.id == ids[CQ][0]
    assert (letter.queue, letter.partition, letter.seq) == (CQ, 1, 1)
    assert letter.payload == payload(2)
    assert letter.payload_type == "application/json"
    assert isinstance(letter.created_at, datetime)
    assert letter.failed_at >= letter.created_at
    assert letter.last_error == "bad payload 1"
    assert letter.attempts == 1
    assert letter.status == "pending"
    assert letter.completed_at is None
    assert letter.deadline is None


async def test_list_filters(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    everything = await dl.list_dead_letters(conn, Filter())
    assert sorted(d.id for d in everything) == sorted(ids[AQ] + ids[CQ])
    newest_first = sorted(everything, key=lambda d: (d.failed_at, d.id), reverse=True)
    assert everything == newest_first
    assert sorted(d.id for d in await dl.list_dead_letters(conn, Filter(queue=AQ))) == ids[AQ]
    assert await dl.list_dead_letters(conn, Filter(queue="mini-chat.other")) == []
    assert len(await dl.list_dead_letters(conn, Filter(status="pending"))) == 3
    assert await dl.list_dead_letters(conn, Filter(status="resolved")) == []
    picked = await dl.list_dead_letters(conn, Filter(ids=[ids[AQ, 3]]))
    assert [(d.id, d.partition) for d in picked] == [(ids[AQ, 3], 3)]
    assert len(await dl.list_dead_letters(conn, Filter(limit=2))) == 2
    assert len(await dl.list_dead_letters(conn, Filter(queue=AQ, limit=1))) == 1
    await dl.discard(conn, Filter(ids=[ids[CQ][0]]))
    discarded = await dl.list_dead_letters(conn, Filter(status="discarded"))
    assert [d.id for d in discarded] == ids[CQ]
    assert await dl.list_dead_letters(conn, Filter(queue=AQ, status="discarded")) == []


async def test_replay_reenqueues_and_resolves_once_processed(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    target = ids[AQ, 3]
    assert await dl.replay(conn, Filter(ids=[target])) == [target]

    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "reprocessing"
    assert letter.deadline is not None
    [incoming] = await rows(
        conn,
        "SELECT p.queue, p.partition, b.payload, b.payload_type FROM modkit_outbox_incoming i"
        " JOIN modkit_outbox_partitions p ON p.id = i.partition_id"
        " JOIN modkit_outbox_body b ON b.id = i.body_id",
    )
    assert (incoming["queue"], incoming["partition"]) == (AQ, 3)
    assert bytes(incoming["payload"]) == payload(1)
    assert incoming["payload_type"] == "application/json"
    # Claimed already: a second replay does not enqueue it twice.
    assert await dl.replay(conn, Filter(ids=[target])) == []
    assert await count(conn, "modkit_outbox_incoming") == 1

    handler = Recorder()
    await drain(make_engine(pool, {AQ: handler}), AQ)
    assert [(m.partition, m.seq, m.payload) for m in handler.seen] == [(3, 2, payload(1))]
    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "resolved"
    assert letter.completed_at is not None
    assert await count(conn, "modkit_outbox_dead_letters") == 3  # resolved, not duplicated
    others = await dl.list_dead_letters(conn, Filter(status="pending"))
    assert sorted(d.id for d in others) == sorted([ids[AQ, 0], ids[CQ, 1]])


async def test_replayed_message_rejected_again_returns_to_pending(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    target = ids[CQ][0]
    await dl.replay(conn, Filter(queue=CQ))
    handler = Recorder(lambda m: Reject("still broken"))
    await drain(make_engine(pool, {CQ: handler}), CQ)
    assert len(handler.seen) == 1
    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "pending"
    assert letter.attempts == 2
    assert letter.last_error == "still broken"
    assert letter.deadline is None
    assert letter.completed_at is None
    assert await count(conn, "modkit_outbox_dead_letters") == 3
    # ... and can be replayed again.
    assert await dl.replay(conn, Filter(ids=[target])) == [target]


async def test_replayed_message_retried_then_ok_resolves(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    target = ids[AQ][0]
    await dl.replay(conn, Filter(ids=[target]))

    def decide(message: Message):
        return Retry(RetryReason.SERVER_ERROR, "503") if message.delivery == 1 else Ok()

    engine = make_engine(pool, {AQ: Recorder(decide)})
    await drain(engine, AQ)
    [parked] = await retry_rows(conn)
    assert parked["dead_letter_id"] == target
    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "reprocessing"
    await make_retries_due(conn)
    await engine.process_retries(limit=10)
    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "resolved"
    assert letter.completed_at is not None


async def test_discard_and_replay_of_a_discarded_letter_does_nothing(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    target = ids[AQ][0]
    assert await dl.discard(conn, Filter(ids=[target])) == [target]
    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "discarded"
    assert letter.completed_at is not None
    assert await dl.discard(conn, Filter(ids=[target])) == []  # only pending ones
    assert await dl.replay(conn, Filter(ids=[target])) == []
    assert await count(conn, "modkit_outbox_incoming") == 0
    [letter] = await dl.list_dead_letters(conn, Filter(ids=[target]))
    assert letter.status == "discarded"


async def test_discard_by_queue_leaves_other_queues(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    assert await dl.discard(conn, Filter(queue=AQ)) == sorted(ids[AQ])
    [left] = await dl.list_dead_letters(conn, Filter(status="pending"))
    assert left.id == ids[CQ][0]


async def test_orphaned_replay_past_its_deadline_can_be_replayed_again(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    target = ids[CQ][0]
    await dl.replay(conn, Filter(ids=[target]))
    assert await dl.replay(conn, Filter(ids=[target])) == []
    await conn.execute(
        "UPDATE modkit_outbox_dead_letters SET deadline = now() - interval '1 second'"
        " WHERE id = %s",
        (target,),
    )
    assert await dl.replay(conn, Filter(ids=[target])) == [target]
    assert await count(conn, "modkit_outbox_incoming") == 2


async def test_replay_with_limit_claims_oldest_first(pool, conn):
    ids = await _make_dead_letters(pool, conn)
    first = await dl.replay(conn, Filter(limit=2))
    assert first == sorted(ids[AQ] + ids[CQ])[:2]
    assert await count(conn, "modkit_outbox_incoming") == 2
