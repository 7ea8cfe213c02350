"""Route suspicion, each tenant's own route, organization / project (SPEC §13), on real sockets.

The fake binds keys to projects: a key of the wrong project is told "No such File object" for
files that exist under another project, exactly the answer that reads as "already deleted".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from uuid import UUID

import pytest

from cwlab.fake_openai import FakeOpenAI
from providers.support import TENANT_A, TENANT_B
from worker.config import BackendConfig, ProvidersConfig, RouteSuspicionConfig, TenantOverride
from worker.models import RetryReason
from worker.providers import CallRetryPolicy, Deleted, Transient
from worker.providers.gateway import ProviderGateway
from worker.providers.routing import Route

NO_RETRY = CallRetryPolicy(max_attempts=1)
KEYS = {"RIGHT_KEY": "sk-project-a", "WRONG_KEY": "sk-project-b", "A_KEY": "sk-tenant-a"}
PROJECTS = {"sk-project-a": "proj_a", "sk-project-b": "proj_b", "sk-tenant-a": "proj_a"}


@dataclass
class Events:
    """A ``RouteHealthListener`` that remembers what it was told."""

    seen: list[tuple[str, str, int | None]] = field(default_factory=list)

    async def route_suspected(self, route: Route, distinct_not_found: int) -> None:
        self.seen.append(("suspected", route.describe(), distinct_not_found))

    async def route_recovered(self, route: Route) -> None:
        self.seen.append(("recovered", route.describe(), None))


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=KEYS.values(), key_projects=PROJECTS) as server:
        yield server


def _config(fake: FakeOpenAI, key_env: str, threshold: int = 10) -> ProvidersConfig:
    backend = BackendConfig(kind="openai", base_url=fake.openai_base_url, api_key_env=key_env)
    return ProvidersConfig(
        backends={"openai": backend},
        route_suspicion=RouteSuspicionConfig(not_found_threshold=threshold),
    )


async def test_a_wrong_project_key_marks_at_most_threshold_files_done(fake: FakeOpenAI) -> None:
    """Observed: every file of a wrong-project route ended done while it stayed at OpenAI."""
    ids = [f"file-{n:02d}" for n in range(15)]
    for file_id in ids:
        fake.add_file(file_id, project="proj_a")
    events = Events()
    gateway = ProviderGateway(
        _config(fake, "WRONG_KEY"), environ=KEYS, retry=NO_RETRY, route_health=events
    )
    try:
        results = [await gateway.delete_file(TENANT_B, "openai", i) for i in ids]
        again = await gateway.delete_file(TENANT_B, "openai", ids[0])
        suspected = gateway.suspected_routes()
    finally:
        await gateway.aclose()
    assert results[:10] == [Deleted(not_found=True)] * 10
    for result in [*results[10:], again]:
        assert isinstance(result, Transient)
        assert result.reason is RetryReason.CONFIG
        assert "openai is suspected: not-found for 11 distinct objects" in result.detail
    assert events.seen == [("suspected", "openai", 11)]
    assert [r.describe() for r in suspected] == ["openai"]
    assert fake.files == set(ids)  # nothing was deleted: the key belongs to another project


async def test_the_same_object_twice_is_one_distinct_not_found(fake: FakeOpenAI) -> None:
    gateway = ProviderGateway(_config(fake, "RIGHT_KEY", threshold=2), environ=KEYS, retry=NO_RETRY)
    try:
        repeated = [await gateway.delete_file(TENANT_B, "openai", "file-gone") for _ in range(5)]
        third = await gateway.delete_file(TENANT_B, "openai", "file-other")
        fourth = await gateway.delete_file(TENANT_B, "openai", "file-third")
    finally:
        await gateway.aclose()
    assert repeated == [Deleted(not_found=True)] * 5
    assert third == Deleted(not_found=True)
    assert isinstance(fourth, Transient)
    assert fourth.reason is RetryReason.CONFIG


async def test_a_suspected_route_recovers_on_its_next_success(fake: FakeOpenAI) -> None:
    fake.add_file("file-real", project="proj_a")
    events = Events()
    gateway = ProviderGateway(
        _config(fake, "RIGHT_KEY", threshold=3), environ=KEYS, retry=NO_RETRY, route_health=events
    )
    try:
        gone = [await gateway.delete_file(TENANT_B, "openai", f"gone-{n}") for n in range(4)]
        success = await gateway.delete_file(TENANT_B, "openai", "file-real")
        after = await gateway.delete_file(TENANT_B, "openai", "gone-9")
    finally:
        await gateway.aclose()
    assert gone[:3] == [Deleted(not_found=True)] * 3
    assert isinstance(gone[3], Transient)
    assert success == Deleted()
    assert after == Deleted(not_found=True)  # the streak starts again
    assert events.seen == [("suspected", "openai", 4), ("recovered", "openai", None)]


async def test_suspicion_is_per_route(fake: FakeOpenAI) -> None:
    """A tenant override on its own key is not suspected because the shared route is."""
    fake.add_file("file-a", project="proj_a")
    config = _config(fake, "WRONG_KEY", threshold=1)
    config.tenants[str(TENANT_A)] = {"openai": TenantOverride(api_key_env="A_KEY")}
    gateway = ProviderGateway(config, environ=KEYS, retry=NO_RETRY)
    try:
        await gateway.delete_file(TENANT_B, "openai", "x1")
        shared = await gateway.delete_file(TENANT_B, "openai", "x2")
        own = await gateway.delete_file(TENANT_A, "openai", "x3")
        deleted = await gateway.delete_file(TENANT_A, "openai", "file-a")
    finally:
        await gateway.aclose()
    assert isinstance(shared, Transient)
    assert own == Deleted(not_found=True)
    assert deleted == Deleted()


async def test_restored_suspicion_applies_only_to_an_unchanged_route(fake: FakeOpenAI) -> None:
    config = _config(fake, "WRONG_KEY")
    gateway = ProviderGateway(config, environ=KEYS, retry=NO_RETRY)
    try:
        [route] = gateway.routes()
        assert not gateway.restore_suspicion("openai", None, "another-configuration", 11)
        assert gateway.restore_suspicion("openai", None, route.fingerprint, 11)
        result = await gateway.delete_file(TENANT_B, "openai", "file-x")
    finally:
        await gateway.aclose()
    assert isinstance(result, Transient)
    assert "not-found for 11 distinct objects" in result.detail
    fixed = ProviderGateway(_config(fake, "RIGHT_KEY"), environ=KEYS)
    try:
        [fixed_route] = fixed.routes()
    finally:
        await fixed.aclose()
    assert fixed_route.fingerprint != route.fingerprint


# -- organization / project ----------------------------------------------------------------


async def test_organization_and_project_are_sent_per_route(fake: FakeOpenAI) -> None:
    """A user key in two projects: the configured project decides which files it sees."""
    fake.add_file("file-a", project="proj_a")
    fake.add_file("file-b", project="proj_b")
    backend = BackendConfig(
        kind="openai",
        base_url=fake.openai_base_url,
        api_key_env="WRONG_KEY",
        organization="org-shared",
        project="proj_b",
    )
    config = ProvidersConfig(
        backends={"openai": backend},
        tenants={str(TENANT_A): {"openai": TenantOverride(project="proj_a")}},
    )
    gateway = ProviderGateway(config, environ=KEYS, retry=NO_RETRY)
    try:
        tenant_a = await gateway.delete_file(TENANT_A, "openai", "file-a")
        shared = await gateway.delete_file(TENANT_B, "openai", "file-b")
    finally:
        await gateway.aclose()
    assert (tenant_a, shared) == (Deleted(), Deleted())
    first, second = fake.requests()
    assert (first.headers["openai-project"], second.headers["openai-project"]) == (
        "proj_a",
        "proj_b",
    )
    assert first.headers["openai-organization"] == second.headers["openai-organization"]
    assert first.headers["openai-organization"] == "org-shared"


async def test_process_wide_openai_org_and_project_are_ignored(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-process")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_process")
    fake.add_file("file-a")
    gateway = ProviderGateway(_config(fake, "RIGHT_KEY"), environ=KEYS, retry=NO_RETRY)
    try:
        assert await gateway.delete_file(TENANT_B, "openai", "file-a") == Deleted()
    finally:
        await gateway.aclose()
    [request] = fake.requests()
    assert "openai-organization" not in request.headers
    assert "openai-project" not in request.headers


# -- a backend without a shared key ----------------------------------------------------------


async def test_a_backend_without_a_shared_key_serves_only_tenants_with_an_override(
    fake: FakeOpenAI,
) -> None:
    """The documented safe setup: other tenants get a config retry, nothing is sent."""
    fake.add_file("file-a", project="proj_a")
    fake.add_file("file-b", project="proj_a")
    config = ProvidersConfig(
        backends={"openai": BackendConfig(kind="openai", base_url=fake.openai_base_url)},
        tenants={str(TENANT_A): {"openai": TenantOverride(api_key_env="A_KEY")}},
    )
    gateway = ProviderGateway(config, environ=KEYS, retry=NO_RETRY)
    try:
        own = await gateway.delete_file(TENANT_A, "openai", "file-a")
        other = await gateway.delete_file(TENANT_B, "openai", "file-b")
        other_store = await gateway.delete_vector_store(UUID(int=7), "openai", "vs_1")
    finally:
        await gateway.aclose()
    assert own == Deleted()
    for result in (other, other_store):
        assert isinstance(result, Transient)
        assert result.reason is RetryReason.CONFIG
        assert "has no routing for 'openai'" in result.detail
    assert [r.api_key for r in fake.requests()] == ["sk-tenant-a"]
    assert fake.files == {"file-b"}


async def test_repeats_of_the_routes_own_deletes_are_gone_not_strikes(fake: FakeOpenAI) -> None:
    """Seen in the read-only failover scenario: deletes went out, recording them failed, and the
    redeliveries' not-founds (15 in a row) made the route suspected and failed healthy rows."""
    ids = [f"file-{n:02d}" for n in range(15)]
    for file_id in ids:
        fake.add_file(file_id, project="proj_a")
    events = Events()
    gateway = ProviderGateway(
        _config(fake, "RIGHT_KEY"), environ=KEYS, retry=NO_RETRY, route_health=events
    )
    try:
        first = [await gateway.delete_file(TENANT_B, "openai", i) for i in ids]
        repeats = [await gateway.delete_file(TENANT_B, "openai", i) for i in ids]
        strangers = [await gateway.delete_file(TENANT_B, "openai", f"file-x{n}") for n in range(11)]
    finally:
        await gateway.aclose()
    assert first == [Deleted()] * 15
    assert repeats == [Deleted(not_found=True)] * 15  # gone: this route deleted them itself
    assert strangers[:10] == [Deleted(not_found=True)] * 10  # others still count as strikes
    assert isinstance(strangers[10], Transient)
    assert events.seen == [("suspected", "openai", 11)]
