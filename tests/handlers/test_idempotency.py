"""Redeliveries, both paths on one attachment, and crashes mid-message end in the same state
with no extra failure (SPEC §4.8, §5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cwlab.fake_openai import Fault
from handlers.support import AQ, CQ, Stack, only, outcomes, retry_of
from worker.models import Ok, RetryReason

STATE = ("cleanup_status", "cleanup_attempts", "last_cleanup_error", "cleanup_updated_at")


def state(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in STATE)


def assert_no_failures(stack: Stack) -> None:
    assert stack.metric_sum("cleanup_failed_total") == 0
    assert stack.metric_sum("cleanup_retry_total") == 0


async def redeliver_last(stack: Stack, queue: str) -> None:
    """Enqueue the queue's last message again: what a redelivery hands the handler."""
    (row,) = await stack.rows(
        "SELECT b.payload FROM modkit_outbox_outgoing o JOIN modkit_outbox_body b"
        " ON b.id = o.body_id JOIN modkit_outbox_partitions p ON p.id = o.partition_id"
        " WHERE p.queue = %s ORDER BY o.id DESC LIMIT 1",
        (queue,),
    )
    await stack.enqueue_raw(queue, bytes(row["payload"]))


async def test_attachment_message_delivered_twice(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    assert only(await stack.deliver(AQ)) == Ok()
    first = state(await stack.att(att))

    await redeliver_last(stack, AQ)
    assert only(await stack.deliver(AQ)) == Ok()

    assert state(await stack.att(att)) == first  # not even a timestamp moved
    assert len(stack.fake.requests()) == 1  # a done row is not deleted again
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1
    assert_no_failures(stack)


async def test_duplicate_attachment_messages_in_one_batch(stack: Stack) -> None:
    """Both copies run concurrently: one deletes, the other sees done or a 404 (= success)."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    await stack.app.engine.sequence()
    await redeliver_last(stack, AQ)

    assert outcomes(await stack.deliver(AQ)) == [Ok(), Ok()]

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 0)
    assert len(stack.fake.deletes("file")) == 1
    assert all(r.status in (200, 404) for r in stack.fake.requests())
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1
    assert_no_failures(stack)


async def test_chat_message_delivered_twice_is_an_idempotent_rerun(stack: Stack) -> None:
    chat = await stack.chat()
    atts = [await stack.attachment(chat) for _ in range(2)]
    await stack.vector_store(chat)
    await stack.delete_chat(chat)
    assert only(await stack.deliver(CQ)) == Ok()
    first = [state(await stack.att(a)) for a in atts]
    requests = len(stack.fake.requests())

    await stack.enqueue_chat_event(chat)  # the same chat again (a replay, a redelivery)
    assert only(await stack.deliver(CQ)) == Ok()

    assert [state(await stack.att(a)) for a in atts] == first
    assert len(stack.fake.requests()) == requests == 3  # nothing new went out
    assert await stack.vs_row(chat) is None
    assert stack.metric("cleanup_completed_total", resource_type="file") == 2
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 1
    assert_no_failures(stack)


@pytest.mark.parametrize("first", ["attachment-path-first", "chat-path-first"])
async def test_both_paths_on_one_attachment_end_the_same(stack: Stack, first: str) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    other = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    await stack.delete_chat(chat)

    order = [AQ, CQ] if first == "attachment-path-first" else [CQ, AQ]
    results = [only(await stack.deliver(queue)) for queue in order]

    assert results == [Ok(), Ok()]
    for a in (att, other):
        row = await stack.att(a)
        assert (row["cleanup_status"], row["cleanup_attempts"], row["last_cleanup_error"]) == (
            "done", 0, None,
        )  # fmt: skip
    assert sorted(r.resource_id for r in stack.fake.deletes("file")) == sorted(
        [att.provider_file_id, other.provider_file_id]
    )
    assert len(stack.fake.requests()) == 2  # each file deleted exactly once
    assert stack.metric("cleanup_completed_total", resource_type="file") == 2
    assert_no_failures(stack)


async def test_crash_after_provider_delete_before_db_write(stack: Stack) -> None:
    """The provider half of a delivery ran, then the process died: the next one sees a 404."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert att.provider_file_id is not None
    assert await stack.delete_attachment(att)
    # The crashed delivery: the same gateway call the handler makes, and no row write.
    await stack.app.gateway.delete_file(att.tenant_id, "openai", att.provider_file_id)
    assert att.provider_file_id not in stack.fake.files
    assert (await stack.att(att))["cleanup_status"] is None

    assert only(await stack.deliver(AQ)) == Ok()

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 0)
    assert [r.status for r in stack.requests_for(att.provider_file_id)] == [200, 404]
    assert stack.provider_requests("not_found") == 1
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1
    assert_no_failures(stack)


async def test_interrupted_mid_delete_finishes_on_the_next_delivery(stack: Stack) -> None:
    """Shutdown interrupts the handler while the upstream is still deleting the file."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert att.provider_file_id is not None
    stack.fake.inject(Fault(delay_seconds=0.4, times=1))
    await stack.delete_chat(chat)
    await stack.app.engine.sequence()
    abort = asyncio.Event()
    asyncio.get_running_loop().call_later(0.15, abort.set)

    report = await stack.app.engine.process_partitions(CQ, max_partitions=4, abort=abort)

    assert retry_of(only(report.settled)).reason is RetryReason.INTERRUPTED
    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("pending", 0)  # nothing recorded
    for _ in range(40):  # the upstream finishes the delete the client walked away from
        if stack.fake.deletes("file"):
            break
        await asyncio.sleep(0.05)
    assert att.provider_file_id not in stack.fake.files

    assert only(await stack.deliver_retries()) == Ok()

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 0)
    assert [r.status for r in stack.requests_for(att.provider_file_id)] == [200, 404]
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1
    assert await stack.retry_rows() == []
    assert_no_failures(stack)


async def test_both_paths_at_the_same_time_converge(stack: Stack) -> None:
    """The attachment path is mid-delete when the chat is deleted and the chat path runs."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert att.provider_file_id is not None
    stack.fake.inject(Fault(delay_seconds=0.6, times=1))  # the attachment path's request
    assert await stack.delete_attachment(att)
    attachment_path = asyncio.create_task(stack.deliver(AQ))
    await asyncio.sleep(0.3)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()
    assert only(await attachment_path) == Ok()

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 0)
    # Both paths called the provider: one deleted, the other's answer was a 404 (= success).
    assert sorted(r.status for r in stack.requests_for(att.provider_file_id)) == [200, 404]
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1
    assert_no_failures(stack)
