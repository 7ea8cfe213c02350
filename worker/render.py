"""Human-readable output of the CLI (tables, summaries, the drain progress bar)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from worker.outbox.dead_letters import DeadLetter
    from worker.runtime.drain import DrainSummary
    from worker.runtime.receipts import ReceiptRow
    from worker.runtime.reconcile import ReconcileReport
    from worker.runtime.status import Status


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _age(value)
    return str(value)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def status(report: Status) -> str:
    parts = [
        "Outbox backlog",
        table(
            ["queue", "partition", "pending", "oldest", "processed_seq", "attempts", "leased_by"],
            [
                [
                    p.queue,
                    p.partition,
                    p.pending,
                    p.oldest_age_seconds,
                    p.processed_seq,
                    p.attempts,
                    p.leased_by,
                ]
                for p in report.partitions
            ],
        ),
        "",
        "Parked retries",
        table(
            ["queue", "due", "parked", "oldest", "next_due_in"],
            [
                [r.queue, r.due, r.parked, r.oldest_age_seconds, r.next_due_in_seconds]
                for r in report.retries
            ]
            or [["-", 0, 0, None, None]],
        ),
        "",
        "Dead letters",
        table(
            ["queue", "status", "count", "oldest"],
            [[d.queue, d.status, d.count, d.oldest_age_seconds] for d in report.dead_letters]
            or [["-", "-", 0, None]],
        ),
        "",
        "Attachments by cleanup_status: "
        + (", ".join(f"{k}={v}" for k, v in sorted(report.attachments.items())) or "none"),
        f"Vector stores of deleted chats still to delete: {report.outstanding_vector_stores}",
    ]
    return "\n".join(parts + _suspected_routes(report))


def _suspected_routes(report: Status) -> list[str]:
    """Routes whose not-founds are not counted as deleted (docs/runbooks.md, SPEC §13)."""
    if not report.suspected_routes:
        return ["Suspected provider routes: none"]
    rows = [
        [r.backend, r.tenant_id or "(shared)", r.distinct_not_found, r.suspected_for_seconds]
        for r in report.suspected_routes
    ]
    return [
        "",
        "Suspected provider routes (not-found for many objects in a row: wrong key, project or "
        "organization?)",
        table(["backend", "tenant", "distinct_not_found", "since"], rows),
    ]


def dead_letter_json(row: DeadLetter) -> dict[str, Any]:
    data = {k: v for k, v in vars(row).items() if k != "payload"}
    text = row.payload.decode("utf-8", errors="replace")
    try:
        data["payload"] = json.loads(text)
    except ValueError:
        data["payload"] = text
    return data


def dead_letters(rows: Sequence[DeadLetter]) -> str:
    if not rows:
        return "no dead letters match"
    return table(
        ["id", "queue", "partition", "seq", "status", "attempts", "failed_at", "last_error"],
        [
            [
                r.id,
                r.queue,
                r.partition,
                r.seq,
                r.status,
                r.attempts,
                r.failed_at.isoformat(timespec="seconds"),
                (r.last_error or "")[:100],
            ]
            for r in rows
        ],
    )


def id_list(ids: Sequence[int]) -> str:
    if not ids:
        return ""
    shown = ", ".join(str(i) for i in ids[:20])
    return f": {shown}{', ...' if len(ids) > 20 else ''}"


def drain_summary(summary: DrainSummary) -> str:
    rows = [[queue, s.done, s.retried, s.dead_lettered] for queue, s in summary.queues.items()]
    lines = [
        table(["queue", "done", "retried", "dead_lettered"], rows),
        f"attachments that reached terminal failure in this pass: {summary.attachments_failed}",
        f"left: {summary.remaining_pending} pending, {summary.remaining_retries} parked for retry"
        + (" (stopped at --max-seconds)" if summary.timed_out else ""),
        f"took {summary.seconds:.1f}s",
    ]
    if not summary.clean:
        lines.append("inspect: cleanup-worker status; cleanup-worker dead-letters list")
    return "\n".join(lines)


class DrainProgress:
    """A progress bar on a terminal (stderr), nothing otherwise; total grows if work arrives."""

    def __init__(self, *, enabled: bool):
        self._enabled = enabled
        self._bar: Any = None
        self._shown = 0

    def __enter__(self) -> DrainProgress:
        return self

    def update(self, handled: int, remaining: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(
                length=max(1, handled + remaining),
                label="draining",
                file=sys.stderr,
                show_pos=True,
            )
            self._bar.__enter__()
        self._bar.length = max(self._bar.length, handled + remaining)
        self._bar.update(handled - self._shown)
        self._shown = handled

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)


def demo_summary(summary: dict[str, Any], *, dsn: str, keep: bool, stop_hint: str) -> str:
    world, drained = summary["world"], summary["drain"]
    rows = [
        [
            tenant,
            counts.get("files deleted", 0),
            counts.get("cleanup done", 0),
            counts.get("cleanup failed", 0),
            counts.get("cleanup pending", 0),
        ]
        for tenant, counts in summary["per_tenant"].items()
    ]
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(summary["provider_answers"].items()))
    lines = [
        "",
        f"Seeded {world['chats']} chats: {world['chats_deleted']} deleted whole, "
        f"{world['attachments_deleted_alone']} attachments deleted one by one, "
        f"{world['poison_messages']} poison messages, faults injected: {world['faults']}",
        f"Drained in {summary['seconds']}s",
        "",
        table(["tenant [backend]", "files deleted", "done", "failed", "pending"], rows),
        "",
        f"Vector stores deleted: {summary['vector_stores_deleted']}; "
        f"left of deleted chats: {summary['vector_store_rows_left']}",
        f"Provider answers: {answers}",
        f"Retries: {sum(q['retried'] for q in drained['queues'].values())} deliveries parked "
        "and retried (backoff with jitter, Retry-After honoured)",
        f"Dead letters: {len(summary['dead_letters'])}",
        *(f"  {n:>4} x {reason}" for reason, n in Counter(summary["dead_letters"]).most_common(8)),
        "",
    ]
    target = f"--dsn '{dsn}'"
    if keep:
        lines += [
            f"The database is still running: {dsn}",
            f"Inspect:  cleanup-worker {target} status",
            f"          cleanup-worker {target} dead-letters list",
            f"Fix:      cleanup-worker {target} retry-failed --all   (after fixing the key)",
            *([f"Stop it:  {stop_hint}"] if stop_hint else []),
        ]
    else:
        lines += [
            "Against a real database, inspect with `cleanup-worker status` and "
            "`cleanup-worker dead-letters list`,",
            "and repair with `cleanup-worker retry-failed --all` once the cause is fixed "
            "(re-run with --keep to try them here).",
        ]
    return "\n".join(lines)


def receipts(rows: Sequence[ReceiptRow]) -> str:
    """The ``receipts`` table: one line per provider delete, newest first."""
    if not rows:
        return "no receipts match"
    return table(
        ["deleted_at", "kind", "object", "outcome", "status", "tenant", "chat", "attachment",
         "route", "request_id"],
        [
            [r.deleted_at.isoformat(timespec="seconds"), r.object_kind, r.object_id, r.outcome,
             r.http_status, r.tenant_id, r.chat_id, r.attachment_id, r.route, r.request_id]
            for r in rows
        ],
    )  # fmt: skip


class ReconcileProgress:
    """One self-overwriting line on a terminal (stderr): the route and objects listed so far."""

    def __init__(self, *, enabled: bool):
        self._enabled = enabled
        self._shown = False

    def __enter__(self) -> ReconcileProgress:
        return self

    def update(self, route: str, kind: str, listed: int) -> None:
        if self._enabled:
            noun = "files" if kind == "file" else "vector stores"
            click.echo(f"\rreconcile: {route}: {listed} {noun} listed\x1b[K", nl=False, err=True)
            self._shown = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._shown:
            click.echo("\r\x1b[K", nl=False, err=True)


def reconcile(report: ReconcileReport) -> str:
    """The reconcile report: totals, one line per route, then every leaked object."""
    mode = "dry run (listing only; no row changed)" if report.dry_run else "applied"
    lines = [
        f"reconcile: {mode}; grace {report.grace_hours:g}h",
        f"leaked files: {report.leaked_files}   leaked vector stores: "
        f"{report.leaked_vector_stores}   unreferenced files: {report.unreferenced_files}",
        "",
        table(
            ["route", "files", "vector_stores", "leaked_files", "leaked_stores", "unreferenced",
             "in_cleanup", "live", "young", "error"],
            [
                [r.route + (f" [tenant {r.tenant_only} only]" if r.tenant_only else ""),
                 r.files_listed, r.vector_stores_listed, len(r.leaked_files),
                 len(r.leaked_vector_stores), len(r.unreferenced_files),
                 r.in_cleanup_files + r.in_cleanup_vector_stores,
                 r.live_files + r.live_vector_stores, r.young_files + r.young_vector_stores,
                 r.error]
                for r in report.routes
            ],
        ),
    ]  # fmt: skip
    leaks = [
        [r.route, "file", f["file_id"], ",".join(f["cleanup_statuses"]),
         "chat" if f["chat_deleted"] else "attachment", "yes" if f["misrouted"] else "no"]
        for r in report.routes for f in r.leaked_files
    ] + [
        [r.route, "vector_store", s["vector_store_id"], "-", "chat", "no"]
        for r in report.routes for s in r.leaked_vector_stores
    ]  # fmt: skip
    if leaks:
        lines += ["", "Leaked", table(
            ["route", "kind", "object", "cleanup_status", "owner", "misrouted"], leaks
        )]  # fmt: skip
    deleted = sum(r.unreferenced_deleted for r in report.routes)
    if deleted or any(r.unreferenced_delete_failures for r in report.routes):
        failures = sum(len(r.unreferenced_delete_failures) for r in report.routes)
        lines += ["", f"unreferenced files deleted: {deleted}, failed: {failures}"]
    if report.applied is not None:
        a = report.applied
        lines += [
            "",
            f"applied: {a.attachments_reset} attachment row(s) back to pending; enqueued "
            f"{a.chat_messages} chat and {a.attachment_messages} attachment cleanup message(s)"
            + (f"; {a.misrouted_skipped} misrouted file(s) left (fix routing first)"
               if a.misrouted_skipped else ""),
        ]  # fmt: skip
    elif report.leaked_files or report.leaked_vector_stores:
        lines += ["", "run again with --apply to hand the leaked objects back to cleanup"]
    return "\n".join(lines)
