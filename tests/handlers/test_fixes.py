"""The seed's defects this worker fixes on purpose (SPEC §5, upstream §4.1), each shown failing
the old way's expectations: per-attachment cleanup records its state, attachments deleted one by
one before their chat are not leaked, and a chat with hundreds of files finishes in one delivery.
"""

from __future__ import annotations

import pytest

from cwlab.fake_openai import Fault
from handlers.conftest import MakeStack
from handlers.support import (
    AQ,
    CQ,
    MAX_ATTEMPTS,
    Stack,
    assert_secret_free,
    only,
    reject_of,
    retry_of,
)
from worker.models import Ok, RetryReason


async def test_attachment_path_marks_pending_records_attempts_and_fails(stack: Stack) -> None:
    """The seed never set pending on this path: failures were acked and never recorded."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    stack.fake.inject(Fault(status=502))
    assert await stack.delete_attachment(att)
    assert (await stack.att(att))["cleanup_status"] is None

    seen = [only(await stack.deliver(AQ))]
    history = [(await stack.att(att))["cleanup_attempts"]]
    while len(seen) < MAX_ATTEMPTS:
        seen.append(only(await stack.deliver_retries()))
        history.append((await stack.att(att))["cleanup_attempts"])

    assert [retry_of(o).reason for o in seen[:-1]] == [RetryReason.SERVER_ERROR] * 2
    assert reject_of(seen[-1]).reason.startswith(f"max attempts ({MAX_ATTEMPTS}) reached")
    assert history == [1, 2, 3]  # one attempt per delivery, not per in-call HTTP retry
    row = await stack.att(att)
    assert row["cleanup_status"] == "failed"
    assert "HTTP 502" in row["last_cleanup_error"]
    assert_secret_free(row["last_cleanup_error"])
    (dead,) = await stack.dead_letters()
    assert dead["last_error"].startswith(f"max attempts ({MAX_ATTEMPTS}) reached")
    assert await stack.retry_rows() == []
    assert stack.metric("cleanup_failed_total", resource_type="file") == 1
    assert stack.metric("cleanup_retry_total", resource_type="file", reason="server_error") == 2
    assert stack.metric("cleanup_completed_total", resource_type="file") == 0
    assert att.provider_file_id in stack.fake.files


async def test_attachment_path_success_is_recorded_done(stack: Stack) -> None:
    """The seed left cleanup_status NULL after a successful per-attachment delete."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)

    assert only(await stack.deliver(AQ)) == Ok()

    row = await stack.att(att)
    assert row["cleanup_status"] == "done"
    assert row["cleanup_updated_at"] is not None


async def test_attachment_path_recovers_after_transient_failure(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    stack.fake.inject(Fault(status=429, headers={"retry-after": "0"}, times=3))
    assert await stack.delete_attachment(att)
    assert retry_of(only(await stack.deliver(AQ))).reason is RetryReason.RATE_LIMITED

    assert only(await stack.deliver_retries()) == Ok()

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 1)
    assert row["last_cleanup_error"] is not None  # the history stays readable
    assert await stack.retry_rows() == []
    assert att.provider_file_id not in stack.fake.files


async def test_attachment_deleted_before_chat_is_cleaned_by_chat_path(stack: Stack) -> None:
    """Its own message never ran (still queued, or lost); the chat path adopts the row."""
    chat = await stack.chat()
    early = await stack.attachment(chat)
    later = await stack.attachment(chat)
    assert await stack.delete_attachment(early)
    await stack.delete_chat(chat)
    assert (await stack.att(early))["cleanup_status"] is None  # skipped by the chat delete

    assert only(await stack.deliver(CQ)) == Ok()

    assert {r.resource_id for r in stack.fake.deletes("file")} == {
        early.provider_file_id,
        later.provider_file_id,
    }
    assert stack.fake.files == set()
    for att in (early, later):
        assert (await stack.att(att))["cleanup_status"] == "done"
    # Its late message then finds nothing to do.
    assert only(await stack.deliver(AQ)) == Ok()
    assert len(stack.fake.requests()) == 2


async def test_attachment_failing_before_chat_delete_is_finished_by_chat_path(
    stack: Stack,
) -> None:
    """Per-attachment cleanup was retrying when the chat was deleted: the chat path takes over
    (keeping the attempt count), and the parked attachment message then just acks."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert att.provider_file_id is not None
    stack.fake.inject(Fault(status=401, path_contains=att.provider_file_id, times=1))
    assert await stack.delete_attachment(att)
    assert retry_of(only(await stack.deliver(AQ))).reason is RetryReason.AUTH
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()
    assert only(await stack.deliver_retries(AQ)) == Ok()

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 1)
    assert att.provider_file_id not in stack.fake.files
    assert stack.metric_sum("cleanup_failed_total") == 0
    assert await stack.retry_rows() == []
    assert await stack.dead_letters() == []


async def test_chat_with_hundreds_of_attachments_finishes_in_one_delivery(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(file_concurrency=8)
    stack.fake.inject(Fault(delay_seconds=0.02))  # every request: 20 ms upstream latency
    chat = await stack.chat()
    atts = [await stack.attachment(chat) for _ in range(300)]
    await stack.vector_store(chat)
    await stack.delete_chat(chat)

    settled = await stack.deliver(CQ)

    assert only(settled) == Ok()
    assert settled[0].handled.envelope.message.delivery == 1
    counts = await stack.rows(
        "SELECT cleanup_status, count(*) AS n FROM attachments WHERE chat_id = %s"
        " GROUP BY cleanup_status",
        (chat.id,),
    )
    assert counts == [{"cleanup_status": "done", "n": 300}]
    assert len(stack.fake.deletes("file")) == 300
    assert stack.fake.files == set()
    assert await stack.vs_row(chat) is None
    assert await stack.retry_rows() == []
    assert stack.metric("cleanup_completed_total", resource_type="file") == 300
    # Deletes overlapped, and never more than file_concurrency at once (starts within 20 ms).
    starts = sorted(r.at for r in stack.fake.requests() if r.resource == "file")
    overlap = max(sum(1 for s in starts if t <= s < t + 0.02) for t in starts)
    assert 2 <= overlap <= 8
    assert {a.id for a in atts} == {
        r["id"]
        for r in await stack.rows("SELECT id FROM attachments WHERE chat_id = %s", (chat.id,))
    }


async def test_replayed_dead_letter_finishes_a_failed_row(stack: Stack) -> None:
    """The operator fixed the cause and replays the message: the confirmed delete wins."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    stack.fake.inject(Fault(status=400, times=1))
    assert await stack.delete_attachment(att)
    reject_of(only(await stack.deliver(AQ)))
    assert (await stack.att(att))["cleanup_status"] == "failed"
    (dead,) = await stack.dead_letters()

    await stack.enqueue_raw(AQ, bytes(dead["payload"]))  # what a replay enqueues
    assert only(await stack.deliver(AQ)) == Ok()

    row = await stack.att(att)
    assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 1)
    assert att.provider_file_id not in stack.fake.files
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1


@pytest.mark.parametrize(
    ("fault", "expected"),
    [(None, "ok"), (Fault(status=401), "retry"), (Fault(status=400), "reject")],
    ids=["deleted", "transient", "permanent"],
)
async def test_message_for_a_purged_row_still_deletes_the_file(
    stack: Stack, fault: Fault | None, expected: str
) -> None:
    """Chat and attachment rows were hard-purged: the message is the file's only record."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)
    await stack.conn.execute("DELETE FROM chats WHERE id = %s", (chat.id,))  # cascades
    if fault is not None:
        stack.fake.inject(fault)

    outcome = only(await stack.deliver(AQ))

    assert len(stack.requests_for(att.provider_file_id)) == 1
    if expected == "ok":
        assert outcome == Ok()
        assert att.provider_file_id not in stack.fake.files
    elif expected == "retry":
        assert retry_of(outcome).reason is RetryReason.AUTH  # not acked: nothing else remembers
    else:
        assert "HTTP 400" in reject_of(outcome).reason
