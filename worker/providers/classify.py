"""The one place openai / httpx2 exceptions and responses become ``DeleteResult`` values (SPEC §6).

Nothing above the provider layer sees an SDK exception. Details are built from the status
code, the backend label and exception *class names* only: SDK messages embed response bodies,
which may echo ids, keys or URLs, so they are never copied.

    2xx with deleted: true, or 204 .... Deleted
    404, a body in NOT_FOUND_BODIES ... Deleted(not_found=True)  (the API says: no such object)
    any other 404 ..................... Transient(config)   a wrong URL / deployment / api-version
    429 ............................... Transient(rate_limited, Retry-After)
    408, 5xx .......................... Transient(server_error, Retry-After)
    409 ............................... Transient(conflict, Retry-After)
    401, 403 .......................... Transient(auth)     a configuration problem: alerted on
    other 4xx (400, 422, ...) ......... Permanent
    1xx / 3xx ......................... Transient(config)   redirects are not followed
    timeouts .......................... Transient(timeout)
    connect / reset / protocol errors . Transient(connection)
    2xx without deleted: true ......... Transient(not_deleted)

A 404 is "already gone" only when its body is the API's own not-found **for the object asked
about** (SPEC §13): a proxy page, Azure's ``Resource not found`` (wrong endpoint, deployment or
api-version), OpenAI's ``Invalid URL (...)`` (a base_url without /v1) or an unknown shape all
mean the request never reached the object, and reading them as "deleted" leaks the file.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx2
import openai

from worker.models import RetryReason
from worker.providers.results import (
    Deleted,
    DeleteResult,
    Flavor,
    Permanent,
    ResourceKind,
    Transient,
    seconds_text,
)

# A Retry-After beyond the cleanup promise (one hour) is clamped: the engine retries and asks again.
MAX_RETRY_AFTER_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Target:
    """What a request asked for: which API surface, which kind of object, which id."""

    flavor: Flavor
    resource: ResourceKind
    resource_id: str


@dataclass(frozen=True, slots=True)
class NotFoundBody:
    """One recognised not-found answer: ``{"error": {field: value, "message": <message>}}``.

    ``message`` is a regular expression in which ``{id}`` stands for the requested id (escaped),
    so a not-found naming *another* object never counts. ``source`` says where the shape was seen.
    """

    name: str
    flavor: Flavor
    resource: ResourceKind
    field: Literal["type", "code"]
    value: str
    message: str
    source: str

    def matches(self, error: Mapping[str, object], target: Target) -> bool:
        if (self.flavor, self.resource) != (target.flavor, target.resource):
            return False
        message = error.get("message")
        if error.get(self.field) != self.value or not isinstance(message, str):
            return False
        pattern = self.message.replace("{id}", re.escape(target.resource_id))
        return re.fullmatch(pattern, message.strip()) is not None


_OPENAI_FILE = r"No such File object: {id}"
_OPENAI_VECTOR_STORE = r"No vector store found with id '?{id}'?\.?"
_OPENAI_SOURCE = (
    "api.openai.com, seen in openai-python tracebacks (NotFoundError: Error code: 404 - {'error': "
    "{'message': 'No such File object: file-…', 'type': 'invalid_request_error', 'param': 'id'}})"
)
_VS_SOURCE = (
    'api.openai.com vector-store answers as handled by client libraries ("No vector store found '
    "with id 'vs_…'.\", type invalid_request_error)"
)
_AZURE_SHARED = (
    "Azure OpenAI serves files and vector stores from the OpenAI-compatible service and answers "
    "its errors in OpenAI's shape (invalid_request_error), e.g. Azure/azure-sdk-for-net#47121"
)
_AZURE_V1 = (
    "Azure v1 GA surface (/openai/v1/): OpenAI.Error shape {code, message, param, type} "
    "(learn.microsoft.com/azure/foundry/reference/rest/files-delete-file)"
)

NOT_FOUND_BODIES: tuple[NotFoundBody, ...] = (
    NotFoundBody("openai file", "openai", "file", "type", "invalid_request_error",
                 _OPENAI_FILE, _OPENAI_SOURCE),
    NotFoundBody("openai vector store", "openai", "vector_store", "type", "invalid_request_error",
                 _OPENAI_VECTOR_STORE, _VS_SOURCE),
    NotFoundBody("azure file", "azure", "file", "type", "invalid_request_error",
                 _OPENAI_FILE, _AZURE_SHARED),
    NotFoundBody("azure file (REST error shape)", "azure", "file", "code", "notFound",
                 r"(?s).*(?<![\w-]){id}(?![\w-]).*",
                 "Azure OpenAI REST reference, Files - Delete (api-version 2024-10-21): "
                 "ErrorResponse {error: {code: ErrorCode 'notFound', message}}; the message "
                 "must name the requested id"),
    NotFoundBody("azure vector store", "azure", "vector_store", "type", "invalid_request_error",
                 _OPENAI_VECTOR_STORE, _AZURE_SHARED),
    NotFoundBody("azure v1 file", "azure_v1", "file", "type", "invalid_request_error",
                 _OPENAI_FILE, _AZURE_V1),
    NotFoundBody("azure v1 vector store", "azure_v1", "vector_store", "type",
                 "invalid_request_error", _OPENAI_VECTOR_STORE, _AZURE_V1),
)  # fmt: skip


def recognised_not_found(response: httpx2.Response, target: Target) -> NotFoundBody | None:
    """The table row a 404 body matches for ``target``, or None (not the API's own not-found)."""
    error = _error_object(response)
    if error is None:
        return None
    return next((row for row in NOT_FOUND_BODIES if row.matches(error, target)), None)


def classify_response(status: int, content: bytes, *, backend: str) -> DeleteResult:
    """A 2xx answer: 204 No Content (Azure GA file deletes) or an explicit ``deleted: true``.

    The body is read as JSON here rather than parsed into the SDK's model (``parse()``): that
    cost 6 % of a delete's CPU in the worker (cProfile), and only one field of it is read.
    """
    if status == 204 or _says_deleted(content):
        return Deleted()
    return Transient(RetryReason.NOT_DELETED, f"{backend} answered 2xx without deleted: true")


def _says_deleted(content: bytes) -> bool:
    """A JSON object whose ``deleted`` is the boolean True; anything else (HTML, a broken or
    absurdly nested body, a missing field) does not confirm a deletion."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("deleted") is True


def classify_exception(
    exc: openai.OpenAIError | httpx2.HTTPError,
    *,
    backend: str,
    timeout_seconds: float,
    wall_now: float,
    target: Target,
) -> DeleteResult:
    """Translate an SDK / transport exception; ``wall_now`` (epoch seconds) dates Retry-After."""
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        after = seconds_text(timeout_seconds)
        return Transient(
            RetryReason.TIMEOUT, f"timeout after {after} talking to {backend}{_cause_suffix(exc)}"
        )
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return Transient(
            RetryReason.CONNECTION, f"connection error talking to {backend}{_cause_suffix(exc)}"
        )
    if isinstance(exc, openai.APIStatusError | httpx2.HTTPStatusError):
        return classify_status(exc.response, backend=backend, wall_now=wall_now, target=target)
    if isinstance(exc, openai.APIError | httpx2.HTTPError):
        # e.g. a response that failed validation: the upstream misbehaved.
        return Transient(
            RetryReason.SERVER_ERROR, f"unexpected {type(exc).__name__} from {backend}"
        )
    # A bare OpenAIError is raised before any request: the client itself is misconfigured.
    return Transient(RetryReason.CONFIG, f"{type(exc).__name__} building a request for {backend}")


def classify_status(
    response: httpx2.Response, *, backend: str, wall_now: float, target: Target
) -> DeleteResult:
    """A non-2xx HTTP answer (SPEC §6 outcome classes, §13 for 404)."""
    status = response.status_code
    where = f"HTTP {status} from {backend}"
    if status == 404:
        if recognised_not_found(response, target) is not None:
            return Deleted(not_found=True)
        return Transient(
            RetryReason.CONFIG,
            f"{where} is not the API's not-found for this {target.resource.replace('_', ' ')} "
            "(check base_url / endpoint / api_version)",
        )
    retry_after = parse_retry_after(response.headers, wall_now=wall_now)
    if status == 429:
        return Transient(RetryReason.RATE_LIMITED, where, retry_after)
    if status == 408 or status >= 500:
        return Transient(RetryReason.SERVER_ERROR, where, retry_after)
    if status == 409:
        return Transient(RetryReason.CONFLICT, where, retry_after)
    if status in (401, 403):
        return Transient(RetryReason.AUTH, f"{where} (check the api key and its permissions)")
    if 400 <= status < 500:
        return Permanent(where)
    return Transient(
        RetryReason.CONFIG, f"unexpected {where}; redirects are not followed (check base_url)"
    )


def parse_retry_after(headers: Mapping[str, str], *, wall_now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after`` (seconds or HTTP-date)."""
    millis = _finite_non_negative(headers.get("retry-after-ms"))
    if millis is not None:
        return min(millis / 1000.0, MAX_RETRY_AFTER_SECONDS)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _finite_non_negative(raw)
    if seconds is None:
        seconds = _seconds_until_http_date(raw, wall_now=wall_now)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER_SECONDS)


def _finite_non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _seconds_until_http_date(raw: str, *, wall_now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means no zone was given
        return None
    return max(0.0, when.timestamp() - wall_now)


def _error_object(response: httpx2.Response) -> Mapping[str, object] | None:
    """The ``error`` object of an API error envelope; None for a proxy page, HTML, empty body."""
    try:
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError, httpx2.ResponseNotRead):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _cause_suffix(exc: BaseException) -> str:
    """`` (ReadError)``: the transport exception's class, never its message."""
    cause = exc.__cause__ if isinstance(exc, openai.OpenAIError) else exc
    return f" ({type(cause).__name__})" if cause is not None else ""
