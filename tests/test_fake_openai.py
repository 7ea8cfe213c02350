"""The fake OpenAI server, driven by the real ``openai`` SDK over real sockets.

Every other suite trusts this server to behave like the provider, so each behaviour is checked
from the SDK's side (what the worker will see) and from the request log (what went on the wire).
"""

from __future__ import annotations

import asyncio
import bisect
import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest

from cwlab.fake_openai import FakeOpenAI, Fault, RecordedRequest

KEY = "sk-tenant-a"
OTHER_KEY = "sk-tenant-b"
API_VERSION = "2025-03-01-preview"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=[KEY, OTHER_KEY]) as server:
        yield server


def _openai(fake: FakeOpenAI, key: str = KEY, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=fake.openai_base_url, max_retries=0, timeout=timeout)


def _azure(fake: FakeOpenAI, key: str = KEY, api_version: str = API_VERSION) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        api_key=key,
        azure_endpoint=fake.azure_endpoint,
        api_version=api_version,
        max_retries=0,
        timeout=5.0,
    )


def _only(fake: FakeOpenAI) -> RecordedRequest:
    (request,) = fake.requests()
    return request


# -- the happy path, both flavors -----------------------------------------------------------


def test_openai_file_delete_is_answered_logged_and_applied(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.add_file("file-keep")
    with _openai(fake) as client:
        deleted = client.files.delete("file-1")
    assert (deleted.id, deleted.object, deleted.deleted) == ("file-1", "file", True)
    assert fake.files == {"file-keep"}
    request = _only(fake)
    assert (request.method, request.path, request.query) == ("DELETE", "/v1/files/file-1", {})
    assert (request.auth_scheme, request.api_key) == ("bearer", KEY)
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert (request.flavor, request.resource, request.resource_id) == ("openai", "file", "file-1")
    assert (request.status, request.deleted) == (200, True)
    assert fake.deletes() == [request]
    assert fake.deletes("file") == [request]
    assert fake.deletes("vector_store") == []


def test_openai_vector_store_delete_keeps_its_files(fake: FakeOpenAI) -> None:
    fake.add_vector_store("vs_1", ["file-a", "file-b"])
    fake.add_vector_store("vs_2")
    with _openai(fake) as client:
        deleted = client.vector_stores.delete("vs_1")
    assert (deleted.id, deleted.object, deleted.deleted) == ("vs_1", "vector_store.deleted", True)
    assert fake.vector_stores == {"vs_2"}
    assert fake.files == {"file-a", "file-b"}
    request = _only(fake)
    assert request.path == "/v1/vector_stores/vs_1"
    assert request.headers["openai-beta"] == "assistants=v2"
    assert (request.resource, request.resource_id, request.deleted) == (
        "vector_store",
        "vs_1",
        True,
    )
    assert fake.deletes("vector_store") == [request]


def test_deleting_a_file_removes_it_from_vector_stores(fake: FakeOpenAI) -> None:
    fake.add_vector_store("vs_1", ["file-a", "file-b"])
    fake.add_vector_store("vs_2", ["file-a"])
    with _openai(fake) as client:
        client.files.delete("file-a")
    assert fake.vector_store_files("vs_1") == {"file-b"}
    assert fake.vector_store_files("vs_2") == set()
    assert fake.vector_stores == {"vs_1", "vs_2"}


def test_second_delete_and_unknown_ids_are_404(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.add_vector_store("vs_1")
    with _openai(fake) as client:
        client.files.delete("file-1")
        client.vector_stores.delete("vs_1")
        with pytest.raises(openai.NotFoundError, match="file-1"):
            client.files.delete("file-1")
        with pytest.raises(openai.NotFoundError, match="vs_1"):
            client.vector_stores.delete("vs_1")
        with pytest.raises(openai.NotFoundError):
            client.files.delete("file-never-existed")
    assert [r.status for r in fake.requests()] == [200, 200, 404, 404, 404]
    assert len(fake.deletes()) == 2


def test_azure_deletes_send_api_version_and_api_key(fake: FakeOpenAI) -> None:
    fake.add_vector_store("vs_1", ["file-1"])
    with _azure(fake) as client:
        file_deleted = client.files.delete("file-1")
        store_deleted = client.vector_stores.delete("vs_1")
    assert (file_deleted.deleted, store_deleted.deleted) == (True, True)
    assert fake.files == set()
    assert fake.vector_stores == set()
    file_request, store_request = fake.requests()
    assert file_request.path == "/openai/files/file-1"
    assert store_request.path == "/openai/vector_stores/vs_1"
    for request in (file_request, store_request):
        assert request.query == {"api-version": API_VERSION}
        assert (request.auth_scheme, request.api_key) == ("api-key", KEY)
        assert "authorization" not in request.headers
        assert (request.flavor, request.status, request.deleted) == ("azure", 200, True)


def test_azure_v1_ga_path_takes_bearer_without_api_version(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    with openai.OpenAI(
        api_key=KEY, base_url=f"{fake.url}/openai/v1", max_retries=0, timeout=5.0
    ) as client:
        assert client.files.delete("file-1").deleted
    request = _only(fake)
    assert (request.path, request.query) == ("/openai/v1/files/file-1", {})
    assert (request.flavor, request.auth_scheme, request.status) == ("azure", "bearer", 200)


def test_a_path_prefix_plays_a_tenant_endpoint(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.add_file("file-2")
    with (
        openai.AzureOpenAI(
            api_key=KEY,
            azure_endpoint=f"{fake.url}/tenant-b",
            api_version=API_VERSION,
            max_retries=0,
            timeout=5.0,
        ) as tenant_b,
        _azure(fake) as default,
    ):
        assert tenant_b.files.delete("file-1").deleted
        assert default.files.delete("file-2").deleted
    assert [r.path for r in fake.deletes()] == [
        "/tenant-b/openai/files/file-1",
        "/openai/files/file-2",
    ]


# -- refusals: auth, api-version, routes ------------------------------------------------------


def test_an_unknown_key_is_401_and_deletes_nothing(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    with _openai(fake, key="sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.files.delete("file-1")
    with _azure(fake, key="sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.files.delete("file-1")
    assert fake.files == {"file-1"}
    assert [(r.status, r.api_key) for r in fake.requests()] == [(401, "sk-wrong")] * 2


def test_without_api_keys_any_key_is_accepted() -> None:
    with FakeOpenAI() as fake:
        fake.add_file("file-1")
        with _openai(fake, key="anything") as client:
            assert client.files.delete("file-1").deleted


def test_azure_answers_an_unserved_api_version_resource_not_found(fake: FakeOpenAI) -> None:
    """Azure's own answer to a wrong api-version is a 404 that must never read as "gone"."""
    fake.add_file("file-1")
    with _azure(fake, api_version="2023-05-15") as client:
        with pytest.raises(openai.NotFoundError) as file_error:
            client.files.delete("file-1")
        with pytest.raises(openai.NotFoundError) as store_error:
            client.vector_stores.delete("vs_1")
    for error in (file_error, store_error):
        assert error.value.response.json() == {
            "error": {"code": "404", "message": "Resource not found"}
        }
    # The classic Azure path without ?api-version=, as a misconfigured OpenAI client sends it.
    with (
        openai.OpenAI(
            api_key=KEY, base_url=f"{fake.url}/openai", max_retries=0, timeout=5.0
        ) as client,
        pytest.raises(openai.BadRequestError, match="api-version"),
    ):
        client.files.delete("file-1")
    assert fake.files == {"file-1"}
    assert [r.status for r in fake.requests()] == [404, 404, 400]


@pytest.mark.parametrize("api_version", ["2024-02-01", "2024-06-01"])
def test_azure_ga_versions_answer_a_file_delete_with_204(
    fake: FakeOpenAI, api_version: str
) -> None:
    """As Azure GA does; the SDK then returns "" from files.delete, not a FileDeleted."""
    fake.add_file("file-1")
    fake.add_file("file-2")
    with _azure(fake, api_version=api_version) as client:
        raw = client.files.with_raw_response.delete("file-1")
        parsed = client.files.delete("file-2")
    assert (raw.status_code, raw.http_response.content) == (204, b"")
    assert str(parsed) == ""  # what a caller reading `.deleted` would miss
    assert not hasattr(parsed, "deleted")
    assert fake.files == set()
    assert [r.deleted for r in fake.requests()] == [True, True]


def test_azure_2024_02_01_has_no_vector_stores(fake: FakeOpenAI) -> None:
    fake.add_vector_store("vs_1")
    with _azure(fake, api_version="2024-02-01") as client, pytest.raises(openai.NotFoundError):
        client.vector_stores.delete("vs_1")
    assert fake.vector_stores == {"vs_1"}


def test_a_base_url_without_v1_gets_invalid_url(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    with (
        openai.OpenAI(api_key=KEY, base_url=fake.url, max_retries=0, timeout=5.0) as client,
        pytest.raises(openai.NotFoundError) as error,
    ):
        client.files.delete("file-1")
    assert error.value.response.json()["error"]["message"] == "Invalid URL (DELETE /files/file-1)"
    assert fake.files == {"file-1"}


def test_a_key_of_another_project_is_told_no_such_file() -> None:
    projects = {"sk-project-a": "proj_a", "sk-project-b": "proj_b"}
    with FakeOpenAI(key_projects=projects) as fake:
        fake.add_file("file-1", project="proj_a")
        fake.add_vector_store("vs_1", project="proj_a")
        with _openai(fake, key="sk-project-b") as wrong:
            with pytest.raises(openai.NotFoundError) as file_error:
                wrong.files.delete("file-1")
            with pytest.raises(openai.NotFoundError) as store_error:
                wrong.vector_stores.delete("vs_1")
        assert file_error.value.response.json()["error"] == {
            "message": "No such File object: file-1",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
        assert store_error.value.response.json()["error"]["message"] == (
            "No vector store found with id 'vs_1'."
        )
        assert (fake.files, fake.vector_stores) == ({"file-1"}, {"vs_1"})
        # The OpenAI-Project header chooses the project too (a user key in many projects).
        with openai.OpenAI(
            api_key="sk-project-b", project="proj_a", base_url=fake.openai_base_url,
            max_retries=0, timeout=5.0,
        ) as by_header:  # fmt: skip
            assert by_header.files.delete("file-1").deleted
        with _openai(fake, key="sk-project-a") as right:
            assert right.vector_stores.delete("vs_1").deleted


def test_implicit_ids_exist_until_deleted() -> None:
    with FakeOpenAI(implicit_ids=True) as fake, _openai(fake) as client:
        assert client.files.delete("file-never-seeded").deleted
        assert client.vector_stores.delete("vs_never_seeded").deleted
        with pytest.raises(openai.NotFoundError):
            client.files.delete("file-never-seeded")
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.delete("vs_never_seeded")
    assert [r.resource_id for r in fake.deletes()] == ["file-never-seeded", "vs_never_seeded"]


def test_custom_azure_api_versions_replace_the_default_set() -> None:
    with FakeOpenAI(azure_api_versions=["2099-01-01"]) as fake:
        fake.add_file("file-1")
        with _azure(fake) as client, pytest.raises(openai.NotFoundError):
            client.files.delete("file-1")
        with _azure(fake, api_version="2099-01-01") as client:
            assert client.files.delete("file-1").deleted


def test_unknown_routes_are_404_and_other_methods_405(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx2.Client(base_url=fake.url, headers=headers, timeout=5.0) as http:
        unknown = http.delete("/v1/chat/completions")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"] == "Invalid URL (DELETE /v1/chat/completions)"
        assert http.delete("/openai/deployments/gpt/files/file-1").status_code == 404
        wrong_method = http.get("/v1/files/file-1")
        assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "DELETE")
    assert [r.status for r in fake.requests()] == [404, 404, 405]
    assert [r.flavor for r in fake.requests()] == ["openai", "azure", "openai"]
    assert {r.resource for r in fake.requests()[:2]} == {"other"}
    assert fake.files == {"file-1"}


def test_connections_are_kept_alive_even_after_a_request_body(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    auth = {"Authorization": f"Bearer {KEY}"}
    connection = http.client.HTTPConnection(fake.url.removeprefix("http://"), timeout=5.0)
    try:
        connection.request("POST", "/v1/files/file-1", body=b'{"purpose": "x"}', headers=auth)
        refused = connection.getresponse()
        assert (refused.status, json.loads(refused.read())["error"]["type"]) == (
            405,
            "invalid_request_error",
        )
        socket_before = connection.sock
        assert socket_before is not None  # not closed after the answer
        connection.request("DELETE", "/v1/files/file-1", headers=auth)
        answer = connection.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read()) == {"id": "file-1", "object": "file", "deleted": True}
        assert connection.sock is socket_before  # the same TCP connection served both
    finally:
        connection.close()
    assert [r.status for r in fake.requests()] == [405, 200]


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "header", "value"),
    [
        ({"Retry-After": "2"}, "retry-after", "2"),
        ({"retry-after-ms": "150"}, "retry-after-ms", "150"),
    ],
)
def test_a_429_fault_reaches_the_sdk_with_its_retry_after(
    fake: FakeOpenAI, headers: dict[str, str], header: str, value: str
) -> None:
    fake.add_file("file-1")
    fake.inject(Fault(status=429, headers=headers))
    with _openai(fake) as client, pytest.raises(openai.RateLimitError) as caught:
        client.files.delete("file-1")
    assert caught.value.response.headers[header] == value
    assert caught.value.body == {
        "message": "Too Many Requests (injected fault)",
        "type": "requests",
        "param": None,
        "code": None,
    }
    assert fake.files == {"file-1"}
    assert _only(fake).status == 429


def test_a_5xx_fault_is_an_internal_server_error(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.inject(Fault(status=503))
    with _openai(fake) as client, pytest.raises(openai.InternalServerError) as caught:
        client.files.delete("file-1")
    assert caught.value.status_code == 503
    assert fake.files == {"file-1"}
    assert fake.deletes() == []


def test_a_deleted_false_fault_answers_200_and_keeps_the_resource(fake: FakeOpenAI) -> None:
    fake.add_vector_store("vs_1")
    fake.inject(Fault(deleted_false=True))
    with _azure(fake) as client:
        answer = client.vector_stores.delete("vs_1")
    assert (answer.id, answer.deleted) == ("vs_1", False)
    assert fake.vector_stores == {"vs_1"}
    assert (_only(fake).status, _only(fake).deleted) == (200, False)
    assert fake.deletes() == []


def test_a_delay_fault_times_the_sdk_out_but_the_delete_still_happens(
    fake: FakeOpenAI, capfd: pytest.CaptureFixture[str]
) -> None:
    fake.add_file("file-slow")
    fake.inject(Fault(delay_seconds=1.5))
    with _openai(fake, timeout=0.2) as client, pytest.raises(openai.APITimeoutError):
        client.files.delete("file-slow")
    assert fake.files == {"file-slow"}  # not yet: the server is still "working"
    deadline = time.monotonic() + 5.0
    while fake.files and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.files == set()
    assert [r.status for r in fake.deletes()] == [200]
    fake.stop()  # the handler thread meets the closed connection: expected, not worth a traceback
    assert capfd.readouterr().err == ""


def test_a_delay_combines_with_a_status(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.inject(Fault(status=500, delay_seconds=0.3))
    started = time.monotonic()
    with _openai(fake) as client, pytest.raises(openai.InternalServerError):
        client.files.delete("file-1")
    assert time.monotonic() - started >= 0.3


def test_a_reset_fault_is_a_connection_error_not_an_answer(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.inject(Fault(reset=True, times=1))
    with _openai(fake) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            client.files.delete("file-1")
        assert type(caught.value) is openai.APIConnectionError  # not a timeout
        assert "Connection reset" in str(caught.value.__cause__)  # RST, not an orderly FIN
        assert fake.files == {"file-1"}
        assert client.files.delete("file-1").deleted  # the client recovers on a new connection
    assert [r.status for r in fake.requests()] == [None, 200]


def test_times_limits_a_fault_and_faults_apply_in_injection_order(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.inject(Fault(status=500, times=2))
    fake.inject(Fault(status=503, times=1))
    with _openai(fake) as client:
        for expected in (500, 500, 503):
            with pytest.raises(openai.InternalServerError) as caught:
                client.files.delete("file-1")
            assert caught.value.status_code == expected
        assert client.files.delete("file-1").deleted
    assert [r.status for r in fake.requests()] == [500, 500, 503, 200]


def test_path_contains_scopes_a_fault(fake: FakeOpenAI) -> None:
    for file_id in ("file-good", "file-bad"):
        fake.add_file(file_id)
    fake.add_vector_store("vs_1")
    fake.inject(Fault(status=500, path_contains="file-bad"))
    fake.inject(Fault(status=502, path_contains="/vector_stores/"))
    with _openai(fake) as client:
        assert client.files.delete("file-good").deleted
        with pytest.raises(openai.InternalServerError) as caught:
            client.files.delete("file-bad")
        assert caught.value.status_code == 500
        with pytest.raises(openai.InternalServerError) as caught:
            client.vector_stores.delete("vs_1")
        assert caught.value.status_code == 502
    assert fake.files == {"file-bad"}
    assert fake.vector_stores == {"vs_1"}


def test_key_scopes_a_fault_to_one_tenant(fake: FakeOpenAI) -> None:
    fake.add_file("file-a")
    fake.add_file("file-b")
    fake.inject(Fault(status=503, key=OTHER_KEY))
    with _openai(fake, key=KEY) as tenant_a, _openai(fake, key=OTHER_KEY) as tenant_b:
        assert tenant_a.files.delete("file-a").deleted
        with pytest.raises(openai.InternalServerError):
            tenant_b.files.delete("file-b")
    assert fake.files == {"file-b"}
    assert [(r.api_key, r.status) for r in fake.requests()] == [(KEY, 200), (OTHER_KEY, 503)]


def test_clear_faults_restores_normal_answers(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    fake.inject(Fault(status=500))
    with _openai(fake) as client:
        with pytest.raises(openai.InternalServerError):
            client.files.delete("file-1")
        fake.clear_faults()
        assert client.files.delete("file-1").deleted


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 200},
        {"status": 600},
        {"status": 500, "reset": True},
        {"reset": True, "deleted_false": True},
        {"times": 0},
        {"delay_seconds": -1.0},
    ],
)
def test_contradictory_faults_are_refused(fault: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Fault"):
        Fault(**fault)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *[(status, True) for status in (408, 409, 429, 500, 503)],
        *[(status, False) for status in (400, 401, 403, 404, 422)],
    ],
)
def test_which_statuses_the_sdk_retries_by_itself(
    fake: FakeOpenAI, status: int, retried: bool
) -> None:
    """Pins the SDK behaviour the worker relies on to keep one owner of retries."""
    fake.add_file("file-1")
    fake.inject(Fault(status=status, times=1, headers={"retry-after-ms": "1"}))
    with openai.OpenAI(
        api_key=KEY, base_url=fake.openai_base_url, max_retries=1, timeout=5.0
    ) as client:
        if retried:
            assert client.files.delete("file-1").deleted
        else:
            with pytest.raises(openai.APIStatusError):
                client.files.delete("file-1")
    attempts = [r.headers["x-stainless-retry-count"] for r in fake.requests()]
    assert attempts == (["0", "1"] if retried else ["0"])


# -- rate limit, latency, concurrency ----------------------------------------------------------


def test_the_rate_limit_answers_429_saying_when_to_come_back() -> None:
    with FakeOpenAI(rate_limit_rps=5, implicit_ids=True) as fake, _openai(fake) as client:
        outcomes: list[int | openai.RateLimitError] = []
        for i in range(20):  # 5 a second: far fewer than 20 succeed before one is refused
            try:
                outcomes.append(200 if client.files.delete(f"file-{i}").deleted else 0)
            except openai.RateLimitError as exc:
                outcomes.append(exc)
                break
        assert outcomes[:5] == [200] * 5  # a burst of one second's worth
        limited = outcomes[-1]
        assert isinstance(limited, openai.RateLimitError)
        headers = limited.response.headers
        assert headers["retry-after"] == "1"
        assert 0 < int(headers["retry-after-ms"]) <= 200  # one token every 200 ms
        time.sleep(int(headers["retry-after-ms"]) / 1000)
        assert client.files.delete("file-after-wait").deleted
    assert [r.status for r in fake.requests()].count(429) == 1
    assert all(r.status == 200 for r in fake.deletes())


def test_latency_applies_to_every_request() -> None:
    with FakeOpenAI(latency_seconds=0.2) as fake, _openai(fake) as client:
        fake.add_file("file-1")
        started = time.monotonic()
        assert client.files.delete("file-1").deleted
        assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        with pytest.raises(openai.NotFoundError):
            client.files.delete("file-1")
        assert time.monotonic() - started >= 0.2


async def test_64_concurrent_deletes_are_served_in_parallel_and_all_logged() -> None:
    ids = [f"file-{i}" for i in range(64)]
    latency = 0.5
    with FakeOpenAI(api_keys=[KEY], latency_seconds=latency) as fake:
        for file_id in ids:
            fake.add_file(file_id)
        async with openai.AsyncOpenAI(
            api_key=KEY, base_url=fake.openai_base_url, max_retries=0, timeout=30.0
        ) as client:
            started = time.monotonic()
            answers = await asyncio.gather(*(client.files.delete(i) for i in ids))
            elapsed = time.monotonic() - started
        log = fake.requests()
    assert all(answer.deleted for answer in answers)
    assert fake.files == set()
    assert sorted(r.resource_id or "" for r in log) == sorted(ids)
    assert {r.status for r in log} == {200}
    # Each request is held for `latency` after it arrives, so requests arriving within one
    # latency of each other were all in the server at once. A busy machine slows the client's
    # sending, hence "most", not "all"; a server serving few at a time gets nowhere near.
    arrivals = sorted(r.at for r in log)
    in_flight = max(bisect.bisect_left(arrivals, t + latency) - i for i, t in enumerate(arrivals))
    assert in_flight >= 48
    assert elapsed < 64 * latency / 8


async def test_concurrent_deletes_of_one_id_succeed_exactly_once() -> None:
    with FakeOpenAI(latency_seconds=0.05) as fake:
        fake.add_file("file-1")
        async with openai.AsyncOpenAI(
            api_key=KEY, base_url=fake.openai_base_url, max_retries=0, timeout=10.0
        ) as client:
            outcomes = await asyncio.gather(
                *(client.files.delete("file-1") for _ in range(32)), return_exceptions=True
            )
    assert sum(isinstance(o, openai.types.FileDeleted) for o in outcomes) == 1
    assert sum(isinstance(o, openai.NotFoundError) for o in outcomes) == 31
    assert len(fake.deletes()) == 1


def test_stop_drops_idle_keep_alive_connections(fake: FakeOpenAI) -> None:
    fake.add_file("file-1")
    with _openai(fake) as client:
        client.files.delete("file-1")  # leaves an idle kept-alive connection
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(openai.APIConnectionError):
            client.files.delete("file-1")


# -- as a process ------------------------------------------------------------------------------


@pytest.mark.slow
def test_module_entry_point_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "cwlab.fake_openai", "--port", "0"]
    with subprocess.Popen(
        [*command, "--api-key", KEY, "--implicit-ids", "--latency", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with openai.OpenAI(
                api_key=KEY, base_url=f"{url}/v1", max_retries=0, timeout=5.0
            ) as client:
                assert client.files.delete("file-1").deleted
                with pytest.raises(openai.NotFoundError):
                    client.files.delete("file-1")
                with pytest.raises(openai.AuthenticationError):
                    client.with_options(api_key="sk-wrong").files.delete("file-2")
            summary = httpx2.get(f"{url}/_fake/summary", timeout=5.0).json()
            assert summary == {
                "requests": 3,
                "statuses": {"200": 1, "404": 1, "401": 1},
                "deleted": {"file": ["file-1"], "vector_store": []},
            }
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert process.communicate()[1] == ""  # quiet: nothing logged per request
        finally:
            if process.poll() is None:
                process.kill()
