"""The probe server, exercised over real sockets with a real HTTP client."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from worker.observability.http import HealthServer
from worker.observability.metrics import Metrics

Response = tuple[int, str, str]
ServerFactory = Callable[..., Awaitable[HealthServer]]


def _fetch(url: str, method: str) -> Response:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


async def get(server: HealthServer, path: str, method: str = "GET") -> Response:
    return await asyncio.to_thread(_fetch, f"http://127.0.0.1:{server.port}{path}", method)


async def always_ready() -> tuple[bool, str]:
    return True, "database reachable, migrations applied"


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[HealthServer] = []

    async def factory(**overrides: object) -> HealthServer:
        options: dict[str, object] = {
            "registry": Metrics().registry,
            "heartbeat_age": lambda: 0.5,
            "max_heartbeat_age_seconds": 10.0,
            "readiness": always_ready,
        }
        options.update(overrides)
        server = HealthServer("127.0.0.1", 0, **options)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


async def test_port_zero_binds_a_free_port(make_server: ServerFactory) -> None:
    server = await make_server()
    assert server.port > 0


async def test_metrics_serves_the_registry_in_prometheus_format(
    make_server: ServerFactory,
) -> None:
    metrics = Metrics("probe_test")
    metrics.cleanup_completed("vector_store")
    server = await make_server(registry=metrics.registry)
    status, content_type, body = await get(server, "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body)}
    (sample,) = [
        s
        for s in families["probe_test_cleanup_completed"].samples
        if s.labels == {"resource_type": "vector_store"}
    ]
    assert sample.value == 1


async def test_healthz_follows_the_heartbeat(make_server: ServerFactory) -> None:
    age = [1.0]
    server = await make_server(heartbeat_age=lambda: age[0], max_heartbeat_age_seconds=30)
    assert await get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    age[0] = 95.0
    status, _, body = await get(server, "/healthz")
    assert status == 503
    assert "95.0s" in body
    assert "30s" in body


async def test_healthz_reads_the_metrics_heartbeat_and_never_the_readiness_check(
    make_server: ServerFactory,
) -> None:
    metrics = Metrics()
    metrics.mark_loop_iteration()
    calls = []

    async def readiness() -> tuple[bool, str]:
        calls.append(1)
        return False, "database down"

    server = await make_server(heartbeat_age=metrics.heartbeat_age, readiness=readiness)
    assert (await get(server, "/healthz"))[0] == 200
    assert calls == []


@pytest.mark.parametrize(
    ("result", "status", "text"),
    [
        ((True, "ready"), 200, "ready"),
        ((False, "migrations not applied: 3 pending"), 503, "migrations not applied"),
    ],
)
async def test_readyz_reports_the_readiness_check(
    make_server: ServerFactory, result: tuple[bool, str], status: int, text: str
) -> None:
    async def readiness() -> tuple[bool, str]:
        return result

    server = await make_server(readiness=readiness)
    got_status, _, body = await get(server, "/readyz")
    assert got_status == status
    assert text in body


async def test_readyz_times_out_quickly_on_a_hung_check(make_server: ServerFactory) -> None:
    cancelled = asyncio.Event()

    async def hung() -> tuple[bool, str]:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True, "never"

    server = await make_server(readiness=hung, readiness_timeout_seconds=0.2)
    started = time.monotonic()
    status, _, body = await get(server, "/readyz")
    assert status == 503
    assert "timed out" in body
    assert time.monotonic() - started < 2
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_readyz_timeout_holds_even_if_the_check_ignores_cancellation(
    make_server: ServerFactory,
) -> None:
    async def stubborn() -> tuple[bool, str]:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # e.g. a driver finishing its own cleanup first
        return True, "late"

    server = await make_server(readiness=stubborn, readiness_timeout_seconds=0.1)
    started = time.monotonic()
    assert (await get(server, "/readyz"))[0] == 503
    assert time.monotonic() - started < 0.45
    await asyncio.sleep(0.6)  # let the abandoned check finish inside this test


async def test_readyz_failing_check_is_503_with_redacted_reason(
    make_server: ServerFactory,
) -> None:
    password = "s3cr3t-" + "DSN-pw"

    async def broken() -> tuple[bool, str]:
        raise OSError(f"could not connect to postgresql://u:{password}@db/x")

    server = await make_server(readiness=broken)
    status, _, body = await get(server, "/readyz")
    assert status == 503
    assert "OSError" in body
    assert password not in body


async def test_unknown_paths_and_methods(make_server: ServerFactory) -> None:
    server = await make_server()
    assert (await get(server, "/"))[0] == 404
    assert (await get(server, "/metrics/extra"))[0] == 404
    assert (await get(server, "/healthz", method="POST"))[0] == 405
    status, _, body = await get(server, "/healthz", method="HEAD")
    assert (status, body) == (200, "")
    assert (await get(server, "/healthz?verbose=1"))[0] == 200


async def test_a_crashing_callback_answers_500(make_server: ServerFactory) -> None:
    def broken_age() -> float:
        raise RuntimeError("heartbeat source gone")

    server = await make_server(heartbeat_age=broken_age)
    status, _, body = await get(server, "/healthz")
    assert status == 500
    assert "RuntimeError" in body


async def test_malformed_request_gets_400_and_idle_client_does_not_block_stop(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"NONSENSE\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()
    await writer.wait_closed()

    _idle_reader, idle = await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.sleep(0.05)  # the server is now waiting for a request head
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1
    idle.close()
    await idle.wait_closed()
