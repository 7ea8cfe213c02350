"""Human-readable output of the CLI (tables, summaries, the drain progress bar).

Over 400 lines because all human output of the product's commands lives in one module, so
wording and layout stay one voice across commands (the demo's summary is the lab's:
``cwlab.summary``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from worker.db.receipts import ReceiptRow
    from worker.outbox.dead_letters import DeadLetter
    from worker.runtime.drain import DrainProgress as DrainProgressState
    from worker.runtime.drain import DrainSummary
    from worker.runtime.reconcile import ReconcileReport
    from worker.runtime.repair import RepairReport
    from worker.runtime.status import Status


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
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
    if seconds < 0.5:  # "due" / clock skew: never "-0s"
        return "0s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def status(report: Status) -> str:
    """Counts first (what is left, in one line), then where: queues, retries, dead letters,
    tenants. "messages" are outbox messages; "attachments" are rows of the chat service."""
    attachments = report.attachments
    dead_pending = sum(d.count for d in report.dead_letters if d.status == "pending")
    parts = [
        f"Left to do: {report.messages()} outbox message(s), {report.retry_rows()} parked for "
        f"retry, {dead_pending} pending dead letter(s); attachment rows "
        f"{attachments.get('pending', 0)} pending, {attachments.get('failed', 0)} failed; "
        f"{report.outstanding_vector_stores} vector store(s) of deleted chats",
        "",
        "Outbox backlog (messages not yet processed, per queue and partition)",
        table(
            [
                "queue",
                "partition",
                "messages",
                "oldest",
                "processed_seq",
                "lease_attempts",
                "leased_by",
                "lease_expires_in",
            ],
            [
                [
                    p.queue,
                    p.partition,
                    p.messages,
                    p.oldest_age_seconds,
                    p.processed_seq,
                    p.attempts,
                    p.leased_by,
                    p.lease_expires_in_seconds,
                ]
                for p in report.partitions
            ],
        ),
        "",
        "Parked retries (messages waiting for their next delivery)",
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
        _attachment_counts(report),
        f"Vector stores of deleted chats still to delete: {report.outstanding_vector_stores}",
        "",
        "Tenants with the most cleanup left (attachment rows and vector stores, most first)",
        table(
            ["tenant_id", "attachments_pending", "attachments_failed", "vector_stores_left"],
            [
                [t.tenant_id, t.attachments_pending, t.attachments_failed, t.vector_stores_left]
                for t in report.top_tenants
            ]
            or [["-", 0, 0, 0]],
        ),
    ]
    parts += [
        f"Index {p.name} on {p.table}: {p.problem}; the worker's statements scan the table "
        f"(run cleanup-worker migrate, or as a DBA: {p.repair})"
        for p in report.index_problems
    ]
    return "\n".join(parts + _suspected_routes(report))


def _attachment_counts(report: Status) -> str:
    """``done~1,999,000`` marks the planner's estimate (the history of a large table)."""
    shown = [
        f"{key}~{n:,}" if key in report.attachments_estimated else f"{key}={n}"
        for key, n in sorted(report.attachments.items())
    ]
    note = (
        " (~: estimated on a large table; rows whose cleanup never started are not counted:"
        " `reconcile` finds their files)"
        if report.attachments_estimated
        else ""
    )
    return f"Attachments by cleanup_status{note}: " + (", ".join(shown) or "none")


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


# Dead letters hold whatever a producer wrote, including what the worker refused to parse
# (100k-deep nesting, megabytes). Only a small, shallow JSON payload is shown as JSON; anything
# else is shown as text, cut at this many characters.
MAX_PAYLOAD_CHARS_SHOWN = 2000
MAX_PAYLOAD_BYTES_PARSED = 64 * 1024
MAX_PAYLOAD_DEPTH_PARSED = 64


def dead_letter_json(row: DeadLetter) -> dict[str, Any]:
    data = {k: v for k, v in vars(row).items() if k != "payload"}
    data["payload"] = shown_payload(row.payload)
    return data


def shown_payload(payload: bytes) -> object:
    """The payload as JSON when it is small and shallow enough to parse safely, else as text."""
    text = payload.decode("utf-8", errors="replace")
    if len(payload) <= MAX_PAYLOAD_BYTES_PARSED and _json_depth(text) <= MAX_PAYLOAD_DEPTH_PARSED:
        try:
            return json.loads(text)
        except ValueError:
            pass
    if len(text) <= MAX_PAYLOAD_CHARS_SHOWN:
        return text
    return f"{text[:MAX_PAYLOAD_CHARS_SHOWN]}... [{len(payload)} bytes, truncated]"


def _json_depth(text: str) -> int:
    """Deepest bracket nesting outside strings; stops counting past the parse limit."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_PAYLOAD_DEPTH_PARSED:
                break
        elif char in "]}":
            depth -= 1
    return deepest


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


def repair_report(report: RepairReport) -> str:
    """What `retry-failed` put back into work, and what no fix unblocks."""
    lines = [
        f"reset {report.attachments_reset} failed attachment(s); enqueued "
        f"{report.chat_messages} chat and {report.attachment_messages} attachment "
        "cleanup message(s)",
        f"dead letters: replayed {report.dead_letters_replayed} whose cleanup is unfinished, "
        f"resolved {report.dead_letters_resolved} whose cleanup is already finished",
    ]
    if report.dead_letters_left:
        lines.append(
            f"left {report.dead_letters_left} pending dead letter(s) that no fix unblocks "
            "(invalid payload, or a row that is live or disagrees): inspect with "
            "`cleanup-worker dead-letters list`, then `dead-letters discard --id N`"
        )
    lines.append("next: cleanup-worker drain --until-empty (or let the running workers do it)")
    return "\n".join(lines)


def drain_summary(summary: DrainSummary) -> str:
    rows = [[queue, s.done, s.retried, s.dead_lettered] for queue, s in summary.queues.items()]
    lines = [
        table(["queue", "done", "retried", "dead_lettered"], rows),
        f"attachments that reached terminal failure in this pass: {summary.attachments_failed}",
        f"left: {summary.remaining_messages} outbox messages unprocessed, "
        f"{summary.remaining_retries} parked for retry"
        + (" (stopped at --max-seconds)" if summary.timed_out else ""),
    ]
    if summary.dead_letters_resolved:
        lines.append(
            f"resolved {summary.dead_letters_resolved} older dead letter(s) whose cleanup is "
            "now finished"
        )
    lines.append(f"took {summary.seconds:.1f}s")
    if not summary.clean:
        lines.append("inspect: cleanup-worker status; cleanup-worker dead-letters list")
    return "\n".join(lines)


def progress_line(p: DrainProgressState) -> str:
    """One plain line: done of total (counted up front), rate, ETA, what waits for a retry."""
    rate = "-" if p.per_second is None else f"{p.per_second:.1f}/s"
    eta = "-" if p.eta_seconds is None else _duration(p.eta_seconds)
    percent = 100 * p.finished // p.total if p.total else 100
    line = (
        f"{p.finished}/{p.total} messages ({percent}%)  {rate}  ETA {eta}  "
        f"elapsed {_duration(p.elapsed_seconds)}"
    )
    if p.retries_left:
        line += f"  {p.retries_left} parked for retry"
    return line


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


class DrainProgress:
    """Progress of a drain on stderr.

    On a terminal: one line redrawn in place with a bar. Elsewhere (a pipe, a CI log, a
    Kubernetes job): a plain line every ``every_seconds`` and a last one at the end, so a log
    shows the pass is alive. ``enabled=False`` (``--json``): nothing.
    """

    def __init__(self, *, enabled: bool, tty: bool | None = None, every_seconds: float = 5.0):
        self._enabled = enabled
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._every = every_seconds
        self._last_line = float("-inf")
        self._latest: DrainProgressState | None = None
        self._drawn = False

    def __enter__(self) -> DrainProgress:
        return self

    def note(self, text: str) -> None:
        """A step before the work starts (so the screen is never blank)."""
        if self._enabled:
            click.echo(f"{text}", err=True)

    def update(self, state: DrainProgressState) -> None:
        if not self._enabled:
            return
        self._latest = state
        if self._tty:
            self._draw(state)
        elif time.monotonic() - self._last_line >= self._every:
            self._last_line = time.monotonic()
            click.echo(f"draining: {progress_line(state)}", err=True)

    def _draw(self, state: DrainProgressState) -> None:
        width = 24
        filled = width * state.finished // state.total if state.total else width
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r\x1b[2Kdraining [{bar}] {progress_line(state)}")
        sys.stderr.flush()
        self._drawn = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._enabled or self._latest is None:
            return
        if self._tty:
            if self._drawn:
                sys.stderr.write("\n")
                sys.stderr.flush()
        elif exc_type is None:
            click.echo(f"drained: {progress_line(self._latest)}", err=True)


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
