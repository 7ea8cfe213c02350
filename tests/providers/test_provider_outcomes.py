"""Every provider answer maps to exactly one DeleteResult and one observer outcome (SPEC §6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

import httpx2
import pytest

from providers.support import (
    SECRET,
    TENANT_B,
    MakeGateway,
    Recorder,
    Step,
    api_error,
    deleted,
    not_found,
    providers_config,
    script,
)
from worker.models import RetryReason
from worker.providers import CallRetryPolicy, Deleted, DeleteResult, Permanent, Transient
from worker.providers.classify import parse_retry_after

NO_RETRY = CallRetryPolicy(max_attempts=1)
WALL_NOW = 1_700_000_000.0


def raises(exc: Callable[[httpx2.Request], Exception]) -> Step:
    def step(request: httpx2.Request) -> httpx2.Response:
        raise exc(request)

    return step


def rl(status: int = 429, **headers: str) -> httpx2.Response:
    return api_error(status, {k.replace("_", "-"): v for k, v in headers.items()})


T = RetryReason
MATRIX: list[tuple[str, Step, DeleteResult, str]] = [
    ("200 deleted", deleted(), Deleted(), "deleted"),
    (
        "200 deleted false",
        httpx2.Response(200, json={"id": "x", "object": "file", "deleted": False}),
        Transient(T.NOT_DELETED, "openai answered 2xx without deleted: true"),
        "not_deleted",
    ),
    (
        "200 without deleted field",
        httpx2.Response(200, json={"id": "x"}),
        Transient(T.NOT_DELETED, "openai answered 2xx without deleted: true"),
        "not_deleted",
    ),
    (
        "200 html",
        httpx2.Response(200, text="<html>ok</html>"),
        Transient(T.NOT_DELETED, "openai answered 2xx without deleted: true"),
        "not_deleted",
    ),
    (
        "200 json content type, broken body",
        httpx2.Response(
            200, content=b'{"deleted": tr', headers={"content-type": "application/json"}
        ),
        Transient(T.NOT_DELETED, "openai answered 2xx without deleted: true"),
        "not_deleted",
    ),
    (
        "200 deleted as a string",
        httpx2.Response(200, json={"id": "x", "deleted": "true"}),
        Transient(T.NOT_DELETED, "openai answered 2xx without deleted: true"),
        "not_deleted",
    ),
    (
        "200 nested past the parser's depth",
        httpx2.Response(200, content=b"[" * 100_000, headers={"content-type": "application/json"}),
        Transient(T.NOT_DELETED, "openai answered 2xx without deleted: true"),
        "not_deleted",
    ),
    # 404s: tests/providers/test_not_found.py (the answer depends on the object asked for).
    (
        "429 retry-after seconds",
        rl(retry_after="7"),
        Transient(T.RATE_LIMITED, "HTTP 429 from openai", 7.0),
        "rate_limited",
    ),
    (
        "429 retry-after-ms",
        rl(retry_after_ms="1500", retry_after="2"),
        Transient(T.RATE_LIMITED, "HTTP 429 from openai", 1.5),
        "rate_limited",
    ),
    (
        "429 retry-after date",
        rl(retry_after=formatdate(WALL_NOW + 90, usegmt=True)),
        Transient(T.RATE_LIMITED, "HTTP 429 from openai", 90.0),
        "rate_limited",
    ),
    ("429 bare", rl(), Transient(T.RATE_LIMITED, "HTTP 429 from openai"), "rate_limited"),
    ("500", api_error(500), Transient(T.SERVER_ERROR, "HTTP 500 from openai"), "server_error"),
    ("502", api_error(502), Transient(T.SERVER_ERROR, "HTTP 502 from openai"), "server_error"),
    (
        "503 retry-after",
        rl(503, retry_after="3"),
        Transient(T.SERVER_ERROR, "HTTP 503 from openai", 3.0),
        "server_error",
    ),
    ("408", api_error(408), Transient(T.SERVER_ERROR, "HTTP 408 from openai"), "server_error"),
    ("409", api_error(409), Transient(T.CONFLICT, "HTTP 409 from openai"), "conflict"),
    (
        "401",
        api_error(401),
        Transient(T.AUTH, "HTTP 401 from openai (check the api key and its permissions)"),
        "auth",
    ),
    (
        "403",
        api_error(403),
        Transient(T.AUTH, "HTTP 403 from openai (check the api key and its permissions)"),
        "auth",
    ),
    ("400", api_error(400), Permanent("HTTP 400 from openai"), "permanent"),
    ("422", api_error(422), Permanent("HTTP 422 from openai"), "permanent"),
    ("418", api_error(418), Permanent("HTTP 418 from openai"), "permanent"),
    (
        "301 not followed",
        httpx2.Response(301, headers={"location": "https://elsewhere.test/"}),
        Transient(
            T.CONFIG,
            "unexpected HTTP 301 from openai; redirects are not followed (check base_url)",
        ),
        "config",
    ),
    (
        "read timeout",
        raises(lambda r: httpx2.ReadTimeout("timed out", request=r)),
        Transient(T.TIMEOUT, "timeout after 1s talking to openai (ReadTimeout)"),
        "timeout",
    ),
    (
        "connect timeout",
        raises(lambda r: httpx2.ConnectTimeout("timed out", request=r)),
        Transient(T.TIMEOUT, "timeout after 1s talking to openai (ConnectTimeout)"),
        "timeout",
    ),
    (
        "connection reset",
        raises(lambda r: httpx2.ReadError("[Errno 104] Connection reset by peer", request=r)),
        Transient(T.CONNECTION, "connection error talking to openai (ReadError)"),
        "connection",
    ),
    (
        "connection refused",
        raises(lambda r: httpx2.ConnectError("[Errno 111] Connection refused", request=r)),
        Transient(T.CONNECTION, "connection error talking to openai (ConnectError)"),
        "connection",
    ),
    (
        "server hung up",
        raises(lambda r: httpx2.RemoteProtocolError("Server disconnected", request=r)),
        Transient(T.CONNECTION, "connection error talking to openai (RemoteProtocolError)"),
        "connection",
    ),
]


@pytest.mark.parametrize("operation", ["delete_file", "delete_vector_store"])
@pytest.mark.parametrize(
    ("answer", "expected", "outcome"),
    [pytest.param(a, e, o, id=name) for name, a, e, o in MATRIX],
)
async def test_outcome_matrix(
    make_gateway: MakeGateway,
    operation: str,
    answer: Step,
    expected: DeleteResult,
    outcome: str,
) -> None:
    observer = Recorder()
    upstream = script(answer)
    gateway = make_gateway(
        providers_config(), upstream, observer=observer, retry=NO_RETRY, wall_clock=lambda: WALL_NOW
    )

    result = await getattr(gateway, operation)(TENANT_B, "openai", "file-1")

    assert result == expected
    assert len(upstream.requests) == 1
    [call] = observer.calls
    assert isinstance(call.pop("seconds"), float)
    assert call == {"backend": "openai", "operation": operation, "outcome": outcome}
    assert SECRET not in repr(result)


async def test_empty_id_is_permanent_without_a_request(make_gateway: MakeGateway) -> None:
    upstream = script(deleted())
    gateway = make_gateway(providers_config(), upstream)

    assert await gateway.delete_file(TENANT_B, "openai", "") == Permanent(
        "delete_file: empty resource id"
    )
    assert upstream.requests == []


async def test_ids_are_path_encoded(make_gateway: MakeGateway) -> None:
    upstream = script(deleted())
    gateway = make_gateway(providers_config(), upstream)

    assert await gateway.delete_file(TENANT_B, "openai", "../v1/vector_stores/vs?x=1") == Deleted()
    assert upstream.requests[0].url.raw_path == b"/v1/files/..%2Fv1%2Fvector_stores%2Fvs%3Fx=1"


def test_detail_is_bounded() -> None:
    assert len(Transient(RetryReason.CONFIG, "x" * 10_000).detail) == 200
    assert len(Permanent("y" * 500).detail) == 200


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "4"}, 4.0),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nonsense"}, None),
        ({"retry-after": formatdate(WALL_NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": formatdate(WALL_NOW - 30, usegmt=True)}, 0.0),
        ({"retry-after": "999999"}, 3600.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx2.Headers(headers), wall_now=WALL_NOW) == expected


# -- in-call retries ------------------------------------------------------------------------

FAST = CallRetryPolicy(first_wait_seconds=0.01)


async def test_503_then_200_is_deleted_after_two_requests(make_gateway: MakeGateway) -> None:
    observer = Recorder()
    upstream = script(api_error(503), deleted())
    gateway = make_gateway(providers_config(), upstream, observer=observer, retry=FAST)

    assert await gateway.delete_file(TENANT_B, "openai", "file-1") == Deleted()
    assert len(upstream.requests) == 2
    assert observer.outcomes == ["server_error", "deleted"]


async def test_404_after_a_timeout_is_deleted(make_gateway: MakeGateway) -> None:
    """The timed-out DELETE may have happened: a 404 on the retry is success."""
    upstream = script(raises(lambda r: httpx2.ReadTimeout("t", request=r)), not_found("file-1"))
    gateway = make_gateway(providers_config(), upstream, retry=FAST)

    assert await gateway.delete_file(TENANT_B, "openai", "file-1") == Deleted(not_found=True)
    assert len(upstream.requests) == 2


async def test_short_retry_after_is_waited_in_call(make_gateway: MakeGateway) -> None:
    upstream = script(rl(retry_after_ms="50"), deleted())
    gateway = make_gateway(providers_config(), upstream, retry=FAST)

    started = time.monotonic()
    assert await gateway.delete_file(TENANT_B, "openai", "file-1") == Deleted()
    assert time.monotonic() - started >= 0.05
    assert len(upstream.requests) == 2


async def test_long_retry_after_is_returned_without_sleeping(make_gateway: MakeGateway) -> None:
    upstream = script(rl(retry_after="60"), deleted())
    gateway = make_gateway(providers_config(), upstream, retry=FAST)

    started = time.monotonic()
    result = await gateway.delete_file(TENANT_B, "openai", "file-1")

    assert time.monotonic() - started < 0.5
    assert result == Transient(RetryReason.RATE_LIMITED, "HTTP 429 from openai", 60.0)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [api_error(401), api_error(403), api_error(400), api_error(422), api_error(404), deleted()],
    ids=["401", "403", "400", "422", "404", "200"],
)
async def test_settled_or_config_answers_are_not_retried(
    make_gateway: MakeGateway, answer: httpx2.Response
) -> None:
    upstream = script(answer)
    gateway = make_gateway(providers_config(), upstream, retry=FAST)

    await gateway.delete_file(TENANT_B, "openai", "file-1")
    assert len(upstream.requests) == 1


async def test_always_503_stops_within_the_budget(make_gateway: MakeGateway) -> None:
    """Attempts are capped and the whole call ends inside 2 x timeout_seconds."""
    observer = Recorder()
    upstream = script(api_error(503))
    gateway = make_gateway(
        providers_config(timeout_seconds=0.5),
        upstream,
        observer=observer,
        retry=CallRetryPolicy(max_attempts=50, first_wait_seconds=0.1, max_wait_seconds=0.2),
    )

    started = time.monotonic()
    result = await gateway.delete_file(TENANT_B, "openai", "file-1")
    elapsed = time.monotonic() - started

    assert result == Transient(RetryReason.SERVER_ERROR, "HTTP 503 from openai")
    assert elapsed < 2 * 0.5 + 0.2
    assert 2 <= len(upstream.requests) < 50
    assert set(observer.outcomes) == {"server_error"}


async def test_default_policy_makes_at_most_three_attempts(make_gateway: MakeGateway) -> None:
    upstream = script(raises(lambda r: httpx2.ReadError("reset", request=r)))
    gateway = make_gateway(providers_config(timeout_seconds=5.0), upstream, retry=FAST)

    result = await gateway.delete_file(TENANT_B, "openai", "file-1")

    assert isinstance(result, Transient)
    assert result.reason is RetryReason.CONNECTION
    assert len(upstream.requests) == 3
