"""Turning engine round reports into metrics (one place, shared by ``run`` and ``drain``)."""

from __future__ import annotations

from collections import Counter

from worker.observability.metrics import Metrics, queue_kind
from worker.outbox.engine import RoundReport

_RESULT = {"ok": "success", "retry": "retry", "reject": "reject"}


def record_round(metrics: Metrics, report: RoundReport) -> None:
    dead: Counter[str] = Counter()
    for settled in report.settled:
        queue = settled.handled.envelope.message.queue
        metrics.handler_result(queue_kind(queue), _RESULT[settled.kind])
        if settled.kind == "reject":
            dead[queue] += 1
    for queue, count in dead.items():
        metrics.dead_lettered(queue, count)
    for queue in {s.handled.envelope.message.queue for s in report.lost}:
        metrics.lease_lost(queue)
