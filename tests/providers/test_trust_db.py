"""SPEC §13 end to end: the real app (``open_app``) on a real PostgreSQL and the fake provider.

Each test reproduces an observed defect as the operator saw it: rows marked ``done`` for files
that stayed at the provider, nothing in ``status``. The handlers are not changed here; what
changes is what the provider layer answers them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any
from uuid import UUID

import pytest
from handlers.support import AQ, CQ, Stack, build_config, only, outcomes, retry_of
from prometheus_client import CollectorRegistry

from cwlab.fake_openai import FakeOpenAI
from worker import render
from worker.config import (
    BackendConfig,
    Config,
    ProvidersConfig,
    RouteSuspicionConfig,
    TenantOverride,
)
from worker.db import Conn
from worker.db.pool import open_pool
from worker.models import Ok, RetryReason
from worker.observability.metrics import Metrics
from worker.providers.gateway import ProviderGateway
from worker.runtime.app import open_app
from worker.runtime.checks import check_config
from worker.runtime.route_health import RouteHealthRecorder, restore_suspected_routes
from worker.runtime.status import read_status

KEYS = {
    "OPENAI_KEY": "sk-shared-SECRET-0001",
    "AZURE_KEY": "az-shared-SECRET-0002",
    "TENANT_AZ_KEY": "az-tenant-SECRET-0003",
    "TENANT_OA_KEY": "sk-tenant-SECRET-0004",
    "WRONG_PROJECT_KEY": "sk-other-project-SECRET-0005",
}
PROJECTS = {KEYS["OPENAI_KEY"]: "proj_main", KEYS["WRONG_PROJECT_KEY"]: "proj_other"}
OWN = UUID("dddddddd-0000-4000-8000-00000000000d")

Edit = Callable[[Config], Config]
MakeStack = Callable[..., Any]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=KEYS.values(), key_projects=PROJECTS) as server:
        yield server


@pytest.fixture
async def make_stack(db: str, conn: Conn, fake: FakeOpenAI) -> AsyncIterator[MakeStack]:
    async with AsyncExitStack() as exits:

        async def make(edit: Edit) -> Stack:
            config = edit(build_config(db, fake))
            app = await exits.enter_async_context(open_app(config, environ=dict(KEYS)))
            return Stack(app, fake, conn)

        yield make


def _openai(config: Config, **changes: Any) -> Config:
    """``config`` with the shared openai backend changed."""
    providers = config.providers
    backends = dict(providers.backends)
    backends["openai"] = dataclasses.replace(backends["openai"], **changes)
    return dataclasses.replace(config, providers=dataclasses.replace(providers, backends=backends))


async def test_a_base_url_without_v1_leaves_rows_pending_and_files_in_place(
    make_stack: MakeStack,
) -> None:
    """Observed: `Invalid URL (DELETE /files/…)` read as "gone"; rows done, files leaked."""
    stack = await make_stack(lambda c: _openai(c, base_url=stack_url(c)))
    chat = await stack.chat()
    att = await stack.attachment(chat)
    assert await stack.delete_attachment(att)

    retry = retry_of(only(await stack.deliver(AQ)))

    assert retry.reason is RetryReason.CONFIG
    row = await stack.att(att)
    assert row["cleanup_status"] == "pending"
    assert "not the API's not-found" in row["last_cleanup_error"]
    assert att.provider_file_id in stack.fake.files
    assert stack.metric_sum("cleanup_completed_total") == 0


def stack_url(config: Config) -> str:
    """The fake's root URL (the shared openai base_url without its /v1)."""
    base_url = config.providers.backends["openai"].base_url
    assert base_url is not None
    return base_url.removesuffix("/v1")


async def test_the_vector_store_row_is_kept_when_the_route_is_wrong(
    make_stack: MakeStack,
) -> None:
    """Observed: the vector-store row was hard-deleted on `Invalid URL`, the store leaked."""
    stack = await make_stack(lambda c: _openai(c, base_url=stack_url(c)))
    chat = await stack.chat()
    await stack.vector_store(chat)
    await stack.delete_chat(chat)

    retry_of(only(await stack.deliver(CQ)))

    assert await stack.vs_row(chat) is not None
    assert len(stack.fake.vector_stores) == 1


async def test_azure_ga_204_marks_the_row_done_after_one_request(make_stack: MakeStack) -> None:
    """Observed: a 204 read as "not deleted"; the delete that happened was retried."""

    def ga_version(config: Config) -> Config:
        providers = config.providers
        backends = dict(providers.backends)
        backends["azure"] = dataclasses.replace(backends["azure"], api_version="2024-06-01")
        return dataclasses.replace(
            config, providers=dataclasses.replace(providers, backends=backends)
        )

    stack = await make_stack(ga_version)
    chat = await stack.chat()
    att = await stack.attachment(chat, backend="azure")
    assert await stack.delete_attachment(att)

    assert outcomes(await stack.deliver(AQ)) == [Ok()]

    assert (await stack.att(att))["cleanup_status"] == "done"
    assert [r.status for r in stack.fake.requests()] == [204]


async def test_a_wrong_project_key_is_suspected_shown_and_remembered(
    make_stack: MakeStack, db: str, conn: Conn
) -> None:
    """Observed: a key of another project marked every file done. Now at most the threshold,
    then the route is suspected: retried, counted, in `status` and `check-config`, and a
    restarted worker starts with it suspected."""

    def wrong_project(config: Config) -> Config:
        config = _openai(config, api_key_env="WRONG_PROJECT_KEY")
        providers = dataclasses.replace(
            config.providers, route_suspicion=RouteSuspicionConfig(not_found_threshold=2)
        )
        return dataclasses.replace(config, providers=providers)

    stack = await make_stack(wrong_project)
    chat = await stack.chat()
    atts = [await stack.attachment(chat, at_provider=False) for _ in range(4)]
    for att in atts:
        stack.fake.add_file(att.provider_file_id, project="proj_main")  # not the key's
        assert await stack.delete_attachment(att)

    settled = await stack.deliver(AQ)

    # Handled concurrently: which two come first is not fixed, how many is.
    done = [o for o in outcomes(settled) if o == Ok()]
    retried = [retry_of(o) for o in outcomes(settled) if o != Ok()]
    assert len(done) == 2  # the price of a wrong key: the threshold's worth of rows
    assert [r.reason for r in retried] == [RetryReason.CONFIG] * 2
    statuses = sorted([(await stack.att(att))["cleanup_status"] for att in atts])
    assert statuses == ["done", "done", "pending", "pending"]
    assert stack.fake.files >= {att.provider_file_id for att in atts}
    assert stack.metric("provider_route_suspected_total", backend="openai") == 1
    assert stack.metric("provider_routes_suspected", backend="openai") == 1

    report = await read_status(conn, [AQ, CQ], all_attachments=True)
    [route] = report.suspected_routes
    assert (route.backend, route.tenant_id, route.distinct_not_found) == ("openai", "", 3)
    text = render.status(report)
    assert "Suspected provider routes" in text
    assert "openai" in text.split("Suspected provider routes")[1]
    checked = await check_config(stack.app.config, environ=dict(KEYS))
    assert not checked.ok
    assert "provider route openai: suspected" in checked.render()

    # A restarted worker (same configuration) does not start over at zero.
    restarted = await make_stack(wrong_project)
    assert [r.describe() for r in restarted.app.gateway.suspected_routes()] == ["openai"]
    late = await stack.chat()
    late_att = await restarted.attachment(late, at_provider=False)
    restarted.fake.add_file(late_att.provider_file_id, project="proj_main")
    assert await restarted.delete_attachment(late_att)
    retry = retry_of(only(await restarted.deliver(AQ)))
    assert retry.reason is RetryReason.CONFIG
    assert (await restarted.att(late_att))["cleanup_status"] == "pending"


async def test_a_suspected_route_recovers_and_leaves_status(
    make_stack: MakeStack, conn: Conn
) -> None:
    def threshold_one(config: Config) -> Config:
        providers = dataclasses.replace(
            config.providers, route_suspicion=RouteSuspicionConfig(not_found_threshold=1)
        )
        return dataclasses.replace(config, providers=providers)

    stack = await make_stack(threshold_one)
    chat = await stack.chat()
    gone = [await stack.attachment(chat, at_provider=False) for _ in range(2)]
    for att in gone:
        assert await stack.delete_attachment(att)
    await stack.deliver(AQ)
    assert len((await read_status(conn, [AQ], all_attachments=False)).suspected_routes) == 1

    real = await stack.attachment(chat)
    assert await stack.delete_attachment(real)
    await stack.deliver(AQ)

    assert (await stack.att(real))["cleanup_status"] == "done"
    assert (await read_status(conn, [AQ], all_attachments=False)).suspected_routes == []
    assert stack.metric("provider_routes_suspected", backend="openai") == 0


async def test_a_backend_without_a_shared_key_never_uses_another_key(
    make_stack: MakeStack,
) -> None:
    """Observed: the documented safe setup was refused, and tenants without an override fell
    back to the shared key. Now: only overriding tenants are served, others are config."""

    def keyless(config: Config) -> Config:
        config = _openai(config, api_key_env=None)
        tenants = dict(config.providers.tenants)
        tenants[str(OWN)] = {"openai": TenantOverride(api_key_env="OPENAI_KEY")}
        return dataclasses.replace(
            config, providers=dataclasses.replace(config.providers, tenants=tenants)
        )

    stack = await make_stack(keyless)
    assert isinstance(stack.app.config.providers.backends["openai"], BackendConfig)
    mine = await stack.attachment(await stack.chat(OWN))
    other = await stack.attachment(await stack.chat())
    assert await stack.delete_attachment(mine)
    assert await stack.delete_attachment(other)

    settled = await stack.deliver(AQ)

    kinds = sorted(type(outcome).__name__ for outcome in outcomes(settled))
    assert kinds == ["Ok", "Retry"]
    assert (await stack.att(mine))["cleanup_status"] == "done"
    row = await stack.att(other)
    assert row["cleanup_status"] == "pending"
    assert "has no routing for 'openai'" in row["last_cleanup_error"]
    assert [r.resource_id for r in stack.fake.requests()] == [mine.provider_file_id]
    assert other.provider_file_id in stack.fake.files


async def test_a_route_health_write_that_fails_never_fails_the_delete(empty_db: str) -> None:
    """A database without the table (or down): the transition is logged, the call goes on."""
    config = ProvidersConfig(
        backends={
            "openai": BackendConfig(
                kind="openai", base_url="https://api.openai.test/v1", api_key_env="OPENAI_KEY"
            )
        }
    )
    gateway = ProviderGateway(config, environ=KEYS)
    [route] = gateway.routes()
    metrics = Metrics(registry=CollectorRegistry())
    try:
        async with open_pool(empty_db, min_size=1, max_size=1) as pool:
            recorder = RouteHealthRecorder(pool, metrics, "worker-test")
            await recorder.route_suspected(route, 11)
            gauge = metrics.registry.get_sample_value(
                "mini_chat_provider_routes_suspected", {"backend": "openai"}
            )
            await recorder.route_recovered(route)
            restored = await restore_suspected_routes(pool, gateway, recorder)
    finally:
        await gateway.aclose()
    assert gauge == 1
    assert restored == 0
    assert (
        metrics.registry.get_sample_value(
            "mini_chat_provider_routes_suspected", {"backend": "openai"}
        )
        == 0
    )
