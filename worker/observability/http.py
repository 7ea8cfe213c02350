"""The metrics and probe endpoints: a tiny HTTP/1.1 server on ``asyncio.start_server``.

Three GET routes, one request per connection (``Connection: close``), so no web framework is
needed. ``/healthz`` (liveness) reads only the worker loop's heartbeat: a database outage must
not make Kubernetes restart pods that are correctly waiting for it. ``/readyz`` asks an injected
check (the app's: database reachable, migrations applied) under its own timeout, so a hung
database turns into a quick 503 instead of a hung probe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.observability.logging import redact_secrets

_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_MAX_HEADER_BYTES = 16 * 1024
_READ_TIMEOUT_SECONDS = 5.0  # a client that never finishes its request must not hold a task

Readiness = Callable[[], Awaitable[tuple[bool, str]]]


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` until ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        heartbeat_age: Callable[[], float],
        max_heartbeat_age_seconds: float,
        readiness: Readiness,
        readiness_timeout_seconds: float = 2.0,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._heartbeat_age = heartbeat_age
        self._max_heartbeat_age_seconds = max_heartbeat_age_seconds
        self._readiness = readiness
        self._readiness_timeout_seconds = readiness_timeout_seconds
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port once started (the real one when constructed with port 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port)

    async def stop(self) -> None:
        """Stop listening and cut in-flight requests (a scrape is not worth delaying shutdown)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection in its own task
        self._connections.add(task)
        try:
            try:
                status, content_type, body, head_only = await self._respond(reader)
            except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                raise
            except Exception as exc:  # a bug in a callback: answer 500 instead of hanging up
                text = redact_secrets(f"internal error: {type(exc).__name__}: {exc}\n")
                status, content_type, body, head_only = 500, _TEXT, text.encode(), False
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), _READ_TIMEOUT_SECONDS)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer
        except asyncio.CancelledError:
            # Only stop() cancels this root task of the connection; ending quietly keeps
            # asyncio's done-callback from reporting the cancellation as an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_SECONDS)
        except asyncio.LimitOverrunError:
            return 400, _TEXT, b"request head too large\n", False
        if len(raw) > _MAX_HEADER_BYTES:
            return 400, _TEXT, b"request head too large\n", False
        parts = raw.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, _TEXT, b"malformed request line\n", False
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD\n", False
        head_only = method == "HEAD"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry), head_only
        if path == "/healthz":
            return (*self._liveness(), head_only)
        if path == "/readyz":
            return (*await self._ready(), head_only)
        return 404, _TEXT, b"not found\n", head_only

    def _liveness(self) -> tuple[int, str, bytes]:
        age = self._heartbeat_age()
        if age <= self._max_heartbeat_age_seconds:
            return 200, _TEXT, b"ok\n"
        text = f"stale: last loop {age:.1f}s ago (max {self._max_heartbeat_age_seconds:g}s)\n"
        return 503, _TEXT, text.encode()

    async def _ready(self) -> tuple[int, str, bytes]:
        timeout = self._readiness_timeout_seconds
        # asyncio.wait, not wait_for: a check that ignores cancellation still cannot hold
        # the probe past its timeout (wait_for waits for the cancelled task to finish).
        check = asyncio.ensure_future(self._readiness())
        try:
            done, _ = await asyncio.wait({check}, timeout=timeout)
        finally:
            if not check.done():
                check.cancel()
                check.add_done_callback(_consume)
        if not done:
            ready, reason = False, f"readiness check timed out after {timeout:g}s"
        elif check.cancelled():
            ready, reason = False, "readiness check was cancelled"
        elif (exc := check.exception()) is not None:
            # The probe reports the failure; the app's own loops log database errors.
            ready, reason = False, f"readiness check failed: {type(exc).__name__}: {exc}"
        else:
            ready, reason = check.result()
        text = redact_secrets(reason or ("ready" if ready else "not ready"))
        return (200 if ready else 503), _TEXT, (text + "\n").encode()


def _consume(task: asyncio.Future[tuple[bool, str]]) -> None:
    """Retrieve an abandoned check's outcome so asyncio does not report it as unhandled."""
    if not task.cancelled():
        task.exception()
