"""Every provider call uses the tenant's routing (SPEC §5, §6), read from the fake's request log.

Tenant AZ has its own Azure endpoint, api-version and key; tenant OA its own OpenAI base URL and
key; every other tenant (and AZ / OA for labels they do not override) shares the backends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from uuid import UUID

import pytest

from handlers.conftest import MakeStack
from handlers.support import (
    AQ,
    AZURE_VERSION,
    CQ,
    KEYS,
    TENANT_AZ,
    TENANT_AZ_VERSION,
    TENANT_OA,
    Stack,
    assert_secret_free,
    only,
    outcomes,
    retry_of,
)
from worker.models import Ok, RetryReason

PLAIN = UUID("bbbbbbbb-0000-4000-8000-00000000000b")


@dataclass(frozen=True)
class Route:
    tenant: UUID
    label: str
    prefix: str  # the path before /{file id}
    api_version: str | None
    scheme: str
    key: str


ROUTES = [
    Route(TENANT_AZ, "azure", "/tenant-az/openai/files", TENANT_AZ_VERSION, "api-key",
          KEYS["TENANT_AZ_KEY"]),
    Route(TENANT_AZ, "openai", "/v1/files", None, "bearer", KEYS["OPENAI_KEY"]),
    Route(TENANT_OA, "openai", "/tenant-oa/v1/files", None, "bearer", KEYS["TENANT_OA_KEY"]),
    Route(PLAIN, "openai", "/v1/files", None, "bearer", KEYS["OPENAI_KEY"]),
    Route(PLAIN, "azure", "/openai/files", AZURE_VERSION, "api-key", KEYS["AZURE_KEY"]),
]  # fmt: skip


def check_request(stack: Stack, file_id: str, route: Route) -> None:
    (request,) = stack.requests_for(file_id)
    assert request.method == "DELETE"
    assert request.path == f"{route.prefix}/{file_id}"
    expected_query = {} if route.api_version is None else {"api-version": route.api_version}
    assert request.query == expected_query
    assert (request.auth_scheme, request.api_key) == (route.scheme, route.key)
    if route.scheme == "api-key":
        assert "authorization" not in request.headers  # the key goes in one header only
    else:
        assert "api-key" not in request.headers
    assert request.status == 200


@pytest.mark.parametrize("path", ["attachment", "chat"])
async def test_each_tenant_uses_its_own_route(stack: Stack, path: str) -> None:
    cases = []
    for route in ROUTES:
        chat = await stack.chat(route.tenant)
        att = await stack.attachment(chat, backend=route.label)
        cases.append((route, chat, att))
        if path == "attachment":
            assert await stack.delete_attachment(att)
        else:
            await stack.delete_chat(chat)

    settled = await stack.deliver(AQ if path == "attachment" else CQ)

    assert outcomes(settled) == [Ok()] * len(ROUTES)
    for route, _, att in cases:
        assert att.provider_file_id is not None
        check_request(stack, att.provider_file_id, route)
        assert (await stack.att(att))["cleanup_status"] == "done"
    assert len(stack.fake.requests()) == len(ROUTES)
    for label in ("openai", "azure"):
        expected = sum(1 for r in ROUTES if r.label == label)
        assert stack.metric_sum("provider_requests_total", backend=label) == expected


@pytest.mark.parametrize("path", ["attachment", "chat"])
async def test_unknown_storage_backend_is_a_config_retry_not_done(stack: Stack, path: str) -> None:
    chat = await stack.chat()
    att = await stack.attachment(chat, backend="gcs")
    if path == "attachment":
        assert await stack.delete_attachment(att)
    else:
        await stack.delete_chat(chat)

    retry = retry_of(only(await stack.deliver(AQ if path == "attachment" else CQ)))

    assert retry.reason is RetryReason.CONFIG
    row = await stack.att(att)
    assert row["cleanup_status"] == "pending"
    assert row["cleanup_attempts"] == 1
    assert "unknown backend label 'gcs'" in row["last_cleanup_error"]
    assert stack.fake.requests() == []
    assert att.provider_file_id in stack.fake.files
    assert stack.metric("cleanup_retry_total", resource_type="file", reason="config") == 1
    assert stack.metric_sum("cleanup_completed_total") == 0
    (parked,) = await stack.retry_rows()
    assert parked["reason"] == "config"


async def test_key_problems_stay_with_their_tenant(make_stack: MakeStack) -> None:
    """AZ's key env var is unset, OA's key is wrong (a real 401): others finish in one round."""
    environ = {k: v for k, v in KEYS.items() if k != "TENANT_AZ_KEY"}
    environ["TENANT_OA_KEY"] = "sk-wrong-SECRET-9999"
    stack = await make_stack(environ=environ)
    atts = {}
    for name, tenant, label in [
        ("az", TENANT_AZ, "azure"),
        ("oa", TENANT_OA, "openai"),
        ("plain", uuid.uuid4(), "openai"),
        ("plain-azure", uuid.uuid4(), "azure"),
    ]:
        chat = await stack.chat(tenant)
        atts[name] = await stack.attachment(chat, backend=label)
        assert await stack.delete_attachment(atts[name])

    settled = await stack.deliver(AQ)

    by_attachment = {
        name: next(
            s.handled.outcome
            for s in settled
            if str(att.id).encode() in s.handled.envelope.message.payload
        )
        for name, att in atts.items()
    }
    assert by_attachment["plain"] == Ok()
    assert by_attachment["plain-azure"] == Ok()
    assert retry_of(by_attachment["az"]).reason is RetryReason.CONFIG
    assert retry_of(by_attachment["oa"]).reason is RetryReason.AUTH

    az, oa = await stack.att(atts["az"]), await stack.att(atts["oa"])
    assert (az["cleanup_status"], az["cleanup_attempts"]) == ("pending", 1)
    assert "TENANT_AZ_KEY" in az["last_cleanup_error"]  # names the variable, not a value
    assert (oa["cleanup_status"], oa["cleanup_attempts"]) == ("pending", 1)
    assert "HTTP 401" in oa["last_cleanup_error"]
    assert_secret_free(az["last_cleanup_error"], oa["last_cleanup_error"])
    assert "sk-wrong" not in oa["last_cleanup_error"]
    # The wrong key really reached the fake (and was refused there); AZ never called out.
    assert [r.status for r in stack.requests_for(atts["oa"].provider_file_id)] == [401]
    assert stack.requests_for(atts["az"].provider_file_id) == []
    assert stack.metric("cleanup_retry_total", resource_type="file", reason="auth") == 1
    assert stack.metric("cleanup_retry_total", resource_type="file", reason="config") == 1
