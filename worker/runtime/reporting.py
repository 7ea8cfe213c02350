"""Turning engine round reports into metrics and log events (shared by ``run`` and ``drain``).

Only what the ack persisted is reported as retried or dead-lettered; deliveries thrown away by a
lost lease are reported as such (they will be delivered again).
"""

from __future__ import annotations

from collections import Counter
from typing import assert_never

import structlog

from worker.models import Ok, Outcome, Reject, Retry
from worker.observability.metrics import Metrics, queue_kind
from worker.outbox.engine import RoundReport

log = structlog.get_logger("worker.outbox")


def record_round(metrics: Metrics, report: RoundReport) -> None:
    dead: Counter[str] = Counter()
    for settled in report.settled:
        message, verdict = settled.handled.envelope.message, settled.verdict
        metrics.handler_result(queue_kind(message.queue), _result_label(verdict))
        where = {"queue": message.queue, "partition": message.partition, "seq": message.seq}
        match verdict:
            case Retry(reason=reason, retry_after_seconds=delay):
                log.info(
                    "retry_scheduled",
                    **where,
                    delivery=message.delivery,
                    reason=reason.value,
                    delay_seconds=round(delay or 0.0, 3),
                )
            case Reject(reason=text):
                dead[message.queue] += 1
                log.warning("dead_lettered", **where, delivery=message.delivery, reason=text)
    for queue, count in dead.items():
        metrics.dead_lettered(queue, count)
    for queue in {s.handled.envelope.message.queue for s in report.lost}:
        metrics.lease_lost(queue)
        log.warning("lease_lost", queue=queue, during="ack", redelivered=len(report.lost))


def _result_label(verdict: Outcome) -> str:
    """The ``result`` label of ``outbox_handler_total``: dashboards know "success", not "ok"."""
    match verdict:
        case Ok():
            return "success"
        case Retry():
            return "retry"
        case Reject():
            return "reject"
        case _:
            assert_never(verdict)
