"""Turning engine round reports into metrics and log events (shared by ``run`` and ``drain``).

Only what the ack persisted is reported as retried or dead-lettered; deliveries thrown away by a
lost lease are reported as such (they will be delivered again).
"""

from __future__ import annotations

from collections import Counter

import structlog

from worker.observability.metrics import Metrics, queue_kind
from worker.outbox.engine import RoundReport

log = structlog.get_logger("worker.outbox")

_RESULT = {"ok": "success", "retry": "retry", "reject": "reject"}


def record_round(metrics: Metrics, report: RoundReport) -> None:
    dead: Counter[str] = Counter()
    for settled in report.settled:
        message = settled.handled.envelope.message
        metrics.handler_result(queue_kind(message.queue), _RESULT[settled.kind])
        where = {"queue": message.queue, "partition": message.partition, "seq": message.seq}
        if settled.kind == "retry":
            log.info(
                "retry_scheduled",
                **where,
                delivery=message.delivery,
                reason=settled.reason,
                delay_seconds=round(settled.delay_seconds, 3),
            )
        elif settled.kind == "reject":
            dead[message.queue] += 1
            log.warning("dead_lettered", **where, delivery=message.delivery, reason=settled.error)
    for queue, count in dead.items():
        metrics.dead_lettered(queue, count)
    for queue in {s.handled.envelope.message.queue for s in report.lost}:
        metrics.lease_lost(queue)
        log.warning("lease_lost", queue=queue, during="ack", redelivered=len(report.lost))
