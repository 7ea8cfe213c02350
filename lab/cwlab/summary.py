"""The demo's result for a person (``cleanup-worker demo``) and for ``--json``.

The lab's, not the product's: only the demo command prints it. Tables are the product's own
(``worker.render.table``) so the demo reads like the other commands.
"""

from __future__ import annotations

from typing import Any

from worker.render import table

_ANSWER_LABELS = {
    "deleted_200": "deleted (200)",
    "deleted_204": "deleted (204)",
    "not_found_404": "already gone (404)",
    "rate_limited_429": "rate limited (429)",
    "unauthorized_401": "key rejected (401)",
    "connection_reset": "connection reset",
}
_FAULT_LABELS = {
    "rate_limited": "rate limit (429)",
    "server_error": "server error (503 x3)",
    "connection_reset": "connection reset (x2)",
}


def text(summary: dict[str, Any], *, dsn: str, keep: bool, stop_hint: str) -> str:
    """The demo's result for a person: what was seeded, what happened, per tenant, what is left
    and why, and what to try next."""
    world, drained = summary["world"], summary["drain"]
    queues = drained["queues"].values()
    faults = ", ".join(
        f"{n} {_FAULT_LABELS.get(kind, kind)}" for kind, n in world["faults_injected"].items()
    )
    answers = ", ".join(
        f"{n} {_ANSWER_LABELS.get(key, key.replace('_', ' '))}"
        for key, n in sorted(summary["provider_answers"].items(), key=lambda kv: -kv[1])
    )
    dead = summary["dead_letters"]
    stores = summary["vector_stores"]
    lines = [
        "",
        f"Seeded {world['chats']} chats for {len(summary['tenants'])} tenants: "
        f"{world['chats_deleted']} chats deleted whole, {world['attachments_deleted_alone']} "
        f"attachments deleted one by one, {world['poison_messages']} malformed messages.",
        f"Injected provider faults: {faults or 'none'}.",
        f"Drained in {summary['seconds']}s: {sum(q['done'] for q in queues)} messages done, "
        f"{sum(q['retried'] for q in queues)} deliveries retried later (backoff, Retry-After), "
        f"{sum(q['dead_lettered'] for q in queues)} dead-lettered.",
        "",
        "Per tenant (attachment rows of deleted chats and attachments):",
        table(
            ["tenant", "backend", "routing", "files deleted", "cleaned", "failed", "pending"],
            [
                [
                    t["name"],
                    t["backend"],
                    t["setup"],
                    t["files_deleted"],
                    t["attachments_done"],
                    t["attachments_failed"],
                    t["attachments_pending"],
                ]
                for t in summary["tenants"]
            ],
        ),
        "",
        f"Vector stores: {stores['deleted']} deleted, {stores['left']} left "
        "(a chat's store goes last, once none of its files is pending).",
        f"Provider answers: {answers}.",
        f"Dead letters pending: {dead['pending']}" + (", by reason:" if dead["by_reason"] else ""),
        *(f"  {d['count']:>4} x {d['reason'][:110]}" for d in dead["by_reason"][:8]),
        "",
        "Expected: umbrella's key is revoked, so its files stay failed or pending and its",
        "messages end as dead letters; the malformed messages are dead letters too. Every other",
        "tenant is fully cleaned despite the injected faults.",
        "",
    ]
    return "\n".join(lines + _next_steps(dsn=dsn, keep=keep, stop_hint=stop_hint))


def _next_steps(*, dsn: str, keep: bool, stop_hint: str) -> list[str]:
    if not keep:
        return [
            "Re-run with --keep to keep the database and try the operator's commands on it:",
            "status, dead-letters list, retry-failed --all (the repair after a fix).",
        ]
    target = f"cleanup-worker --dsn '{dsn}'"
    return [
        f"The database is still running: {dsn}",
        f"Inspect:  {target} status",
        f"          {target} dead-letters list",
        f"Repair:   {target} retry-failed --all   (once the cause is fixed)",
        *([f"Stop it:  {stop_hint}"] if stop_hint else []),
    ]


def as_json(summary: dict[str, Any], *, dsn: str, keep: bool, stop_hint: str) -> dict[str, Any]:
    """``demo --json``: the summary, plus where the database is when it was kept."""
    database: dict[str, Any] = {"kept_running": keep}
    if keep:
        database |= {"dsn": dsn, "stop_command": stop_hint or None}
    return summary | {"database": database}
