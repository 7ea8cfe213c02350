"""A local HTTP server speaking the OpenAI and Azure OpenAI *delete* API, with injectable faults.

Why a real server and not a mock transport: the worker's failure handling lives in the SDK's
connection pool, timeouts and retries, which only a peer on a real socket exercises. Tests, the
``demo`` command and the benchmarks run against this server; it is stateful (a second delete of an
id answers 404), records every request, and misbehaves on demand (`Fault`).

Wire, as the SDK sends it::

    OpenAI       DELETE {prefix}/v1/files/{id}                         Authorization: Bearer K
                 DELETE {prefix}/v1/vector_stores/{id}
    Azure        DELETE {prefix}/openai/files/{id}?api-version=V      api-key: K (or Bearer)
                 DELETE {prefix}/openai/vector_stores/{id}?api-version=V
    Azure v1 GA  DELETE {prefix}/openai/v1/files/{id}                  Bearer or api-key

Listings, as the SDK's ``files.list`` / ``vector_stores.list`` page through them::

    GET {prefix}/v1/files?limit=&after=&order=&purpose=    (and the Azure paths)
        -> {"object": "list", "data": [...], "first_id", "last_id", "has_more"}

ordered by ``created_at`` (``order`` asc / desc, default desc), ``after`` an object id, ``limit``
up to 10,000 for files (default 10,000) and 1..100 for vector stores (default 20), as OpenAI.

``{prefix}`` is any path, usually empty: ``url + "/tenant-b"`` plays a tenant's own endpoint, so
one server stands in for many upstreams and ``Fault(path_contains="/tenant-b/")`` breaks just one.

Refusals answer as the real services do (SPEC §13), so a misrouted delete is never "deleted":
a path outside the API (a base_url without ``/v1``) gets OpenAI's 404 ``Invalid URL (DELETE
/files/x)``; an Azure path with an unknown deployment segment or an api-version the resource
does not serve gets Azure's 404 ``Resource not found``; a missing object gets the API's own
not-found (``No such File object: x``, ``No vector store found with id 'x'.``). Azure GA
api-versions ``2024-02-01`` / ``2024-06-01`` answer a file DELETE with 204 No Content. Keys can
be bound to a project (``key_projects``) and objects created in one (``add_file(project=)``):
a key of another project is told ``No such File object`` for a file that exists elsewhere.

As a process (``python -m cwlab.fake_openai --port N``) it prints its URL and serves
until SIGTERM; ``GET /_fake/summary`` then reports what it deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import responses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

Flavor = Literal["openai", "azure"]
Resource = Literal["file", "vector_store", "other"]
AuthScheme = Literal["bearer", "api-key", "none"]

# Azure vector stores need 2024-05-01-preview or later; the chat service ships 2025-03-01-preview.
DEFAULT_AZURE_API_VERSIONS: Final = frozenset(
    [
        "2024-05-01-preview",
        "2024-06-01",
        "2024-07-01-preview",
        "2024-08-01-preview",
        "2024-09-01-preview",
        "2024-10-01-preview",
        "2024-10-21",
        "2024-12-01-preview",
        "2025-01-01-preview",
        "2025-02-01-preview",
        "2025-03-01-preview",
        "2025-04-01-preview",
    ]
)
# GA versions that answer a file DELETE with 204 No Content (2024-02-01 has no vector stores).
AZURE_NO_CONTENT_VERSIONS: Final = frozenset(["2024-02-01", "2024-06-01"])
_AZURE_FILE_ONLY_VERSIONS: Final = frozenset(["2024-02-01"])
_RESOURCE_NOT_FOUND: Final[dict[str, object]] = {
    "error": {"code": "404", "message": "Resource not found"}
}

# The lazy prefix reads "/openai/v1/files/x" as Azure v1 GA, not as prefix "/openai" + OpenAI.
_ROUTE: Final = re.compile(
    r"^(?:/[^/]+)*?(?P<api>/openai/v1|/openai|/v1)/(?P<kind>files|vector_stores)/(?P<id>[^/]+)$"
)
# A listing: GET {prefix}/v1/files, {prefix}/openai/vector_stores, ... (no id).
_LIST_ROUTE: Final = re.compile(
    r"^(?:/[^/]+)*?(?P<api>/openai/v1|/openai|/v1)/(?P<kind>files|vector_stores)/?$"
)
# The real API's page-size bounds and defaults (files: up to 10,000; vector stores: 1..100).
LIST_LIMITS: Final[Mapping[str, tuple[int, int]]] = {
    "file": (10_000, 10_000),
    "vector_store": (100, 20),
}
_RESOURCES: Final[Mapping[str, Resource]] = {"files": "file", "vector_stores": "vector_store"}
_DELETED_OBJECT: Final[Mapping[Resource, str]] = {
    "file": "file",
    "vector_store": "vector_store.deleted",
    "other": "unknown",
}
_UNAUTHORIZED: Final[Mapping[Flavor, tuple[str, str]]] = {
    "openai": ("Incorrect API key provided.", "invalid_api_key"),
    "azure": ("Access denied due to invalid subscription key or wrong API endpoint.", "401"),
}
_SUMMARY_PATH: Final = "/_fake/summary"


@dataclass(frozen=True)
class Fault:
    """One way to misbehave, for the requests it matches (``times``: how many; None: forever).

    At most one of ``status``, ``reset`` and ``deleted_false``; ``delay_seconds`` combines with
    any, and a delay-only fault then answers normally, so a client that timed out may still have
    deleted the resource, as with the real API. ``status`` and ``reset`` strike before
    authentication; ``deleted_false`` replaces the answer of a delete that passed every check.
    Faulted requests never change state.
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    reset: bool = False
    deleted_false: bool = False
    times: int | None = None
    path_contains: str = ""
    key: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"Fault.status must be an error status 400..599, got {self.status}")
        if (self.status is not None) + self.reset + self.deleted_false > 1:
            raise ValueError("set at most one of Fault.status, Fault.reset, Fault.deleted_false")
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault.times must be None (forever) or >= 1, got {self.times}")
        if self.delay_seconds < 0:
            raise ValueError(f"Fault.delay_seconds must be >= 0, got {self.delay_seconds}")

    def matches(self, path: str, api_key: str | None) -> bool:
        """Whether this fault targets a request (``path``: decoded, without the query)."""
        return self.path_contains in path and (self.key is None or self.key == api_key)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw and answered it (``status`` is None after a reset)."""

    method: str
    path: str
    query: dict[str, str]
    api_key: str | None
    auth_scheme: AuthScheme
    headers: dict[str, str]
    status: int | None
    resource: Resource
    resource_id: str | None
    flavor: Flavor
    at: float  # arrival, time.monotonic()
    deleted: bool = False  # answered "deleted": true, i.e. this request removed the resource
    request_id: str | None = None  # the x-request-id header it was answered with


@dataclass(frozen=True)
class _Route:
    flavor: Flavor
    resource: Resource
    resource_id: str | None
    needs_api_version: bool
    listing: bool = False  # GET of the collection (cursor-paginated listing)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, object] | None  # None: no body at all (204)
    headers: dict[str, str] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class _ActiveFault:
    fault: Fault
    remaining: int | None


class _TokenBucket:
    """The global request-rate limit: ``rate`` tokens a second, bursts of one second's worth."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate_limit_rps must be > 0, got {rate}")
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._last = time.monotonic()

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until the next one is."""
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


def _route(path: str) -> _Route:
    match = _ROUTE.match(path)
    listing = _LIST_ROUTE.match(path)
    if match is None and listing is not None:
        return _Route(
            flavor="openai" if listing["api"] == "/v1" else "azure",
            resource=_RESOURCES[listing["kind"]],
            resource_id=None,
            needs_api_version=listing["api"] == "/openai",
            listing=True,
        )
    if match is None:
        flavor: Flavor = "azure" if "/openai/" in f"{path}/" else "openai"
        return _Route(flavor, "other", None, needs_api_version=False)
    return _Route(
        flavor="openai" if match["api"] == "/v1" else "azure",
        resource=_RESOURCES[match["kind"]],
        resource_id=unquote(match["id"]),
        needs_api_version=match["api"] == "/openai",
    )


def _credentials(headers: Mapping[str, str], flavor: Flavor) -> tuple[AuthScheme, str | None]:
    """The key a request authenticates with: OpenAI reads only Bearer, Azure prefers ``api-key``."""
    if flavor == "azure" and "api-key" in headers:
        return "api-key", headers["api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "bearer", token.strip()
    return "none", None


def _error(
    status: int, message: str, code: str | None = None, *, param: str | None = None, **headers: str
) -> _Answer:
    """An error shaped like OpenAI's; ``retry_after=`` becomes the header ``retry-after``."""
    kind = "invalid_request_error"
    if status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _Answer(status, {"error": error}, {k.replace("_", "-"): v for k, v in headers.items()})


def _deleted(route: _Route, deleted: bool) -> _Answer:
    body: dict[str, object] = {
        "id": route.resource_id,
        "object": _DELETED_OBJECT[route.resource],
        "deleted": deleted,
    }
    return _Answer(200, body, deleted=deleted)


class FakeOpenAI:
    """A stateful OpenAI / Azure OpenAI delete server on a real socket; thread-safe."""

    def __init__(
        self,
        *,
        api_keys: Iterable[str] | None = None,
        azure_api_versions: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_seconds: float = 0.0,
        rate_limit_rps: float | None = None,
        implicit_ids: bool = False,
        key_projects: Mapping[str, str] | None = None,
    ) -> None:
        """``implicit_ids``: any id not deleted yet exists, for runs that cannot seed state.

        ``key_projects``: api key -> the project it is bound to; a request's project is its
        ``OpenAI-Project`` header, else its key's. Objects created without a project are seen
        by every key; objects of a project only by requests of that project.
        """
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._azure_api_versions = (
            DEFAULT_AZURE_API_VERSIONS
            if azure_api_versions is None
            else frozenset(azure_api_versions)
        )
        self._address = (host, port)
        self._latency_seconds = latency_seconds
        self._bucket = None if rate_limit_rps is None else _TokenBucket(rate_limit_rps)
        self._implicit_ids = implicit_ids
        self._key_projects = dict(key_projects or {})
        self._owners: dict[tuple[Resource, str], str] = {}
        self._lock = threading.Lock()  # guards everything below, never held during I/O
        self._files: set[str] = set()
        # Creation time (epoch seconds) and purpose, kept after a delete: a listing cursor
        # naming a deleted object still has its place in the order.
        self._created: dict[tuple[Resource, str], int] = {}
        self._purposes: dict[str, str] = {}
        self._store_files: dict[str, set[str]] = {}
        self._gone: set[tuple[Resource, str]] = set()
        self._faults: list[_ActiveFault] = []
        self._log: list[RecordedRequest] = []
        self._server: _Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        if self._server is not None:
            raise RuntimeError("FakeOpenAI is already started (and cannot restart after stop)")
        self._server = _Server(self._address, self)
        # A short poll interval: stop() waits for the accept loop to notice, once per test.
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        return self.url

    # -- state and faults --------------------------------------------------------------------

    def add_file(
        self,
        file_id: str,
        *,
        project: str | None = None,
        created_at: float | None = None,
        purpose: str = "assistants",
    ) -> None:
        """Create a file; ``created_at`` (epoch seconds, default now) orders listings."""
        with self._lock:
            self._files.add(file_id)
            self._created[("file", file_id)] = int(
                time.time() if created_at is None else created_at
            )
            self._purposes[file_id] = purpose
            if project is not None:
                self._owners[("file", file_id)] = project

    def add_vector_store(
        self,
        vs_id: str,
        file_ids: Iterable[str] = (),
        *,
        project: str | None = None,
        created_at: float | None = None,
    ) -> None:
        """Create a vector store holding ``file_ids``; files that do not exist are created too."""
        members = set(file_ids)
        created = int(time.time() if created_at is None else created_at)
        with self._lock:
            for file_id in members - self._files:
                self._created[("file", file_id)] = created
                self._purposes[file_id] = "assistants"
            self._files |= members
            self._store_files[vs_id] = members
            self._created[("vector_store", vs_id)] = created
            if project is not None:
                self._owners[("vector_store", vs_id)] = project
                for file_id in members:
                    self._owners.setdefault(("file", file_id), project)

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_ActiveFault(fault, fault.times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def files(self) -> set[str]:
        with self._lock:
            return set(self._files)

    @property
    def vector_stores(self) -> set[str]:
        with self._lock:
            return set(self._store_files)

    def vector_store_files(self, vs_id: str) -> set[str]:
        with self._lock:
            return set(self._store_files[vs_id])

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def deletes(self, resource: Resource | None = None) -> list[RecordedRequest]:
        """Requests that deleted something (``deleted: true``), optionally of one kind."""
        return [r for r in self.requests() if r.deleted and resource in (None, r.resource)]

    # -- request handling, from handler threads -----------------------------------------------

    def _take_fault(self, path: str, api_key: str | None) -> Fault | None:
        with self._lock:
            for active in self._faults:
                if active.remaining != 0 and active.fault.matches(path, api_key):
                    if active.remaining is not None:
                        active.remaining -= 1
                    return active.fault
        return None

    def _answer(self, request: RecordedRequest, route: _Route, fault: Fault | None) -> _Answer:
        """Check the request as the provider would, then apply it to the state atomically."""
        if self._api_keys is not None and request.api_key not in self._api_keys:
            return _error(401, *_UNAUTHORIZED[route.flavor])
        if route.listing:
            return self._list_answer(request, route)
        if route.resource_id is None:
            if route.flavor == "azure":
                return _Answer(404, _RESOURCE_NOT_FOUND)
            return _error(404, f"Invalid URL ({request.method} {request.path})")
        if request.method != "DELETE":
            return _error(405, f"{request.method} not allowed: only DELETE", Allow="DELETE")
        version = request.query.get("api-version")
        if route.needs_api_version:
            if version is None:
                return _error(400, "Missing query parameter 'api-version'.", "BadRequest")
            if not self._serves_api_version(version, route.resource):
                return _Answer(404, _RESOURCE_NOT_FOUND)  # as Azure answers an unknown version
        project = request.headers.get("openai-project") or self._key_projects.get(
            request.api_key or ""
        )
        no_content = route.needs_api_version and version in AZURE_NO_CONTENT_VERSIONS
        with self._lock:
            wait = 0.0 if self._bucket is None else self._bucket.take(time.monotonic())
            if wait > 0:  # both headers, as OpenAI sends them; the SDK prefers milliseconds
                return _error(
                    429,
                    "Rate limit reached for requests.",
                    "rate_limit_exceeded",
                    retry_after=str(math.ceil(wait)),
                    retry_after_ms=str(math.ceil(wait * 1000)),
                )
            if fault is not None and fault.deleted_false:
                return _deleted(route, False)
            answer = self._delete(route, route.resource_id, project)
        if no_content and answer.deleted and route.resource == "file":
            return dataclasses.replace(answer, status=204, body=None)
        return answer

    def _list_answer(self, request: RecordedRequest, route: _Route) -> _Answer:
        """GET of a collection, checked as a delete is (api-version), then one page of it."""
        if request.method != "GET":
            return _error(405, f"{request.method} not allowed on a collection", Allow="GET")
        version = request.query.get("api-version")
        if route.needs_api_version:
            if version is None:
                return _error(400, "Missing query parameter 'api-version'.", "BadRequest")
            if not self._serves_api_version(version, route.resource):
                return _Answer(404, _RESOURCE_NOT_FOUND)
        maximum, default = LIST_LIMITS[route.resource]
        raw_limit = request.query.get("limit", str(default))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= maximum:
            return _error(400, f"limit must be between 1 and {maximum}", param="limit")
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _error(400, "order must be 'asc' or 'desc'", param="order")
        project = request.headers.get("openai-project") or self._key_projects.get(
            request.api_key or ""
        )
        with self._lock:
            return self._page(route.resource, request.query, int(raw_limit), order, project)

    def _page(
        self,
        resource: Resource,
        query: Mapping[str, str],
        limit: int,
        order: str,
        project: str | None,
    ) -> _Answer:
        """One page after the ``after`` cursor, by (created_at, id); the caller holds the lock."""
        live = self._files if resource == "file" else set(self._store_files)
        purpose = query.get("purpose") if resource == "file" else None
        visible = [
            oid
            for oid in live
            if self._owners.get((resource, oid)) in (None, project)
            and (purpose is None or self._purposes.get(oid) == purpose)
        ]
        key = {oid: (self._created.get((resource, oid), 0), oid) for oid in visible}
        ordered = sorted(visible, key=key.__getitem__, reverse=order == "desc")
        after = query.get("after")
        if after is not None:
            mark = (self._created.get((resource, after), 0), after)
            if order == "desc":
                ordered = [oid for oid in ordered if key[oid] < mark]
            else:
                ordered = [oid for oid in ordered if key[oid] > mark]
        page = ordered[:limit]
        data = [self._listed(resource, oid) for oid in page]
        body: dict[str, object] = {
            "object": "list",
            "data": data,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
            "has_more": len(ordered) > limit,
        }
        return _Answer(200, body)

    def _listed(self, resource: Resource, oid: str) -> dict[str, object]:
        created = self._created.get((resource, oid), 0)
        if resource == "file":
            return {
                "id": oid,
                "object": "file",
                "bytes": 1024,
                "created_at": created,
                "filename": f"{oid}.pdf",
                "purpose": self._purposes.get(oid, "assistants"),
                "status": "processed",
            }
        count = len(self._store_files.get(oid, ()))
        return {
            "id": oid,
            "object": "vector_store",
            "created_at": created,
            "name": oid,
            "usage_bytes": 0,
            "file_counts": {
                "in_progress": 0, "completed": count, "failed": 0, "cancelled": 0, "total": count
            },
            "status": "completed",
            "last_active_at": created,
            "metadata": {},
        }  # fmt: skip

    def _serves_api_version(self, version: str, resource: Resource) -> bool:
        if version in self._azure_api_versions:
            return True
        return resource == "file" and version in _AZURE_FILE_ONLY_VERSIONS

    def _delete(self, route: _Route, resource_id: str, project: str | None) -> _Answer:
        """Delete one resource (the caller holds the lock); a file also leaves its stores."""
        is_file = route.resource == "file"
        owner = self._owners.get((route.resource, resource_id))
        live = resource_id in (self._files if is_file else self._store_files)
        foreign = owner not in (None, project)  # another project's object: not found here
        implicit = self._implicit_ids and (route.resource, resource_id) not in self._gone
        if foreign or not (live or implicit):
            if is_file:
                return _error(404, f"No such File object: {resource_id}", param="id")
            return _error(404, f"No vector store found with id '{resource_id}'.")
        self._gone.add((route.resource, resource_id))
        if is_file:
            self._files.discard(resource_id)
            for members in self._store_files.values():
                members.discard(resource_id)
        else:
            self._store_files.pop(resource_id, None)
        return _deleted(route, True)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._log.append(request)

    def _summary(self) -> dict[str, object]:
        log = self.requests()
        return {
            "requests": len(log),
            "statuses": dict(Counter(str(r.status) for r in log)),
            "deleted": {
                kind: [r.resource_id for r in log if r.deleted and r.resource == kind]
                for kind in ("file", "vector_store")
            },
        }


class _Server(ThreadingHTTPServer):
    """Thread per connection; tracks open connections so that close() can drop them."""

    daemon_threads = True
    block_on_close = False  # idle keep-alive connections would make server_close() hang
    request_queue_size = 1024  # the default backlog of 5 drops SYNs when 100 clients connect

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        super().__init__(address, _Handler)
        self.fake = fake
        self.closing = threading.Event()  # also wakes handlers sleeping out a latency
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def connection_opened(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)
        if self.closing.is_set():  # accepted while close() was dropping connections
            _shutdown_quietly(connection)

    def connection_closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close(self) -> None:
        """Stop accepting, then drop open connections so idle clients notice at once."""
        if self.closing.is_set():
            return
        self.closing.set()
        self.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown_quietly(connection)
        self.server_close()

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        # A client that timed out or a reset fault leaves a dead socket behind: expected, quiet.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pool expects
    server_version = "fake-openai"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid a 40 ms stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connection_opened(self.connection)

    def finish(self) -> None:
        self.server.connection_closed(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a line per request on stderr would drown test and benchmark output."""

    def do_DELETE(self) -> None:
        at = time.monotonic()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # keep the connection usable
        url = urlsplit(self.path)
        fake = self.server.fake
        if url.path == _SUMMARY_PATH:
            self._send(_Answer(200, fake._summary()), {})
            return
        route = _route(url.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        scheme, api_key = _credentials(headers, route.flavor)
        request = RecordedRequest(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query)),
            api_key=api_key,
            auth_scheme=scheme,
            headers=headers,
            status=None,
            resource=route.resource,
            resource_id=route.resource_id,
            flavor=route.flavor,
            at=at,
        )
        fault = fake._take_fault(unquote(url.path), api_key)
        delay = fake._latency_seconds + (fault.delay_seconds if fault is not None else 0.0)
        if delay > 0:
            self.server.closing.wait(delay)
        if fault is not None and fault.reset:
            fake._record(request)
            self._reset()
            return
        if fault is not None and fault.status is not None:
            answer = _error(
                fault.status, f"{responses.get(fault.status, 'Error')} (injected fault)"
            )
        else:
            answer = fake._answer(request, route, fault)
        # Every answer names its request, as OpenAI's x-request-id does (receipts keep it).
        request_id = f"req_{uuid.uuid4().hex}"
        answer = dataclasses.replace(answer, headers={**answer.headers, "x-request-id": request_id})
        # Recorded before answering, so a client holding its answer also finds it in the log.
        fake._record(
            dataclasses.replace(
                request, status=answer.status, deleted=answer.deleted, request_id=request_id
            )
        )
        self._send(answer, fault.headers if fault is not None else {})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE

    def _send(self, answer: _Answer, extra_headers: Mapping[str, str]) -> None:
        body = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        if answer.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**answer.headers, **extra_headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort with RST (SO_LINGER 0), so the client sees a connection error, not an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile still references the socket, so the descriptor really closes (sending RST) when
        # finish() closes rfile: before socketserver's shutdown_request() could send a FIN.
        self.connection.close()
        self.close_connection = True


def _shutdown_quietly(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the client or by a reset fault
        connection.shutdown(socket.SHUT_RDWR)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, printing the URL first (benchmarks, multi-process tests)."""
    parser = argparse.ArgumentParser(
        prog="python -m cwlab.fake_openai",
        description="Local OpenAI / Azure OpenAI delete API with a request log and faults.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="repeatable")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--rate-limit-rps", type=float, metavar="RPS")
    parser.add_argument("--implicit-ids", action="store_true", help="ids exist until deleted")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fake = FakeOpenAI(
        api_keys=args.api_keys,
        host=args.host,
        port=args.port,
        latency_seconds=args.latency,
        rate_limit_rps=args.rate_limit_rps,
        implicit_ids=args.implicit_ids,
    )
    try:
        fake.start()
    except OSError as exc:
        parser.exit(1, f"fake_openai: cannot listen on {args.host}:{args.port}: {exc}\n")
    try:
        print(fake.url, flush=True)
        stop.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
