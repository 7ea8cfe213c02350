"""Bugs the reliability suite found, each pinned by a focused test that failed until it was
fixed and now guards against its return (docs/RELIABILITY.md "Findings": analysis and fix).

1. A lease heartbeat that survives its cancellation keeps a partition leased for ever.
2-4. Payloads that crash the payload parser or the SDK instead of being rejected.
5. The log redactor is quadratic in the length of a token.
6. Calls never sent to the provider count as cleanup attempts (files end failed untried).
7. A stale batch of a process acks under the same process's newer lease of the partition.
9. Suspect messages of two partitions handled "alone" at once: one's death charged to both.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import psycopg_pool
import pytest
from outbox.helpers import AQ, enqueue_many, expire_lease, make_engine

from worker.handlers.payloads import (
    JSON,
    InvalidPayload,
    parse_attachment_deleted,
    parse_chat_soft_deleted,
)
from worker.models import Message, Ok
from worker.observability.logging import redact_secrets
from worker.outbox import processor
from worker.outbox.leases import heartbeat

WORKER = "reliability-finding-1"


# -- 1. a zombie heartbeat ----------------------------------------------------------------------


@pytest.fixture
async def one_connection_pool(db: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool]:
    """The real psycopg_pool with one connection, handing a returned connection straight to
    the next waiter (no reset callback: the hand-off happens inside ``putconn``)."""
    async with psycopg_pool.AsyncConnectionPool(
        db, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    ) as pool:
        await pool.wait()
        yield pool


async def test_heartbeat_stops_when_its_batch_ends_even_if_the_pool_swallows_the_cancel(
    db: str, one_connection_pool: psycopg_pool.AsyncConnectionPool
) -> None:
    """The batch is done and ``heartbeat()`` exits: its task must stop.

    On Python 3.11 (the image's Python) psycopg_pool waits for a free connection with
    ``asyncio.wait_for``, which *swallows* a cancellation that arrives in the same loop
    iteration as the connection (CPython gh-86296, fixed in 3.12 only). The heartbeat then
    never sees its cancel: it keeps extending the lease every lease/3 seconds, and the
    ``await gather(task)`` in ``heartbeat()``'s ``finally`` waits for ever. The lane is
    wedged and the partition stays leased (and extended) until the process dies: every
    message in it stalls. Seen in the reliability scenarios under connection-pool contention
    (bad-input flood, database restart): the audit shows a lease extended for minutes with the
    cursor not moving.

    Here the race is made deterministic: the only connection of the pool is handed to the
    waiting heartbeat in the same iteration as the cancel, exactly as ``heartbeat()`` does it
    when a batch ends while the heartbeat waits for a connection.
    """
    pool = one_connection_pool
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute(
            "UPDATE modkit_outbox_processor SET locked_by = %s,"
            " locked_until = now() + interval '1 minute'"
            " WHERE partition_id = (SELECT min(partition_id) FROM modkit_outbox_processor)"
            " RETURNING partition_id",
            (WORKER,),
        )
        row = await cur.fetchone()
        assert row is not None
        partition_id = row[0]
    beats = 0
    lease = processor.PartitionLease(
        "q", partition_id, 0, processed_seq=0, attempts=0, token=WORKER
    )

    async def extend() -> bool:  # what Engine._process_lease gives the heartbeat
        nonlocal beats
        beats += 1
        return await processor.extend_lease(pool, lease, lease_seconds=60)

    async def batch() -> None:
        held = await pool.getconn()
        async with heartbeat(extend, lease_seconds=0.6):  # beats every 0.2 s
            await asyncio.sleep(0.5)  # the heartbeat now waits for the pool's only connection
            # The batch ends: hand the connection back; heartbeat() cancels its task at once.
            await pool.putconn(held)

    task = asyncio.create_task(batch())
    done, _ = await asyncio.wait({task}, timeout=3.0)
    if not done:
        task.cancel()  # a second cancel is not swallowed: clean up the zombie
        await asyncio.gather(task, return_exceptions=True)
    before = beats
    await asyncio.sleep(0.5)
    assert done, (
        "heartbeat() did not return 3 s after its batch ended: the heartbeat task swallowed "
        f"its cancellation and kept extending the lease ({before} beats)"
    )
    assert beats == before, "the heartbeat kept beating after its batch ended"


# -- 2-4. bad payloads that are not rejected -----------------------------------------------


def _attachment_event(**changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_type": "attachment_deleted",
        "tenant_id": str(uuid.uuid4()),
        "chat_id": str(uuid.uuid4()),
        "attachment_id": str(uuid.uuid4()),
        "provider_file_id": "file-abc",
        "storage_backend": "openai",
        "attachment_kind": "document",
    }
    event.update(changes)
    return event


@pytest.mark.parametrize("parse", [parse_attachment_deleted, parse_chat_soft_deleted])
def test_deeply_nested_json_is_rejected_as_invalid_json(parse: object) -> None:
    """``json.loads`` raises RecursionError (not JSONDecodeError) past ~1000 levels; it escapes
    ``_json_object`` and the handler, so the message is retried as ``handler_error`` (a
    ``handler_crashed`` traceback each time) until max_deliveries, and the dead letter says
    "handler_error: RecursionError" instead of what is wrong with the payload."""
    payload = b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(InvalidPayload, match="JSON"):
        parse(payload, JSON)  # type: ignore[operator]


@pytest.mark.parametrize("parse", [parse_attachment_deleted, parse_chat_soft_deleted])
def test_a_huge_integer_is_rejected_as_invalid_json(parse: object) -> None:
    """Python caps int-from-text conversion at 4300 digits: ``json.loads`` raises ValueError
    (not JSONDecodeError) for a longer number anywhere in the document: same escape."""
    payload = b'{"tenant_id": ' + b"9" * 5_000 + b"}"
    with pytest.raises(InvalidPayload, match="JSON"):
        parse(payload, JSON)  # type: ignore[operator]


def test_a_provider_file_id_that_is_not_valid_unicode_is_rejected() -> None:
    """``"\\ud800"`` is valid JSON, but a lone surrogate is not text: it passes ``_text``, then
    the SDK's URL quoting raises UnicodeEncodeError inside the gateway (which only translates
    SDK / transport errors), the handler crashes and the message is retried as
    ``handler_error`` until max_deliveries. It should be rejected naming the field."""
    payload = json.dumps(_attachment_event(provider_file_id="file-\ud800x")).encode()
    with pytest.raises(InvalidPayload, match="provider_file_id"):
        parse_attachment_deleted(payload, JSON)


# -- 5. the log redactor ------------------------------------------------------------------------


def test_redacting_a_long_token_takes_linear_time() -> None:
    """``redact_secrets`` runs the first credential pattern
    (``[\\w-]*(?:authorization|api[-_]?key|…)``) from every position of a run of word
    characters: quadratic. 8 000 characters take seconds and 60 000 (a 64 KiB payload's worth)
    minutes, with the event loop blocked (no heartbeats: leases expire). Any logged value with a
    long token hits it. Linear would be about a millisecond here."""
    text = "A" * 8_000
    started = time.perf_counter()
    redact_secrets(text)
    took = time.perf_counter() - started
    assert took < 0.5, f"redact_secrets() of an 8 000-character token took {took:.1f}s"


# -- 6. attempts burnt by calls that were never sent --------------------------------------------


async def test_a_file_never_sent_to_the_provider_is_not_failed(db: str) -> None:
    """``cleanup_attempts`` also counts calls the gateway never sent (route paused by a 429's
    Retry-After, route slots busy past the call budget, circuit open or half-open with its one
    probe in flight, a tenant without routing): every delivery of a chat adds one to each
    pending file whether or not it was tried. A tenant rate-limited across a few deliveries, or
    an upstream that recovers while the breaker is half-open, gets files marked ``failed``
    (terminal: leaked until an operator runs retry-failed) that were never once sent.

    Here one file keeps answering 429 with ``Retry-After: 3`` (longer than the in-call wait
    cap, so the route pauses); its four siblings are never sent, yet once the hint has passed
    and the chat is delivered again (``max_attempts`` = 2) they are ``failed``.
    """
    from factories import create_attachment, create_chat
    from handlers.support import CQ, KEYS, build_config

    from cwlab.fake_openai import FakeOpenAI, Fault
    from worker import producer
    from worker.runtime.app import open_app

    queues = producer.Queues("mini-chat.attachment_cleanup", 4, CQ, 4)
    with FakeOpenAI(api_keys=KEYS.values()) as fake:
        config = build_config(db, fake, max_attempts=2, file_concurrency=1)
        async with (
            open_app(config, environ=dict(KEYS)) as app,
            await psycopg.AsyncConnection.connect(db, autocommit=True) as conn,
        ):
            chat = await create_chat(conn, uuid.uuid4())
            first = uuid.UUID(int=1)  # cleaned first (pending attachments are read by id)
            files = []
            for n in range(5):
                att = await create_attachment(
                    conn, chat.id, chat.tenant_id, attachment_id=first if n == 0 else None
                )
                fake.add_file(att.provider_file_id)
                files.append(att.provider_file_id)
            fake.inject(Fault(status=429, headers={"Retry-After": "3"}, path_contains=files[0]))
            await producer.delete_chat(
                conn, queues, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id
            )
            await app.engine.sequence()
            await app.engine.process_partitions(CQ, max_partitions=4)
            deadline = time.monotonic() + 15  # the retrier honours the hint: about 3 s
            while not (await app.engine.process_retries(limit=10)).handled:
                assert time.monotonic() < deadline, "the chat was never delivered again"
                await asyncio.sleep(0.2)
            cur = await conn.execute(
                "SELECT provider_file_id, cleanup_status, cleanup_attempts FROM attachments"
            )
            rows = await cur.fetchall()
    sent = {r.resource_id for r in fake.requests()}
    never_sent = [(f, status, attempts) for f, status, attempts in rows if f not in sent]
    assert len(never_sent) == 4, (sent, rows)
    assert all(status != "failed" for _, status, _ in never_sent), (
        f"files never sent to the provider were marked failed: {never_sent}"
    )


# -- 7. a stale batch of the same process acks under a newer lease --------------------------------


async def test_a_stale_batch_cannot_ack_under_the_same_workers_newer_lease(
    db: str, pool: psycopg_pool.AsyncConnectionPool
) -> None:
    """The ack guard is ``locked_by = <worker id>`` only, and the worker id is per process.

    When one lane's batch outlives its lease (its heartbeat cannot reach the database during
    an outage, or the ack waits for a pooled connection), another lane of the *same* process
    may lease the partition again (its own expired lease qualifies) and start the same
    messages. The first lane's ack then still passes the guard: it moves the cursor (possibly
    back, past batches the second lane already acked), parks its retries, and releases the
    lease the second lane is working under. Two batches of one partition run at once; the
    parked copies are picked up by other replicas while the second lane still handles them.

    Seen in scenario 3 (database restart): the audit shows a worker re-leasing its own
    expired lease and, 3 ms later, an ack by that same worker id releasing it, while
    ``message_handled`` lines of the second batch follow (and the parked messages are
    handled by another replica at the same time). A lease must be identified per
    acquisition (e.g. guard on ``attempts`` as leased, or a per-lease token in locked_by)."""
    from worker.models import Ok, Outcome
    from worker.outbox.delivery import RedeliveryPolicy
    from worker.outbox.engine import Engine, EngineSettings
    from worker.outbox.enqueue import enqueue

    queue = "mini-chat.attachment_cleanup"
    first_batch_may_finish = asyncio.Event()
    second_batch_started = asyncio.Event()

    calls: dict[int, int] = {}

    async def handler(message: Message) -> Outcome:
        calls[message.seq] = calls.get(message.seq, 0) + 1
        if calls[message.seq] == 1:  # lane A's batch
            await first_batch_may_finish.wait()
        else:
            second_batch_started.set()
            await asyncio.sleep(1.0)
        return Ok()

    settings = EngineSettings(
        batch_size=10,
        lease_seconds=30.0,  # the heartbeat (every 10 s) stays out of the way
        concurrency=8,
        retry=RedeliveryPolicy(base_seconds=1.0, max_seconds=2.0, max_deliveries=5),
        handler_budget_seconds=30.0,
    )
    engine = Engine(pool, {queue: handler}, settings, worker_id=WORKER)
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        for n in range(3):
            await enqueue(conn, queue, 0, json.dumps({"n": n}).encode())
        await engine.sequence()
        lane_a = asyncio.create_task(engine.process_partitions(queue, max_partitions=1))
        await asyncio.sleep(0.5)  # lane A holds partition 0, its batch in flight
        # The lease runs out while the batch is stuck (as when the database is away).
        await conn.execute(
            "UPDATE modkit_outbox_processor SET locked_until = now() - interval '1 second'"
            " WHERE locked_by LIKE %s",
            (WORKER + "/%",),
        )
        lane_b = asyncio.create_task(engine.process_partitions(queue, max_partitions=1))
        await asyncio.wait_for(second_batch_started.wait(), timeout=5)
        first_batch_may_finish.set()
        report_a = await asyncio.wait_for(lane_a, timeout=10)
        report_b = await asyncio.wait_for(lane_b, timeout=10)
    assert not report_a.settled, (
        "the stale batch's ack was accepted under the newer lease of the same worker"
        f" ({report_a.handled} messages acked) while that lease's batch was still running;"
        f" the newer batch then lost its lease ({len(report_b.lost)} messages)"
    )


# -- 8. a call that sent a request, then was refused by the limiter, reads as never sent ---------


async def test_a_call_whose_retry_the_limiter_refused_still_counts_as_sent() -> None:
    """The fix for finding 5 marks results the gateway produced without sending as
    ``sent=False`` (no cleanup attempt). ``_guarded_call`` tracks whether *any* attempt of the
    call was sent, but returns the *last* attempt's result: when a request went out and failed
    (here: timed out) and the in-call retry was then refused by the route's own limiter (slots
    busy past the call's budget; in scenario 4 the 429-adaptive rate limit), the call reads as
    never sent, so the failed request is not recorded as an attempt (scenario 4: rows with
    one failed call in the request log and ``cleanup_attempts`` 0). A file that keeps failing
    that way never reaches ``max_attempts``. Fix: in ``_guarded_call``, when ``sent`` is True
    and the result is ``Transient(sent=False)``, return it with ``sent=True`` (or return the
    last sent attempt's result)."""
    from cwlab.fake_openai import FakeOpenAI, Fault
    from worker.config import BackendConfig, ProvidersConfig
    from worker.providers.gateway import ProviderGateway
    from worker.providers.results import Transient

    key = "sk-finding-8-key"
    with FakeOpenAI(api_keys=[key]) as fake:
        fake.add_file("file-x")
        fake.add_file("file-y")
        # Every request waits 1.5 s: longer than the 1 s timeout, so each attempt times out.
        fake.inject(Fault(delay_seconds=1.5))
        config = ProvidersConfig(
            backends={
                "openai": BackendConfig(
                    kind="openai",
                    base_url=fake.openai_base_url,
                    api_key_env="KEY",
                    timeout_seconds=1.0,
                    max_concurrency=1,  # one request at a time on this route
                    max_rps=1000.0,
                )
            }
        )
        gateway = ProviderGateway(config, environ={"KEY": key})
        tenant = uuid.uuid4()
        try:
            # x goes first and times out at 1 s; y, queued for the slot meanwhile, takes it
            # and holds it for its own 1 s timeout, so x's in-call retry finds the slot busy
            # for longer than x's remaining budget: refused without sending.
            x = asyncio.create_task(gateway.delete_file(tenant, "openai", "file-x"))
            await asyncio.sleep(0.05)
            y = asyncio.create_task(gateway.delete_file(tenant, "openai", "file-y"))
            result_x, _ = await asyncio.gather(x, y)
        finally:
            await gateway.aclose()
        await asyncio.sleep(1.0)  # the fake logs a request once it has answered it
        sent_for_x = [r for r in fake.requests() if r.resource_id == "file-x"]
    assert sent_for_x, "the first attempt for file-x never reached the provider"
    assert isinstance(result_x, Transient), result_x
    assert result_x.sent, (
        f"file-x's call sent {len(sent_for_x)} request(s) but its result says it sent none:"
        f" {result_x}"
    )


# -- 9. a suspect message charged with another one's death ---------------------------------------


async def test_suspect_messages_of_one_process_are_handled_one_at_a_time_across_partitions(
    pool: psycopg_pool.AsyncConnectionPool, conn: psycopg.AsyncConnection
) -> None:
    """Handling "alone" must mean alone in the process, not alone in its batch.

    Poison-pill isolation records a suspect message as started before its handler runs and as
    finished after; a start without a finish is a death it caused. But each lane handled its
    own suspect batch alone, so two suspect messages of different partitions ran at once in
    one process: when one of them (a poison pill) killed the process, the other was charged
    with that death too. Reliability scenario 12 at full size (three pills, three replicas
    restarted after every death) dead-lettered a healthy chat-cleanup message as "handling it
    killed the worker process 3 times": its chat was never cleaned up.
    """
    for partition in (0, 1):
        await enqueue_many(conn, AQ, partition, [partition])
    in_flight = 0
    most = 0

    async def handler(message: Message) -> Ok:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.3)  # the window in which a pill would kill the process
        in_flight -= 1
        return Ok()

    engine = make_engine(pool, {AQ: handler})
    await engine.sequence()
    # A replica leased both partitions, read them and died: both batches are now suspect.
    leases = await processor.lease_partitions(pool, AQ, worker_id="died", lease_seconds=30, limit=2)
    for lease in leases:
        assert len(await processor.read_batch(pool, lease, limit=10)) == 1
        await expire_lease(conn, AQ, lease.partition)

    report = await engine.process_partitions(AQ, max_partitions=2)  # both, concurrently

    assert report.handled == 2
    assert most == 1, "two suspect messages ran at once: one's death would be charged to both"
