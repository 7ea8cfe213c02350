"""SPEC §13 "only what was deleted is done": which 404 means "already gone", and 204.

One test per row of ``NOT_FOUND_BODIES`` (with the body as the service sends it), then every
404 that is *not* the API's own not-found for the object asked about, then the same rules
end to end through the gateway against the fake provider over real sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from cwlab.fake_openai import FakeOpenAI
from providers.support import TENANT_B, MakeGateway, providers_config, script
from worker.config import BackendConfig, ProvidersConfig
from worker.models import RetryReason
from worker.providers import CallRetryPolicy, Deleted, Transient
from worker.providers.classify import NOT_FOUND_BODIES, Target, recognised_not_found
from worker.providers.gateway import ProviderGateway
from worker.providers.results import ResourceKind

NO_RETRY = CallRetryPolicy(max_attempts=1)


def _openai_error(message: str, param: str | None = None) -> dict[str, Any]:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return {"error": error}


# Each row's body as observed (see the row's ``source``), and the request it answers.
ROW_EXAMPLES: dict[str, tuple[dict[str, Any], Target]] = {
    "openai file": (
        _openai_error("No such File object: file-zfF2YCujM4GyH71eQTgAUnsc", "id"),
        Target("openai", "file", "file-zfF2YCujM4GyH71eQTgAUnsc"),
    ),
    "openai vector store": (
        _openai_error("No vector store found with id 'vs_abc123'."),
        Target("openai", "vector_store", "vs_abc123"),
    ),
    "azure file": (
        _openai_error("No such File object: file-181a1cbdcdcf4677ada87f63a0928099", "id"),
        Target("azure", "file", "file-181a1cbdcdcf4677ada87f63a0928099"),
    ),
    "azure file (REST error shape)": (
        {"error": {"code": "notFound", "message": "File 'assistant-Xy12' not found."}},
        Target("azure", "file", "assistant-Xy12"),
    ),
    "azure vector store": (
        _openai_error("No vector store found with id 'vs_az1'."),
        Target("azure", "vector_store", "vs_az1"),
    ),
    "azure v1 file": (
        _openai_error("No such File object: file-v1", "id"),
        Target("azure_v1", "file", "file-v1"),
    ),
    "azure v1 vector store": (
        _openai_error("No vector store found with id vs_v1"),
        Target("azure_v1", "vector_store", "vs_v1"),
    ),
}


def test_every_row_of_the_table_has_an_example() -> None:
    assert set(ROW_EXAMPLES) == {row.name for row in NOT_FOUND_BODIES}
    assert all(row.source for row in NOT_FOUND_BODIES)


@pytest.mark.parametrize("name", sorted(ROW_EXAMPLES))
def test_row_recognises_its_body(name: str) -> None:
    body, target = ROW_EXAMPLES[name]
    row = recognised_not_found(httpx2.Response(404, json=body), target)
    assert row is not None
    assert row.name == name


@pytest.mark.parametrize("name", sorted(ROW_EXAMPLES))
def test_row_does_not_count_a_not_found_for_another_object(name: str) -> None:
    body, target = ROW_EXAMPLES[name]
    other = Target(target.flavor, target.resource, target.resource_id + "x")
    assert recognised_not_found(httpx2.Response(404, json=body), other) is None
    prefix = Target(target.flavor, target.resource, target.resource_id[:-1])
    assert recognised_not_found(httpx2.Response(404, json=body), prefix) is None


@pytest.mark.parametrize("name", sorted(ROW_EXAMPLES))
def test_row_does_not_count_for_the_other_resource_kind(name: str) -> None:
    body, target = ROW_EXAMPLES[name]
    kind: ResourceKind = "vector_store" if target.resource == "file" else "file"
    other = Target(target.flavor, kind, target.resource_id)
    assert recognised_not_found(httpx2.Response(404, json=body), other) is None


FILE = Target("openai", "file", "file-1")
UNRECOGNISED: list[tuple[str, httpx2.Response, Target]] = [
    (
        "openai Invalid URL (base_url without /v1)",
        httpx2.Response(404, json=_openai_error("Invalid URL (DELETE /files/file-1)")),
        FILE,
    ),
    (
        "azure Resource not found (wrong endpoint, deployment or api-version)",
        httpx2.Response(404, json={"error": {"code": "404", "message": "Resource not found"}}),
        Target("azure", "file", "file-1"),
    ),
    (
        "azure Resource not found on the v1 path",
        httpx2.Response(404, json={"error": {"code": "404", "message": "Resource not found"}}),
        Target("azure_v1", "vector_store", "vs_1"),
    ),
    ("HTML page from a proxy", httpx2.Response(404, html="<h1>404 Not Found</h1>"), FILE),
    ("plain text from an ingress", httpx2.Response(404, text="default backend - 404"), FILE),
    ("empty body", httpx2.Response(404), FILE),
    ("JSON null", httpx2.Response(404, json=None), FILE),
    ("JSON list", httpx2.Response(404, json=["No such File object: file-1"]), FILE),
    ("framework default", httpx2.Response(404, json={"detail": "Not Found"}), FILE),
    (
        "the OpenAPI document's example (no id)",
        httpx2.Response(404, json=_openai_error("No such File object", "id")),
        FILE,
    ),
    (
        "a file not-found answering a vector-store delete",
        httpx2.Response(404, json=_openai_error("No such File object: vs_1")),
        Target("openai", "vector_store", "vs_1"),
    ),
    (
        "right message, wrong error type",
        httpx2.Response(
            404,
            json={"error": {"message": "No such File object: file-1", "type": "server_error"}},
        ),
        FILE,
    ),
    (
        "message that only starts like a not-found",
        httpx2.Response(404, json=_openai_error("No such File object: file-1 (proxy rewrite)")),
        FILE,
    ),
    (
        "azure REST notFound without the id",
        httpx2.Response(404, json={"error": {"code": "notFound", "message": "Not found"}}),
        Target("azure", "file", "file-1"),
    ),
    (
        "azure REST notFound on the OpenAI flavour",
        httpx2.Response(404, json={"error": {"code": "notFound", "message": "file-1 not found"}}),
        FILE,
    ),
]


@pytest.mark.parametrize(
    ("response", "target"), [pytest.param(r, t, id=name) for name, r, t in UNRECOGNISED]
)
def test_other_404s_are_not_recognised(response: httpx2.Response, target: Target) -> None:
    assert recognised_not_found(response, target) is None


@pytest.mark.parametrize(
    ("response", "target"), [pytest.param(r, t, id=name) for name, r, t in UNRECOGNISED]
)
async def test_other_404s_are_a_config_retry_through_the_gateway(
    make_gateway: MakeGateway, response: httpx2.Response, target: Target
) -> None:
    upstream = script(response)
    gateway = make_gateway(providers_config(), upstream, retry=NO_RETRY)
    label = "openai" if target.flavor == "openai" else "azure"
    if target.resource == "file":
        result = await gateway.delete_file(TENANT_B, label, target.resource_id)
    else:
        result = await gateway.delete_vector_store(TENANT_B, label, target.resource_id)
    assert isinstance(result, Transient)
    assert result.reason is RetryReason.CONFIG
    assert "not the API's not-found" in result.detail


# -- end to end against the fake provider ---------------------------------------------------

KEYS = {"OPENAI_KEY": "sk-shared", "AZURE_KEY": "az-shared"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=KEYS.values()) as server:
        yield server


def _config(**backends: BackendConfig) -> ProvidersConfig:
    return ProvidersConfig(backends=backends)


async def _gateway(config: ProvidersConfig) -> ProviderGateway:
    return ProviderGateway(config, environ=KEYS, retry=NO_RETRY)


async def test_a_base_url_without_v1_deletes_nothing_and_marks_nothing_done(
    fake: FakeOpenAI,
) -> None:
    """Observed: every file of such a route ended `done` while it stayed at the provider."""
    fake.add_file("file-1")
    fake.add_vector_store("vs_1")
    config = _config(
        openai=BackendConfig(kind="openai", base_url=fake.url, api_key_env="OPENAI_KEY")
    )
    gateway = await _gateway(config)
    try:
        file_result = await gateway.delete_file(TENANT_B, "openai", "file-1")
        store_result = await gateway.delete_vector_store(TENANT_B, "openai", "vs_1")
    finally:
        await gateway.aclose()
    for result in (file_result, store_result):
        assert isinstance(result, Transient)
        assert result.reason is RetryReason.CONFIG
    assert (fake.files, fake.vector_stores) == ({"file-1"}, {"vs_1"})
    assert [r.status for r in fake.requests()] == [404, 404]


async def test_an_api_version_the_resource_does_not_serve_is_not_gone(fake: FakeOpenAI) -> None:
    """Azure answers "Resource not found" for a wrong api-version: a config retry, not done."""
    fake.add_file("file-1")
    config = _config(
        azure=BackendConfig(
            kind="azure",
            endpoint=fake.azure_endpoint,
            api_version="2099-12-01-preview",
            api_key_env="AZURE_KEY",
        )
    )
    gateway = await _gateway(config)
    try:
        result = await gateway.delete_file(TENANT_B, "azure", "file-1")
    finally:
        await gateway.aclose()
    assert isinstance(result, Transient)
    assert result.reason is RetryReason.CONFIG
    assert fake.files == {"file-1"}


async def test_azure_ga_204_no_content_is_deleted(fake: FakeOpenAI) -> None:
    """Observed: a 204 read as "not deleted" and the delete that happened was retried."""
    fake.add_file("file-1")
    config = _config(
        azure=BackendConfig(
            kind="azure",
            endpoint=fake.azure_endpoint,
            api_version="2024-06-01",
            api_key_env="AZURE_KEY",
        )
    )
    gateway = await _gateway(config)
    try:
        result = await gateway.delete_file(TENANT_B, "azure", "file-1")
    finally:
        await gateway.aclose()
    assert result == Deleted()
    assert [(r.status, r.deleted) for r in fake.requests()] == [(204, True)]
    assert fake.files == set()


async def test_the_real_not_found_bodies_still_mean_gone(fake: FakeOpenAI) -> None:
    """A second delete of the same objects: the API's own not-found, on every surface."""
    config = _config(
        openai=BackendConfig(
            kind="openai", base_url=fake.openai_base_url, api_key_env="OPENAI_KEY"
        ),
        azure=BackendConfig(
            kind="azure",
            endpoint=fake.azure_endpoint,
            api_version="2025-03-01-preview",
            api_key_env="AZURE_KEY",
        ),
        azurev1=BackendConfig(
            kind="azure", base_url=f"{fake.url}/openai/v1/", api_key_env="AZURE_KEY"
        ),
    )
    gateway = await _gateway(config)
    try:
        for label in ("openai", "azure", "azurev1"):
            assert await gateway.delete_file(TENANT_B, label, "gone") == Deleted(not_found=True)
            assert await gateway.delete_vector_store(TENANT_B, label, "vs_gone") == Deleted(
                not_found=True
            )
    finally:
        await gateway.aclose()
    paths = [r.path for r in fake.requests()]
    assert paths[4:] == ["/openai/v1/files/gone", "/openai/v1/vector_stores/vs_gone"]
    assert all(not r.query for r in fake.requests()[4:])  # v1 GA: no api-version
