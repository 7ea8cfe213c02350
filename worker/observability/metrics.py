"""Every Prometheus metric of the worker, on one explicit registry (SPEC §9).

Names match the original design so existing dashboards and alerts keep working; the rest of
the code calls the intention-named methods of ``Metrics`` and never touches prometheus objects.
Label values come from small fixed sets and anything else raises ``ValueError``: an unbounded
label (the original put raw error text in ``reason``) is a cardinality bomb, so a bad value is
a programming error caught by tests, not something to sanitise at runtime. ``queue`` and
``backend`` come from configuration, so they are bounded by it and only checked for non-empty.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from worker.models import RetryReason

RESOURCE_TYPES = frozenset({"file", "vector_store"})
LATENCY_OPS = frozenset(
    {"delete_file", "delete_vector_store", "attachment_cleanup", "chat_cleanup"}
)
HANDLER_KINDS = frozenset({"attachment_cleanup", "chat_cleanup"})
HANDLER_RESULTS = frozenset({"success", "retry", "reject"})
DEAD_LETTER_KINDS = HANDLER_KINDS | {"other"}
RETRY_ROW_STATES = frozenset({"due", "parked"})
LEAK_KINDS = ("file", "vector_store", "unreferenced_file")
PROVIDER_OPERATIONS = frozenset({"delete_file", "delete_vector_store"})
RETRY_REASONS = frozenset(reason.value for reason in RetryReason)
PROVIDER_OUTCOMES = frozenset({"deleted", "not_found", "permanent"}) | RETRY_REASONS

# 5 ms (a local 404) .. 60 s (a provider call at its timeout, a chat with many files).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_PREFIX_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def queue_kind(queue_name: str) -> str:
    """The ``kind`` label of a queue: dashboards know kinds, queue names are configurable."""
    for kind in ("attachment_cleanup", "chat_cleanup"):
        if queue_name.endswith(kind):
            return kind
    return "other"


@dataclass(frozen=True)
class BacklogSnapshot:
    """One periodic read of the database's backlog, applied to every backlog gauge at once.

    Mappings are keyed by queue name (outbox and retry fields) or by ``queue_kind`` (dead
    letters: unresolved ones only); a key missing from a later snapshot reads 0 afterwards.
    """

    outbox_backlog: Mapping[str, int] = field(default_factory=dict)
    outbox_oldest_pending_age_seconds: Mapping[str, float] = field(default_factory=dict)
    retry_due: Mapping[str, int] = field(default_factory=dict)
    retry_parked: Mapping[str, int] = field(default_factory=dict)
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    dead_letter_oldest_age_seconds: Mapping[str, float] = field(default_factory=dict)
    attachments_pending: int = 0
    attachments_failed: int = 0
    vector_stores_pending: int = 0  # chat_vector_stores rows of soft-deleted chats


def _check(label: str, value: str, allowed: Iterable[str]) -> str:
    if value not in allowed:
        raise ValueError(f"invalid {label} label {value!r}; expected one of {sorted(allowed)}")
    return value


def _check_name(label: str, value: str) -> str:
    if not value:
        raise ValueError(f"empty {label} label")
    return value


def _keyed(values: Mapping[str, float], *extra: str) -> dict[tuple[str, ...], float]:
    return {(key, *extra): value for key, value in values.items()}


class _GaugeFamily:
    """A labelled gauge set from snapshots: series absent from the new snapshot are zeroed."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._seen: set[tuple[str, ...]] = set()

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        for labels in self._seen - set(values):
            self._gauge.labels(*labels).set(0)
        for labels, value in values.items():
            self._gauge.labels(*labels).set(value)
        self._seen.update(values)


class Metrics:
    """The worker's metrics; one instance per process, built by the composition root."""

    def __init__(
        self,
        prefix: str = "mini_chat",
        registry: CollectorRegistry | None = None,
        *,
        version: str | None = None,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"invalid metrics prefix {prefix!r}: must match {_PREFIX_RE.pattern}")
        # "*_created" series would double every counter and histogram and nothing reads them.
        # The switch is process-wide; this class is the process's only metrics owner.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{prefix}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{prefix}_{name}", doc, labels, registry=r)

        def family(name: str, doc: str, labels: tuple[str, ...]) -> _GaugeFamily:
            return _GaugeFamily(gauge(name, doc, labels))

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(f"{prefix}_{name}", doc, labels, buckets=LATENCY_BUCKETS, registry=r)

        # prometheus_client appends "_total" to counter samples: the names below omit it.
        resource = ("resource_type",)
        self._completed = counter("cleanup_completed", "Resources cleaned up.", resource)
        self._failed = counter("cleanup_failed", "Cleanups failed terminally.", resource)
        self._retry = counter(
            "cleanup_retry", "Cleanups to be retried.", ("resource_type", "reason")
        )
        self._cleanup_backlog = family(
            "cleanup_backlog", "Rows pending or failed cleanup.", ("state", "resource_type")
        )
        self._vs_with_failed = counter(
            "cleanup_vector_store_with_failed_attachments",
            "Vector stores deleted while attachments of their chat had failed cleanup.",
        )
        self._latency = histogram("cleanup_latency_seconds", "Cleanup duration.", ("op",))
        self._handler = counter("outbox_handler", "Handler results.", ("kind", "result"))
        self._dead_letter_backlog = family(
            "outbox_dead_letter_backlog", "Unresolved dead letters.", ("kind",)
        )
        self._dead_letter_age = family(
            "outbox_dead_letter_oldest_age_seconds", "Oldest unresolved dead letter.", ("kind",)
        )
        self._outbox_backlog = family("outbox_backlog", "Messages not yet processed.", ("queue",))
        self._outbox_age = family(
            "outbox_oldest_pending_age_seconds", "Oldest unprocessed message.", ("queue",)
        )
        self._retry_rows = family(
            "outbox_retry_rows", "Parked retries, due or waiting.", ("queue", "state")
        )
        self._lease_lost = counter("outbox_lease_lost", "Batches whose lease was lost.", ("queue",))
        self._dead_lettered = counter(
            "outbox_dead_lettered", "Messages dead-lettered here.", ("queue",)
        )
        self._provider_requests = counter(
            "provider_requests", "Provider calls.", ("backend", "operation", "outcome")
        )
        self._provider_duration = histogram(
            "provider_request_duration_seconds", "Provider call duration.", ("backend", "operation")
        )
        self._route_suspected = counter(
            "provider_route_suspected",
            "Routes that became suspected: not-found for many distinct objects in a row.",
            ("backend",),
        )
        self._routes_suspected = family(
            "provider_routes_suspected",
            "Routes of this backend whose not-founds this replica does not count as deleted.",
            ("backend",),
        )
        self._build_info = gauge("worker_build_info", "Always 1, by version.", ("version",))
        self._last_loop = gauge(
            "worker_last_loop_timestamp_seconds", "Unix time of the last worker loop iteration."
        )
        self._database_up = gauge(
            "worker_database_up",
            "1 while the worker can use the database: no loop's last statement failed.",
        )
        self._backlog_refreshed = gauge(
            "cleanup_backlog_refresh_timestamp_seconds", "Unix time of the last backlog refresh."
        )
        self._leaks_found = gauge(
            "cleanup_leaks_found",
            "Provider objects the last reconcile found leaked (file, vector_store) or "
            "unreferenced (unreferenced_file); read from its report row.",
            ("kind",),
        )
        self._reconcile_finished = gauge(
            "reconcile_last_report_timestamp_seconds",
            "Unix time of the newest reconcile report (0: reconcile never ran).",
        )
        self._reconcile_routes_failed = gauge(
            "reconcile_routes_failed", "Routes whose listing failed in the last reconcile."
        )
        # Series that alerts use with increase()/absent() exist from the start, at 0.
        for leak_kind in LEAK_KINDS:
            self._leaks_found.labels(leak_kind)
        self._reconcile_finished.set(0)
        for resource_type in RESOURCE_TYPES:
            self._completed.labels(resource_type)
            self._failed.labels(resource_type)
        for kind in HANDLER_KINDS:
            for result in HANDLER_RESULTS:
                self._handler.labels(kind, result)
        self.set_backlog(BacklogSnapshot())
        self._backlog_refreshed.set(0)  # 0 = never refreshed from the database
        self._build_info.labels(version or _package_version()).set(1)
        self._started_monotonic = time.monotonic()
        self._last_loop_monotonic: float | None = None

    # -- cleanup outcomes (handlers) -------------------------------------------------------

    def cleanup_completed(self, resource_type: str) -> None:
        self._completed.labels(_check("resource_type", resource_type, RESOURCE_TYPES)).inc()

    def cleanup_failed(self, resource_type: str) -> None:
        self._failed.labels(_check("resource_type", resource_type, RESOURCE_TYPES)).inc()

    def cleanup_retry(self, resource_type: str, reason: RetryReason | str) -> None:
        self._retry.labels(
            _check("resource_type", resource_type, RESOURCE_TYPES),
            _check("reason", str(reason), RETRY_REASONS),
        ).inc()

    def vector_store_with_failed_attachments(self) -> None:
        self._vs_with_failed.inc()

    def observe_cleanup_latency(self, op: str, seconds: float) -> None:
        self._latency.labels(_check("op", op, LATENCY_OPS)).observe(seconds)

    # -- outbox engine -----------------------------------------------------------------------

    def handler_result(self, kind: str, result: str) -> None:
        self._handler.labels(
            _check("kind", kind, HANDLER_KINDS), _check("result", result, HANDLER_RESULTS)
        ).inc()

    def lease_lost(self, queue: str) -> None:
        self._lease_lost.labels(_check_name("queue", queue)).inc()

    def dead_lettered(self, queue: str, count: int = 1) -> None:
        self._dead_lettered.labels(_check_name("queue", queue)).inc(count)

    # -- provider layer ----------------------------------------------------------------------

    def observe_provider(
        self, *, backend: str, operation: str, outcome: str, seconds: float
    ) -> None:
        """One provider call; the signature of the provider layer's observer protocol."""
        backend = _check_name("backend", backend)
        operation = _check("operation", operation, PROVIDER_OPERATIONS)
        self._provider_requests.labels(
            backend, operation, _check("outcome", outcome, PROVIDER_OUTCOMES)
        ).inc()
        self._provider_duration.labels(backend, operation).observe(seconds)

    def route_suspected(self, backend: str) -> None:
        """A route of ``backend`` became suspected (SPEC §13 route suspicion)."""
        self._route_suspected.labels(_check_name("backend", backend)).inc()

    def set_routes_suspected(self, per_backend: Mapping[str, int]) -> None:
        """How many routes of each backend are suspected now (absent backends drop to 0)."""
        for backend in per_backend:
            _check_name("backend", backend)
        self._routes_suspected.replace(_keyed(per_backend))

    @property
    def provider_observer(self) -> ProviderObserver:
        """An object with ``observe(...)``, to hand to the provider layer."""
        return ProviderObserver(self)

    # -- liveness and database state ---------------------------------------------------------

    def mark_loop_iteration(self) -> None:
        """Called by every worker loop iteration; ``/healthz`` reads the age of the last one."""
        self._last_loop_monotonic = time.monotonic()
        self._last_loop.set(time.time())

    def heartbeat_age(self) -> float:
        """Seconds since the last loop iteration (since start before the first one)."""
        last = self._last_loop_monotonic
        return time.monotonic() - (self._started_monotonic if last is None else last)

    def set_database_up(self, up: bool) -> None:
        self._database_up.set(1 if up else 0)

    # -- reconcile (SPEC §14) ----------------------------------------------------------------

    def set_reconcile_report(
        self, leaks: Mapping[str, int], *, routes_failed: int, finished_at: float
    ) -> None:
        """The newest reconcile report's counts (``leaks`` by ``LEAK_KINDS`` kind)."""
        for kind in LEAK_KINDS:
            self._leaks_found.labels(kind).set(leaks.get(kind, 0))
        self._reconcile_routes_failed.set(routes_failed)
        self._reconcile_finished.set(finished_at)

    # -- backlog refresh ---------------------------------------------------------------------

    def set_backlog(self, snapshot: BacklogSnapshot) -> None:
        """Apply a backlog snapshot to every backlog gauge; vanished series drop to 0."""
        s = snapshot
        for kind in (*s.dead_letters, *s.dead_letter_oldest_age_seconds):
            _check("kind", kind, DEAD_LETTER_KINDS)
        queues = (
            *s.outbox_backlog,
            *s.outbox_oldest_pending_age_seconds,
            *s.retry_due,
            *s.retry_parked,
        )
        for queue in queues:
            _check_name("queue", queue)
        self._cleanup_backlog.replace(
            {
                ("pending", "file"): s.attachments_pending,
                ("failed", "file"): s.attachments_failed,
                ("pending", "vector_store"): s.vector_stores_pending,
            }
        )
        self._outbox_backlog.replace(_keyed(s.outbox_backlog))
        self._outbox_age.replace(_keyed(s.outbox_oldest_pending_age_seconds))
        self._retry_rows.replace({**_keyed(s.retry_due, "due"), **_keyed(s.retry_parked, "parked")})
        # The two known kinds always exist, so "dead letters > 0" alerts see a 0, not nothing.
        known = dict.fromkeys(HANDLER_KINDS, 0)
        self._dead_letter_backlog.replace(_keyed({**known, **s.dead_letters}))
        self._dead_letter_age.replace(_keyed({**known, **s.dead_letter_oldest_age_seconds}))
        self._backlog_refreshed.set(time.time())


class ProviderObserver:
    """Adapter giving ``Metrics.observe_provider`` the provider layer's ``observe`` name."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def observe(self, *, backend: str, operation: str, outcome: str, seconds: float) -> None:
        self._metrics.observe_provider(
            backend=backend, operation=operation, outcome=outcome, seconds=seconds
        )


def _package_version() -> str:
    try:
        return metadata.version("cleanup-worker")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"
