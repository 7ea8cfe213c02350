"""The worker's provider calls against OpenAI's own API description, served by Prism.

Every request the gateway sends (OpenAI and Azure classic wire, files and vector stores) must
pass Prism's request validation (method, path, security scheme): Prism runs with ``--errors``,
so a violation is answered 4xx with an ``sl-violations`` header, which the tests look for.
Then ``Prefer: code=N[, example=E]`` makes Prism answer each documented status and 404 shape,
and the test checks the class the gateway gives it (SPEC §6, §13).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import httpx2
import openai
import pytest

from contract.conftest import LIVE_FILE_ID, LIVE_VECTOR_STORE_ID
from worker.config import BackendConfig, ProvidersConfig
from worker.models import RetryReason
from worker.providers import CallRetryPolicy, Deleted, DeleteResult, Transient
from worker.providers.gateway import ProviderGateway

TENANT = UUID("eeeeeeee-0000-4000-8000-00000000000e")
KEYS = {"OPENAI_KEY": "sk-contract", "AZURE_KEY": "az-contract"}
NO_RETRY = CallRetryPolicy(max_attempts=1)
LABELS = ("openai", "azure")


@dataclass
class Wire:
    """What went over the wire: the ``Prefer`` header to add, and every answer seen."""

    prefer: str | None = None
    seen: list[tuple[str, str, int, str | None]] = field(default_factory=list)

    def client(self) -> httpx2.AsyncClient:
        async def add_prefer(request: httpx2.Request) -> None:
            if self.prefer is not None:
                request.headers["Prefer"] = self.prefer

        async def record(response: httpx2.Response) -> None:
            request = response.request
            violations = response.headers.get("sl-violations")
            self.seen.append((request.method, request.url.path, response.status_code, violations))

        return openai.DefaultAsyncHttpxClient(
            follow_redirects=False, event_hooks={"request": [add_prefer], "response": [record]}
        )


@pytest.fixture
async def wire_and_gateway(prism_url: str) -> AsyncIterator[tuple[Wire, ProviderGateway]]:
    wire = Wire()
    config = ProvidersConfig(
        backends={
            "openai": BackendConfig(
                kind="openai", base_url=f"{prism_url}/v1", api_key_env="OPENAI_KEY"
            ),
            "azure": BackendConfig(
                kind="azure",
                endpoint=prism_url,
                api_version="2025-03-01-preview",
                api_key_env="AZURE_KEY",
            ),
        }
    )
    gateway = ProviderGateway(config, environ=KEYS, retry=NO_RETRY, http_client=wire.client())
    yield wire, gateway
    await gateway.aclose()


async def _delete(gateway: ProviderGateway, label: str, resource: str, rid: str) -> DeleteResult:
    if resource == "file":
        return await gateway.delete_file(TENANT, label, rid)
    return await gateway.delete_vector_store(TENANT, label, rid)


async def test_prism_rejects_a_request_that_breaks_the_description(prism_url: str) -> None:
    """The control: without credentials Prism answers 401 with its violation header."""
    async with httpx2.AsyncClient() as http:
        response = await http.delete(f"{prism_url}/v1/files/{LIVE_FILE_ID}")
    assert response.status_code == 401
    assert "Invalid security scheme" in response.headers["sl-violations"]


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("resource", ["file", "vector_store"])
async def test_every_request_the_gateway_sends_validates(
    wire_and_gateway: tuple[Wire, ProviderGateway], label: str, resource: str
) -> None:
    wire, gateway = wire_and_gateway
    result = await _delete(gateway, label, resource, "file-contract-1")
    assert result == Deleted()
    [(method, path, status, violations)] = wire.seen
    assert (method, status, violations) == ("DELETE", 200, None)
    prefix = "/v1" if label == "openai" else "/openai"
    plural = "files" if resource == "file" else "vector_stores"
    assert path == f"{prefix}/{plural}/file-contract-1"


def _config_retry(result: DeleteResult) -> bool:
    return isinstance(result, Transient) and result.reason is RetryReason.CONFIG


CASES = [
    # (Prefer header, resource, id, expected class)
    ("code=404, example=live_file_not_found", "file", LIVE_FILE_ID, "not_found"),
    ("code=404, example=live_vector_store_not_found", "vector_store", LIVE_VECTOR_STORE_ID,
     "not_found"),
    # The document's own example has no id ("No such File object"): not the live API's answer.
    ("code=404", "file", LIVE_FILE_ID, "config"),
    ("code=404", "vector_store", LIVE_VECTOR_STORE_ID, "config"),  # a *file* not-found
    ("code=404, example=live_file_not_found", "vector_store", LIVE_FILE_ID, "config"),
    ("code=404, example=live_file_not_found", "file", "file-other", "config"),
    ("code=404, example=invalid_url", "file", LIVE_FILE_ID, "config"),
    # Azure's {"error": {"code": "404", "message": "Resource not found"}} is not an OpenAI
    # ErrorResponse (no type/param): Prism --errors refuses to serve it (500). It is covered
    # against the fake provider and in tests/providers/test_not_found.py.
    ("code=429", "file", LIVE_FILE_ID, "rate_limited"),
    ("code=500", "file", LIVE_FILE_ID, "server_error"),
    ("code=503", "vector_store", LIVE_VECTOR_STORE_ID, "server_error"),
    ("code=409", "file", LIVE_FILE_ID, "conflict"),
    ("code=401", "file", LIVE_FILE_ID, "auth"),
    ("code=403", "vector_store", LIVE_VECTOR_STORE_ID, "auth"),
    ("code=200", "file", LIVE_FILE_ID, "deleted"),
]  # fmt: skip


def _class_of(result: DeleteResult) -> str:
    if isinstance(result, Deleted):
        return "not_found" if result.not_found else "deleted"
    if isinstance(result, Transient):
        return result.reason.value
    return "permanent"


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize(("prefer", "resource", "rid", "expected"), CASES)
async def test_each_documented_answer_lands_in_its_class(
    wire_and_gateway: tuple[Wire, ProviderGateway],
    label: str,
    prefer: str,
    resource: str,
    rid: str,
    expected: str,
) -> None:
    wire, gateway = wire_and_gateway
    wire.prefer = prefer
    result = await _delete(gateway, label, resource, rid)
    assert _class_of(result) == expected, result
    [(_, _, status, violations)] = wire.seen
    assert violations is None  # the request itself was valid
    assert str(status) == prefer.split(",")[0].removeprefix("code=")
    if expected == "config":
        assert _config_retry(result)
