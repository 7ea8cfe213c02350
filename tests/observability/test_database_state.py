"""The daemon's account of the database (gauge, log, readiness cause) follows its loops' last
statements: one loop's success does not hide another's failure, a turn that ran no statement
proves nothing, and each cause is logged once per outage."""

from __future__ import annotations

import structlog

from worker.errors import DatabaseUnavailable, SchemaError
from worker.observability.metrics import Metrics
from worker.runtime.daemon import DatabaseState

REFUSED = DatabaseUnavailable("database unavailable: connection refused")
READ_ONLY = DatabaseUnavailable("database unavailable: read-only transaction (SQLSTATE 25006)")


def _gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("mini_chat_worker_database_up")


def test_down_until_every_failing_loop_has_answered() -> None:
    metrics = Metrics("mini_chat")
    state = DatabaseState(metrics)
    with structlog.testing.capture_logs() as logs:
        assert not state.answered("backlog")  # no outage: nobody to wake
        state.failed("lane:a:0", READ_ONLY)
        state.failed("retrier", READ_ONLY)
        # A read that works on a read-only node: the failing loops should try again (and will
        # fail again), but the database is not up for them.
        assert state.answered("backlog")
        assert (_gauge(metrics), state.cause) == (0, str(READ_ONLY))
        state.answered("lane:a:0")
        assert _gauge(metrics) == 0
        state.answered("retrier")
    assert (_gauge(metrics), state.cause) == (1, None)
    assert [e["event"] for e in logs] == ["database_unavailable", "database_recovered"]
    assert logs[0]["cause"] == str(READ_ONLY)


def test_each_cause_is_logged_once_per_outage() -> None:
    state = DatabaseState(Metrics("mini_chat"))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            state.failed("lane:a:0", REFUSED)
            state.failed("lane:a:1", READ_ONLY)
        state.answered("lane:a:0")
        state.answered("lane:a:1")
        state.failed("lane:a:0", REFUSED)  # a new outage: told again
    causes = [(e["event"], e.get("cause")) for e in logs]
    assert causes == [
        ("database_unavailable", str(REFUSED)),
        ("database_unavailable", str(READ_ONLY)),
        ("database_recovered", None),
        ("database_unavailable", str(REFUSED)),
    ]


def test_missing_schema_is_reachable_but_logged() -> None:
    metrics = Metrics("mini_chat")
    state = DatabaseState(metrics)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            state.failed("sequencer", SchemaError("database schema missing"))
    assert (_gauge(metrics), state.cause) == (1, None)
    assert [e["event"] for e in logs] == ["database_schema_missing"]
