"""The chat's vector store: deleted only once no attachment is pending, with the row's label and
the tenant's routing; its row is the durable "still outstanding" marker (SPEC §5, upstream §5)."""

from __future__ import annotations

from cwlab.fake_openai import Fault
from handlers.support import (
    CQ,
    KEYS,
    TENANT_AZ,
    TENANT_AZ_VERSION,
    Stack,
    assert_secret_free,
    only,
    reject_of,
    retry_of,
)
from worker.models import Ok, RetryReason


def vs_requests(stack: Stack) -> list[object]:
    return [r for r in stack.fake.requests() if r.resource == "vector_store"]


async def test_vector_store_not_deleted_while_an_attachment_is_pending(stack: Stack) -> None:
    chat = await stack.chat()
    ok_att = await stack.attachment(chat)
    stuck = await stack.attachment(chat)
    assert stuck.provider_file_id is not None
    store = await stack.vector_store(chat)
    stack.fake.inject(Fault(status=401, path_contains=stuck.provider_file_id, times=1))
    await stack.delete_chat(chat)

    assert retry_of(only(await stack.deliver(CQ))).reason is RetryReason.AUTH

    assert (await stack.att(stuck))["cleanup_status"] == "pending"
    assert (await stack.att(ok_att))["cleanup_status"] == "done"
    assert await stack.vs_row(chat) is not None
    assert store.vector_store_id in stack.fake.vector_stores
    assert vs_requests(stack) == []  # not even tried

    assert only(await stack.deliver_retries()) == Ok()

    assert (await stack.att(stuck))["cleanup_status"] == "done"
    assert await stack.vs_row(chat) is None
    assert stack.fake.vector_stores == set()
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 1
    assert stack.metric("cleanup_vector_store_with_failed_attachments_total") == 0


async def test_all_failed_attachments_still_delete_the_store_and_count(stack: Stack) -> None:
    chat = await stack.chat()
    atts = [await stack.attachment(chat) for _ in range(2)]
    await stack.vector_store(chat)
    stack.fake.inject(Fault(status=400, path_contains="/files/"))
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert [(await stack.att(a))["cleanup_status"] for a in atts] == ["failed", "failed"]
    assert await stack.vs_row(chat) is None
    assert stack.fake.vector_stores == set()
    assert stack.metric("cleanup_vector_store_with_failed_attachments_total") == 1  # per store
    assert stack.metric("cleanup_failed_total", resource_type="file") == 2
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 1
    assert {a.provider_file_id for a in atts} <= stack.fake.files  # the debt is still there


async def test_some_failed_attachments_counted_once_per_store(stack: Stack) -> None:
    chat = await stack.chat()
    failing = await stack.attachment(chat)
    assert failing.provider_file_id is not None
    fine = await stack.attachment(chat)
    await stack.vector_store(chat)
    stack.fake.inject(Fault(status=422, path_contains=failing.provider_file_id))
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()
    await stack.enqueue_chat_event(chat)  # a rerun must not count it again
    assert only(await stack.deliver(CQ)) == Ok()

    assert (await stack.att(fine))["cleanup_status"] == "done"
    assert (await stack.att(failing))["cleanup_status"] == "failed"
    assert stack.metric("cleanup_vector_store_with_failed_attachments_total") == 1


async def test_vector_store_without_failed_attachments_is_not_counted(stack: Stack) -> None:
    chat = await stack.chat()
    await stack.attachment(chat)
    await stack.vector_store(chat)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert stack.metric("cleanup_vector_store_with_failed_attachments_total") == 0
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 1


async def test_vector_store_delete_failure_keeps_row_and_retries(stack: Stack) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat)
    store = await stack.vector_store(chat)
    assert store.vector_store_id is not None
    stack.fake.inject(Fault(status=503, path_contains=store.vector_store_id, times=3))
    await stack.delete_chat(chat)

    retry = retry_of(only(await stack.deliver(CQ)))

    assert retry.reason is RetryReason.SERVER_ERROR
    assert_secret_free(retry.detail)
    assert (await stack.att(att))["cleanup_status"] == "done"
    row = await stack.vs_row(chat)
    assert row is not None
    assert row["vector_store_id"] == store.vector_store_id
    assert store.vector_store_id in stack.fake.vector_stores
    assert stack.metric("cleanup_retry_total", resource_type="vector_store",
                        reason="server_error") == 1  # fmt: skip
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 0
    (parked,) = await stack.retry_rows()
    assert parked["reason"] == "server_error"

    assert only(await stack.deliver_retries()) == Ok()

    assert await stack.vs_row(chat) is None
    assert stack.fake.vector_stores == set()
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 1
    assert stack.metric("cleanup_completed_total", resource_type="file") == 1  # not twice
    assert len(stack.requests_for(att.provider_file_id)) == 1  # the file was not re-deleted
    assert await stack.retry_rows() == []


async def test_vector_store_404_is_success(stack: Stack) -> None:
    chat = await stack.chat()
    store = await stack.vector_store(chat, at_provider=False)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert await stack.vs_row(chat) is None
    assert [r.status for r in stack.requests_for(store.vector_store_id)] == [404]
    assert stack.provider_requests("not_found", operation="delete_vector_store") == 1
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 1


async def test_vector_store_permanent_refusal_dead_letters_and_keeps_row(stack: Stack) -> None:
    chat = await stack.chat()
    store = await stack.vector_store(chat)
    assert store.vector_store_id is not None
    stack.fake.inject(Fault(status=400, path_contains=store.vector_store_id))
    await stack.delete_chat(chat)

    reason = reject_of(only(await stack.deliver(CQ))).reason

    assert "HTTP 400" in reason
    assert await stack.vs_row(chat) is not None  # still outstanding: visible to operators
    (dead,) = await stack.dead_letters()
    assert dead["queue"] == CQ
    assert stack.metric("cleanup_failed_total", resource_type="vector_store") == 1


async def test_vector_store_goes_to_row_label_with_tenant_routing(stack: Stack) -> None:
    """Files on the shared OpenAI backend, the store on the tenant's own Azure endpoint."""
    chat = await stack.chat(TENANT_AZ)
    att = await stack.attachment(chat, backend="openai")
    store = await stack.vector_store(chat, provider="azure")
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    (vs_request,) = vs_requests(stack)
    assert vs_request.path == f"/tenant-az/openai/vector_stores/{store.vector_store_id}"
    assert vs_request.query == {"api-version": TENANT_AZ_VERSION}
    assert (vs_request.auth_scheme, vs_request.api_key) == ("api-key", KEYS["TENANT_AZ_KEY"])
    assert vs_request.headers.get("openai-beta") == "assistants=v2"
    (file_request,) = stack.requests_for(att.provider_file_id)
    assert file_request.path == f"/v1/files/{att.provider_file_id}"
    assert (file_request.auth_scheme, file_request.api_key) == ("bearer", KEYS["OPENAI_KEY"])
    assert stack.metric("provider_requests_total", backend="azure",
                        operation="delete_vector_store", outcome="deleted") == 1  # fmt: skip


async def test_vector_store_with_unknown_label_is_retried_and_kept(stack: Stack) -> None:
    chat = await stack.chat()
    await stack.vector_store(chat, provider="azure_openai")
    await stack.delete_chat(chat)

    assert retry_of(only(await stack.deliver(CQ))).reason is RetryReason.CONFIG

    assert await stack.vs_row(chat) is not None
    assert stack.fake.requests() == []
    assert stack.metric("cleanup_retry_total", resource_type="vector_store", reason="config") == 1


async def test_deleting_the_store_leaves_its_files(stack: Stack) -> None:
    """Only attachment files are deleted (by the file deletes); other store members stay."""
    chat = await stack.chat()
    att = await stack.attachment(chat)
    store = await stack.vector_store(chat, files=["file-shared-elsewhere", att.provider_file_id])
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert store.vector_store_id not in stack.fake.vector_stores
    assert stack.fake.files == {"file-shared-elsewhere"}
    assert [r.resource_id for r in stack.fake.deletes("file")] == [att.provider_file_id]
    # ...and the file deletes ran before the store delete.
    assert [r.resource for r in stack.fake.requests()] == ["file", "vector_store"]


async def test_vector_store_row_without_provider_id_is_removed_without_a_call(
    stack: Stack,
) -> None:
    chat = await stack.chat()
    await stack.vector_store(chat, vector_store_id=None)
    await stack.delete_chat(chat)

    assert only(await stack.deliver(CQ)) == Ok()

    assert await stack.vs_row(chat) is None
    assert stack.fake.requests() == []
    assert stack.metric("cleanup_completed_total", resource_type="vector_store") == 0


async def test_failed_attachments_counted_once_when_store_delete_is_retried(
    stack: Stack,
) -> None:
    """The metric counts stores deleted with failed files: a retried store delete is one."""
    chat = await stack.chat()
    failing = await stack.attachment(chat)
    assert failing.provider_file_id is not None
    store = await stack.vector_store(chat)
    assert store.vector_store_id is not None
    stack.fake.inject(Fault(status=400, path_contains=failing.provider_file_id))
    stack.fake.inject(Fault(status=500, path_contains=store.vector_store_id, times=3))
    await stack.delete_chat(chat)

    assert retry_of(only(await stack.deliver(CQ))).reason is RetryReason.SERVER_ERROR
    assert stack.metric("cleanup_vector_store_with_failed_attachments_total") == 0
    assert only(await stack.deliver_retries()) == Ok()

    assert await stack.vs_row(chat) is None
    assert stack.metric("cleanup_vector_store_with_failed_attachments_total") == 1
