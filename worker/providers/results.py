"""What a provider delete call ends as: values the handlers dispatch on, never exceptions.

``Deleted``   the resource is gone (deleted now, or a 404: it was already gone).
``Transient`` not done yet; retry later with ``reason`` from the fixed ``RetryReason`` set.
``Permanent`` the provider refused the request as malformed; retrying cannot help.

``detail`` is short, bounded and secret-free ("HTTP 503 from azure", "timeout after 10s"):
never a response body, never a key, never a URL with credentials. It is stored as the row's
last error and shown to operators, so it must be safe to print anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, assert_never

from worker.models import RetryReason

DETAIL_MAX_CHARS = 200

Flavor = Literal["openai", "azure", "azure_v1"]
"""The API surface a route speaks: OpenAI, Azure classic (``/openai/...?api-version``), Azure v1."""
ResourceKind = Literal["file", "vector_store"]


def bounded(text: str) -> str:
    """Cut ``text`` to ``DETAIL_MAX_CHARS`` so a detail can never grow without bound."""
    if len(text) <= DETAIL_MAX_CHARS:
        return text
    return text[: DETAIL_MAX_CHARS - 3] + "..."


def seconds_text(seconds: float) -> str:
    """``"9.87s"``, ``"1800s"``: a duration for a detail, never in exponent notation."""
    return f"{round(seconds, 2):.15g}s"


@dataclass(frozen=True, slots=True)
class Deleted:
    """The resource no longer exists at the provider; ``not_found`` when it was already gone.

    The rest is the evidence a deletion receipt keeps (SPEC §14), filled in by the gateway:
    the HTTP status, the provider's ``x-request-id`` and the route that answered. Not compared:
    a result means the same whatever request id it came with.
    """

    not_found: bool = False
    http_status: int | None = field(default=None, compare=False)
    request_id: str | None = field(default=None, compare=False)
    route: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Transient:
    """Not done; the engine retries. ``retry_after_seconds`` is the provider's lower bound.

    ``sent`` is the one answer to "did a request reach the provider?": False when the gateway
    refused the call itself (route paused, circuit open, limiter busy past the call budget,
    tenant deferred to its fair turn), so it is no cleanup attempt and tells the breaker
    nothing. A call is sent when any of its attempts was. A configuration problem (no route,
    no key) counts as sent: a row that can never be cleaned must run out of attempts.
    """

    reason: RetryReason
    detail: str
    retry_after_seconds: float | None = None
    sent: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", bounded(self.detail))


@dataclass(frozen=True, slots=True)
class Permanent:
    """The provider rejected the request itself (400/422/other 4xx): a terminal failure now."""

    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", bounded(self.detail))


DeleteResult = Deleted | Transient | Permanent


def outcome_label(result: DeleteResult) -> str:
    """The bounded ``outcome`` metric label of a result."""
    if isinstance(result, Deleted):
        return "not_found" if result.not_found else "deleted"
    if isinstance(result, Transient):
        return result.reason.value
    if isinstance(result, Permanent):
        return "permanent"
    assert_never(result)


class ProviderObserver(Protocol):
    """Receives one call per provider HTTP attempt (metrics); must not raise or block."""

    def observe(self, *, backend: str, operation: str, outcome: str, seconds: float) -> None: ...
