"""The metric names, labels and types are a contract with dashboards and alerts: pin them."""

from __future__ import annotations

from typing import Protocol

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.models import RetryReason
from worker.observability.metrics import (
    LATENCY_BUCKETS,
    BacklogSnapshot,
    Metrics,
    queue_kind,
)

ATT_Q = "mini-chat.attachment_cleanup"
CHAT_Q = "mini-chat.chat_cleanup"

# family name as the parser reports it -> (type, label names of its samples)
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "cleanup_completed": ("counter", {"resource_type"}),
    "cleanup_failed": ("counter", {"resource_type"}),
    "cleanup_retry": ("counter", {"resource_type", "reason"}),
    "cleanup_backlog": ("gauge", {"state", "resource_type"}),
    "cleanup_vector_store_with_failed_attachments": ("counter", set()),
    "cleanup_latency_seconds": ("histogram", {"op"}),
    "outbox_handler": ("counter", {"kind", "result"}),
    "outbox_dead_letter_backlog": ("gauge", {"kind"}),
    "outbox_dead_letter_oldest_age_seconds": ("gauge", {"kind"}),
    "outbox_backlog": ("gauge", {"queue"}),
    "outbox_oldest_pending_age_seconds": ("gauge", {"queue"}),
    "outbox_retry_rows": ("gauge", {"queue", "state"}),
    "outbox_lease_lost": ("counter", {"queue"}),
    "outbox_dead_lettered": ("counter", {"queue"}),
    "provider_requests": ("counter", {"backend", "operation", "outcome"}),
    "provider_request_duration_seconds": ("histogram", {"backend", "operation"}),
    "provider_route_suspected": ("counter", {"backend"}),
    "provider_routes_suspected": ("gauge", {"backend"}),
    "worker_build_info": ("gauge", {"version"}),
    "worker_last_loop_timestamp_seconds": ("gauge", set()),
    "worker_database_up": ("gauge", set()),
    "cleanup_backlog_refresh_timestamp_seconds": ("gauge", set()),
    "cleanup_leaks_found": ("gauge", {"kind"}),
    "reconcile_last_report_timestamp_seconds": ("gauge", set()),
    "reconcile_routes_failed": ("gauge", set()),
}


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def exercise(m: Metrics) -> None:
    """Touch every metric once so each family has at least one sample."""
    m.cleanup_completed("file")
    m.cleanup_failed("file")
    m.cleanup_retry("vector_store", RetryReason.RATE_LIMITED)
    m.vector_store_with_failed_attachments()
    m.observe_cleanup_latency("delete_file", 0.02)
    m.handler_result("chat_cleanup", "retry")
    m.lease_lost(ATT_Q)
    m.dead_lettered(CHAT_Q)
    m.observe_provider(backend="openai", operation="delete_file", outcome="deleted", seconds=0.1)
    m.route_suspected("openai")
    m.set_routes_suspected({"openai": 1})
    m.mark_loop_iteration()
    m.set_database_up(True)
    m.set_reconcile_report({"file": 2}, routes_failed=0, finished_at=1.0)
    m.set_backlog(
        BacklogSnapshot(
            outbox_backlog={ATT_Q: 3},
            outbox_oldest_pending_age_seconds={ATT_Q: 12.5},
            retry_due={ATT_Q: 1},
            retry_parked={CHAT_Q: 2},
            dead_letters={"chat_cleanup": 4},
            dead_letter_oldest_age_seconds={"chat_cleanup": 60.0},
            attachments_pending=5,
            attachments_failed=1,
            vector_stores_pending=2,
        )
    )


@pytest.mark.parametrize("prefix", ["mini_chat", "acme_cleanup"])
def test_every_family_has_the_contract_name_type_and_labels(prefix: str) -> None:
    m = Metrics(prefix, version="1.2.3")
    exercise(m)
    text = generate_latest(m.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {f"{prefix}_{name}" for name in EXPECTED}
    for name, (kind, labels) in EXPECTED.items():
        family = families[f"{prefix}_{name}"]
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    # Counters are exposed with the "_total" suffix dashboards use, and nothing "_created".
    assert f"{prefix}_cleanup_completed_total{{" in text
    assert f"{prefix}_cleanup_vector_store_with_failed_attachments_total " in text
    assert "_created" not in text
    assert value(m, f"{prefix}_worker_build_info", version="1.2.3") == 1


def test_counters_count_with_their_labels() -> None:
    m = Metrics()
    exercise(m)
    m.cleanup_completed("file")
    assert value(m, "mini_chat_cleanup_completed_total", resource_type="file") == 2
    assert value(m, "mini_chat_cleanup_completed_total", resource_type="vector_store") == 0
    assert (
        value(
            m, "mini_chat_cleanup_retry_total", resource_type="vector_store", reason="rate_limited"
        )
        == 1
    )
    assert value(m, "mini_chat_outbox_handler_total", kind="chat_cleanup", result="retry") == 1
    assert value(m, "mini_chat_outbox_handler_total", kind="chat_cleanup", result="reject") == 0
    assert value(m, "mini_chat_outbox_lease_lost_total", queue=ATT_Q) == 1
    assert value(m, "mini_chat_outbox_dead_lettered_total", queue=CHAT_Q) == 1
    assert value(m, "mini_chat_worker_database_up") == 1
    m.set_database_up(False)
    assert value(m, "mini_chat_worker_database_up") == 0


def test_latency_buckets_span_5ms_to_60s() -> None:
    assert LATENCY_BUCKETS[0] == 0.005
    assert LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    m = Metrics()
    m.observe_cleanup_latency("chat_cleanup", 0.004)
    m.observe_cleanup_latency("chat_cleanup", 45.0)
    name = "mini_chat_cleanup_latency_seconds"
    assert value(m, f"{name}_bucket", op="chat_cleanup", le="0.005") == 1
    assert value(m, f"{name}_bucket", op="chat_cleanup", le="60.0") == 2
    assert value(m, f"{name}_count", op="chat_cleanup") == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.cleanup_completed("chat"),
        lambda m: m.cleanup_failed("File"),
        lambda m: m.cleanup_retry("file", "provider unavailable: 503 from https://x"),
        lambda m: m.observe_cleanup_latency("delete_everything", 1.0),
        lambda m: m.handler_result("usage", "success"),
        lambda m: m.handler_result("chat_cleanup", "ok"),
        lambda m: m.lease_lost(""),
        lambda m: m.dead_lettered(""),
        lambda m: m.observe_provider(
            backend="openai", operation="upload", outcome="deleted", seconds=1
        ),
        lambda m: m.observe_provider(
            backend="openai", operation="delete_file", outcome="HTTP 418", seconds=1
        ),
        lambda m: m.observe_provider(
            backend="", operation="delete_file", outcome="deleted", seconds=1
        ),
        lambda m: m.set_backlog(BacklogSnapshot(dead_letters={"usage": 1})),
        lambda m: m.set_backlog(BacklogSnapshot(outbox_backlog={"": 1})),
    ],
)
def test_unbounded_or_unknown_label_values_are_rejected(call: object) -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="label"):
        call(m)  # type: ignore[operator]


def test_every_retry_reason_and_provider_outcome_is_accepted() -> None:
    m = Metrics()
    for reason in RetryReason:
        m.cleanup_retry("file", reason)
        m.cleanup_retry("vector_store", reason.value)
        m.observe_provider(
            backend="azure", operation="delete_vector_store", outcome=reason.value, seconds=0.5
        )
    for outcome in ("deleted", "not_found", "permanent"):
        m.observe_provider(backend="azure", operation="delete_file", outcome=outcome, seconds=0)
    assert value(m, "mini_chat_cleanup_retry_total", resource_type="file", reason="auth") == 1


@pytest.mark.parametrize("prefix", ["", "9lives", "mini-chat", "a b"])
def test_invalid_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Metrics(prefix)


def test_explicit_registry_is_used_and_global_registry_untouched() -> None:
    from prometheus_client import REGISTRY

    registry = CollectorRegistry()
    m = Metrics("isolated_prefix", registry)
    assert m.registry is registry
    assert "isolated_prefix_cleanup_backlog" in generate_latest(registry).decode()
    assert "isolated_prefix" not in generate_latest(REGISTRY).decode()
    # Two instances with their own registries coexist (one per test, one per app).
    Metrics("isolated_prefix")


def test_fresh_metrics_expose_zeroes_for_alerted_series() -> None:
    m = Metrics()
    assert value(m, "mini_chat_cleanup_backlog", state="failed", resource_type="file") == 0
    assert value(m, "mini_chat_outbox_dead_letter_backlog", kind="chat_cleanup") == 0
    assert value(m, "mini_chat_outbox_dead_letter_backlog", kind="attachment_cleanup") == 0
    assert value(m, "mini_chat_cleanup_failed_total", resource_type="file") == 0
    assert value(m, "mini_chat_cleanup_backlog_refresh_timestamp_seconds") == 0


def test_snapshot_sets_every_gauge() -> None:
    m = Metrics()
    exercise(m)
    g = "mini_chat_"
    assert value(m, g + "outbox_backlog", queue=ATT_Q) == 3
    assert value(m, g + "outbox_oldest_pending_age_seconds", queue=ATT_Q) == 12.5
    assert value(m, g + "outbox_retry_rows", queue=ATT_Q, state="due") == 1
    assert value(m, g + "outbox_retry_rows", queue=CHAT_Q, state="parked") == 2
    assert value(m, g + "outbox_dead_letter_backlog", kind="chat_cleanup") == 4
    assert value(m, g + "outbox_dead_letter_oldest_age_seconds", kind="chat_cleanup") == 60
    assert value(m, g + "cleanup_backlog", state="pending", resource_type="file") == 5
    assert value(m, g + "cleanup_backlog", state="failed", resource_type="file") == 1
    assert value(m, g + "cleanup_backlog", state="pending", resource_type="vector_store") == 2
    refreshed = value(m, g + "cleanup_backlog_refresh_timestamp_seconds")
    assert refreshed is not None
    assert refreshed > 1_600_000_000


def test_snapshot_zeroes_series_that_vanished() -> None:
    m = Metrics()
    exercise(m)
    m.set_backlog(BacklogSnapshot(outbox_backlog={CHAT_Q: 7}, dead_letters={"other": 1}))
    g = "mini_chat_"
    assert value(m, g + "outbox_backlog", queue=ATT_Q) == 0  # drained: 0, not the last 3
    assert value(m, g + "outbox_backlog", queue=CHAT_Q) == 7
    assert value(m, g + "outbox_oldest_pending_age_seconds", queue=ATT_Q) == 0
    assert value(m, g + "outbox_retry_rows", queue=ATT_Q, state="due") == 0
    assert value(m, g + "outbox_retry_rows", queue=CHAT_Q, state="parked") == 0
    assert value(m, g + "outbox_dead_letter_backlog", kind="chat_cleanup") == 0
    assert value(m, g + "outbox_dead_letter_backlog", kind="other") == 1
    assert value(m, g + "outbox_dead_letter_oldest_age_seconds", kind="chat_cleanup") == 0
    assert value(m, g + "cleanup_backlog", state="pending", resource_type="file") == 0
    m.set_backlog(BacklogSnapshot())
    assert value(m, g + "outbox_backlog", queue=CHAT_Q) == 0
    assert value(m, g + "outbox_dead_letter_backlog", kind="other") == 0


def test_heartbeat_age_follows_loop_iterations() -> None:
    m = Metrics()
    assert 0 <= m.heartbeat_age() < 5  # counted from construction before the first loop
    m.mark_loop_iteration()
    assert m.heartbeat_age() < 1
    stamp = value(m, "mini_chat_worker_last_loop_timestamp_seconds")
    assert stamp is not None
    assert stamp > 1_600_000_000


class ProviderObserverProtocol(Protocol):
    """The provider layer's observer protocol, restated so mypy checks the adapter fits."""

    def observe(self, *, backend: str, operation: str, outcome: str, seconds: float) -> None: ...


def test_provider_observer_records_requests_and_duration() -> None:
    m = Metrics()
    observer: ProviderObserverProtocol = m.provider_observer
    observer.observe(backend="azure", operation="delete_vector_store", outcome="timeout", seconds=2)
    observer.observe(
        backend="azure", operation="delete_vector_store", outcome="not_found", seconds=1
    )
    ops = {"backend": "azure", "operation": "delete_vector_store"}
    assert value(m, "mini_chat_provider_requests_total", outcome="timeout", **ops) == 1
    assert value(m, "mini_chat_provider_requests_total", outcome="not_found", **ops) == 1
    assert value(m, "mini_chat_provider_request_duration_seconds_count", **ops) == 2
    assert value(m, "mini_chat_provider_request_duration_seconds_sum", **ops) == 3


@pytest.mark.parametrize(
    ("queue", "kind"),
    [
        ("mini-chat.attachment_cleanup", "attachment_cleanup"),
        ("mini-chat.chat_cleanup", "chat_cleanup"),
        ("acme.chat_cleanup", "chat_cleanup"),
        ("mini-chat.usage", "other"),
        ("", "other"),
    ],
)
def test_queue_kind(queue: str, kind: str) -> None:
    assert queue_kind(queue) == kind
