"""The one place openai / httpx2 exceptions and responses become ``DeleteResult`` values (SPEC §6).

Nothing above the provider layer sees an SDK exception. Details are built from the status
code, the backend label and exception *class names* only: SDK messages embed response bodies,
which may echo ids, keys or URLs, so they are never copied.

    2xx with deleted: true ............ Deleted
    404 with a JSON body .............. Deleted(not_found=True)  (gone already)
    404 without a JSON body ........... Transient(config)   an ingress / wrong host, not the API
    429 ............................... Transient(rate_limited, Retry-After)
    408, 5xx .......................... Transient(server_error, Retry-After)
    409 ............................... Transient(conflict, Retry-After)
    401, 403 .......................... Transient(auth)     a configuration problem: alerted on
    other 4xx (400, 422, ...) ......... Permanent
    1xx / 3xx ......................... Transient(config)   redirects are not followed
    timeouts .......................... Transient(timeout)
    connect / reset / protocol errors . Transient(connection)
    2xx without deleted: true ......... Transient(not_deleted)
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Mapping

import httpx2
import openai

from worker.models import RetryReason
from worker.providers.results import Deleted, DeleteResult, Permanent, Transient, seconds_text

# A Retry-After beyond the cleanup promise (one hour) is clamped: the engine retries and asks again.
MAX_RETRY_AFTER_SECONDS = 3600.0


def classify_response(body: object, *, backend: str) -> DeleteResult:
    """A 2xx answer: only an explicit ``deleted: true`` counts as done."""
    # Without strict validation the SDK returns whatever parsed (even a str for an HTML page),
    # and a missing field reads as None: anything but the boolean True is "not confirmed".
    if getattr(body, "deleted", None) is True:
        return Deleted()
    return Transient(RetryReason.NOT_DELETED, f"{backend} answered 2xx without deleted: true")


def classify_exception(
    exc: openai.OpenAIError | httpx2.HTTPError,
    *,
    backend: str,
    timeout_seconds: float,
    wall_now: float,
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
        return classify_status(exc.response, backend=backend, wall_now=wall_now)
    if isinstance(exc, openai.APIError | httpx2.HTTPError):
        # e.g. a response that failed validation: the upstream misbehaved.
        return Transient(
            RetryReason.SERVER_ERROR, f"unexpected {type(exc).__name__} from {backend}"
        )
    # A bare OpenAIError is raised before any request: the client itself is misconfigured.
    return Transient(RetryReason.CONFIG, f"{type(exc).__name__} building a request for {backend}")


def classify_status(response: httpx2.Response, *, backend: str, wall_now: float) -> DeleteResult:
    """A non-2xx HTTP answer (SPEC §6 outcome classes)."""
    status = response.status_code
    where = f"HTTP {status} from {backend}"
    if status == 404:
        if _has_json_object_body(response):
            return Deleted(not_found=True)
        return Transient(
            RetryReason.CONFIG, f"{where} without an API error body (check base_url / endpoint)"
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


def _has_json_object_body(response: httpx2.Response) -> bool:
    """True for an API error envelope; False for an ingress / proxy page (plain text, HTML)."""
    try:
        return isinstance(json.loads(response.content or b"null"), dict)
    except (ValueError, UnicodeDecodeError, httpx2.ResponseNotRead):
        return False


def _cause_suffix(exc: BaseException) -> str:
    """`` (ReadError)``: the transport exception's class, never its message."""
    cause = exc.__cause__ if isinstance(exc, openai.OpenAIError) else exc
    return f" ({type(cause).__name__})" if cause is not None else ""
