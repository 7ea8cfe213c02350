#!/usr/bin/env python3
"""Run the reliability scenarios (SPEC §11 under load and faults) and write docs/RELIABILITY.md.

    uv run python scripts/reliability.py                      # all of them, full size -> the doc
    uv run python scripts/reliability.py --size small         # the CI size (a few minutes)
    uv run python scripts/reliability.py --scenario 2 -s 4    # some of them: tables on stdout

The scenarios are the ones CI runs at their small size (tests/reliability/scenarios.py, one
implementation): real ``cleanup-worker run`` processes, a sandbox PostgreSQL started here
(``CLEANUP_WORKER_TEST_PG`` / ``CLEANUP_WORKER_TEST_DSN`` choose it as for the tests; the
database-restart scenario needs a restartable one: embedded or system), and a local
OpenAI-compatible server. Everything listens on 127.0.0.1 or a private unix socket.

The document is written only when every scenario ran (or with an explicit ``--output``);
a failed scenario is reported in it with its violations, never silently left out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The scenarios live with the tests (one implementation for CI and for the figures).
sys.path[0:0] = [str(REPO / "tests"), str(REPO)]

from pgbouncer import PgBouncerUnavailable, locate  # noqa: E402
from reliability import harness  # noqa: E402
from reliability.scenarios import SCENARIOS, SIZES, Result  # noqa: E402

from cwlab.postgres import start_postgres, stop_servers_on_sigterm  # noqa: E402

DOC = REPO / "docs" / "RELIABILITY.md"
COLUMNS = (
    "messages",
    "faults injected",
    "kills",
    "lost",
    "duplicates (repeat deletes)",
    "time to recover",
    "wall time",
)
# Figures already shown in the standard columns, or too bulky for the details list.
HIDDEN = {
    "messages",
    "faults_injected",
    "kills",
    "lost",
    "repeat_deletes",
    "recover",
    "wall_seconds",
    "categories",
    "fault_hits",
}


def command(size: str, number: int) -> str:
    return f"uv run python scripts/reliability.py --size {size} --scenario {number}"


def run_one(server: Any, number: int, size: str, workdir: Path) -> tuple[Result | None, str]:
    started = time.monotonic()
    try:
        result = asyncio.run(SCENARIOS[number](server, workdir, size))
    except Exception as exc:  # reported in the document, not hidden
        detail = str(exc) if isinstance(exc, AssertionError) else traceback.format_exc()
        print(
            f"scenario {number}: FAILED after {time.monotonic() - started:.0f}s\n{detail}",
            file=sys.stderr,
        )
        return None, detail
    print(
        f"scenario {number}: ok in {time.monotonic() - started:.0f}s, lost "
        f"{result.figures.get('lost')}",
        file=sys.stderr,
    )
    return result, ""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def scenario_section(number: int, size: str, result: Result | None, failure: str) -> str:
    fn = SCENARIOS[number]
    doc = " ".join((fn.__doc__ or "").split())
    title = result.title if result else fn.__name__
    lines = [f"### {number}. {title}", "", doc, ""]
    if result is None:
        lines += ["**FAILED**:", "", "```", failure.strip()[:4000], "```", ""]
    else:
        row = result.row()
        lines += [
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
            "| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |",
            "",
        ]
        details = {k: v for k, v in result.figures.items() if k not in HIDDEN}
        lines += ["<details><summary>all figures</summary>", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in details.items()]
        lines += ["", "</details>", ""]
        if "categories" in result.figures:
            lines += [
                "| payload category | n | handled as expected | example reason |",
                "|---|---|---|---|",
            ]
            for name, s in result.figures["categories"].items():
                known = " (known bug, see Findings)" if "known_bug" in s else ""
                lines.append(f"| {name}{known} | {s['n']} | {s['ok']} | {_cell(s['example'])} |")
            lines.append("")
        if "fault_hits" in result.figures:
            hits = ", ".join(f"{k} {v}" for k, v in result.figures["fault_hits"].items())
            lines += [f"Faulted requests by kind: {hits}.", ""]
    lines += [
        f"Reproduce: `{command(size, number)}` (CI size: "
        f"`uv run pytest tests/reliability -k {fn.__name__}`).",
        "",
    ]
    return "\n".join(lines)


def summary_table(size: str, results: dict[int, tuple[Result | None, str]]) -> str:
    lines = ["| # | scenario | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for number, (result, _) in sorted(results.items()):
        if result is None:
            lines.append(
                f"| {number} | {SCENARIOS[number].__name__} | **FAILED** |"
                + " |" * (len(COLUMNS) - 1)
            )
            continue
        row = result.row()
        lines.append(
            f"| {number} | {result.title} | " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |"
        )
    return "\n".join(lines)


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "worker", "sql"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" with uncommitted changes in worker/ or sql/" if dirty.strip() else "")


def pgbouncer_version() -> str:
    """The PgBouncer scenario 10 runs (tests/pgbouncer.py finds or fetches it)."""
    try:
        binary, env = locate()
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError, PgBouncerUnavailable) as exc:
        return f"unavailable ({exc})"
    return out.splitlines()[0].strip() + ", pool_mode = transaction"


def load_average() -> float:
    return os.getloadavg()[0]


def document(
    size: str,
    results: dict[int, tuple[Result | None, str]],
    seconds: float,
    server_kind: str,
    argv: list[str],
    load: str,
    note: str,
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = "\n".join(scenario_section(n, size, r, f) for n, (r, f) in sorted(results.items()))
    failed = [n for n, (r, _) in results.items() if r is None]
    status = (
        "every scenario passed"
        if not failed
        else f"**scenarios {failed} FAILED** (see their sections)"
    )
    return TEMPLATE.format(
        size=size,
        size_note=SIZE_NOTES[size],
        date=now,
        machine=harness.machine(),
        pgbouncer=pgbouncer_version(),
        load=load,
        note=f"\n{note}" if note else "",
        postgres=server_kind,
        revision=git_revision(),
        total=f"{seconds / 60:.1f} min",
        status=status,
        command=shlex.join(["uv", "run", "python", "scripts/reliability.py", *argv]),
        summary=summary_table(size, results),
        sections=sections,
    )


SIZE_NOTES = {
    "small": "the CI size (tests/reliability runs exactly these): hundreds of attachments",
    "medium": "between CI and full: about 1 500 attachments per scenario",
    "full": "thousands of attachments per scenario (about 5 000 in scenario 1)",
}

TEMPLATE = """\
# Reliability: SPEC §11 under load and faults

<!-- GENERATED by scripts/reliability.py: do not edit; re-run it instead. -->

Figures of the **{size}** size ({size_note}), produced on {date} by

    {command}

on {machine}, PostgreSQL: {postgres} (sandbox server, fsync off), PgBouncer: {pgbouncer},
worker revision {revision}. Load average (1 min) {load} on this
machine, which other jobs share: times (wall, recovery) and what load causes (client-side
timeouts, the retries and repeat deletes they explain) grow with it; counts of lost, misrouted
or leaked things do not.{note}
The whole run took {total}; {status}. "lost" must be 0 in every row.

{summary}

Columns: *messages* enqueued (producer flows plus generated payloads); *faults injected*;
*kills* (SIGKILL, SIGTERM or SIGSTOP of worker processes); *lost*: attachments not terminal +
provider resources of deleted chats still at the provider + vector-store rows left + messages
neither acked nor dead-lettered (deliberately broken tenants excepted: their debt must show
as failed rows and dead letters with reasons, and does); *duplicates*: DELETE requests for a
resource beyond its first, not counting requests an injected fault answered (a repeat can only
answer 404: the fake is stateful). A repeat needs a delete the provider carried out but the
worker never recorded: a process killed, frozen or interrupted between the answer and the
database write, a database outage at that moment, or a request the worker saw time out or
break (`worker_seen_timeouts` / `worker_seen_connection_errors` in the figures); without any
of these (scenario 1) there must be none. *time to recover* as the scenario defines it; *wall
time* from the backlog's appearance to the end of the drain (CLI runs and checks included).

## How it is proven

Every scenario runs real `cleanup-worker --log-format json --log-level debug run` processes
(their stdout and stderr captured) against one fresh database and the local provider, seeds
its backlog through the chat service's own flows (`worker.producer`: soft-delete + enqueue in
one transaction; the whole backlog commits at once, after the replicas are up), waits until
nothing is outstanding (no incoming row, every cursor at its partition's end, no parked retry,
no pending attachment), then checks, never trusting the workers' own account:

* **nothing lost**, from the database and the fake's state: every attachment of a deleted chat
  (and every one deleted alone) is `done` or, only where failure was deliberate, `failed`;
  every vector-store row of a deleted chat is gone; every provider file and vector store of
  those chats is gone at the fake; the sum of the cursors equals the number of messages
  enqueued and no retry row is left (each message was acked Ok or dead-lettered), and every
  dead letter has a reason; attachments, files and vector stores of live chats are untouched.
* **duplicates** from the fake's request log (see the columns above).
* **no partition held twice at once.** Sampling `modkit_outbox_processor` cannot show it: the
  row has one `locked_by` at any instant. Instead, test-only AFTER triggers copy every change
  of a partition lease and of a parked message's row lease into an audit table, stamped with
  `clock_timestamp()`; row locks serialise the changes of one row, so the audit order is the
  commit order. Two checks follow: (1) every change of holder took a lease that was free or
  expired at that instant (a live lease taken over would be a violation); (2) every
  `message_handled` log line of worker W for message (partition, seq) at time t falls where
  the audit says W held that partition's lease, or that parked message's row lease, unexpired,
  at t. A batch is read after its lease commits and acked before it is released, so a line
  outside W's lease means W handled a message it did not own. Lines written after W's lease
  was taken over are counted apart (`stale_handling`; only expected when a process froze or
  the database went away past the lease) and their acks must fail (they do: nothing is lost
  and the metric `mini_chat_outbox_lease_lost_total` counts them). `locked_by` is the worker
  id plus a fencing token per acquisition; the audit compares holders by worker id, so a
  worker that leases a partition again after losing it (scenario 11) is the same holder.
* **cursors only move forward**: every cursor change in the audit has `new_seq ≥ old_seq`
  (scenario 11 also samples every cursor from outside every 0.2 s).
* **tenant routing**, from the request log: every request for a resource carries its owning
  tenant's key and path prefix (eight tenants: shared OpenAI, own OpenAI base URL and key,
  shared Azure, own Azure endpoint and key), and every request at all goes to an endpoint
  that belongs to the key it carries (crafted ids such as `../../own-oa-1/v1/files/x` stay put).
* **secrets**: the DSN password (a role created with it) and every API key are recognisable
  random strings, most not shaped like `sk-…`, so only the worker's registry of runtime
  secrets can mask them. None may appear, raw, URL-encoded or in part, in any log line of any
  process, `/metrics`, probe bodies, CLI output (including a DSN error), dead-letter reasons
  or the rows' `last_cleanup_error`.
* every stderr line is one JSON object, and no loop or handler crashed (except where a known
  bug is pinned, see Findings).

## Scenarios

{sections}
## Findings

Bugs these scenarios found. Each is pinned by a regression test that failed until the fix
(1-7 and 9 in `tests/reliability/test_findings.py`, whose docstrings have the analysis; 8 in
`tests/outbox/test_leases.py`); all nine are fixed in the revision measured above (7 came
with the first fix of 5; the first fix of 2 was incomplete and was replaced by fencing tokens,
see 2). Scenarios 10-12 (PgBouncer, lease ping-pong, poison pills) and the truthfulness checks
of 3 and 9 were added with SPEC §13, after the defects §13 was written for had been reproduced
and fixed by the unit and engine tests; scenario 12 found one more (9). Scenario 10 was checked
against the defect it guards: with psycopg's prepared statements switched back on
(`prepare_threshold` 0) every loop of every replica crashes at its first statement
(`loop_crashed`) and nothing drains.
Before fixes 1 and 2, full runs failed scenarios 1, 3, 5 or 8
intermittently, with the evidence the checks print: a partition leased and kept alive for
90 s with its cursor still, or a message handled without a lease.

1. **A lease heartbeat that swallows its cancellation wedges a partition for ever**
   (`worker/outbox/leases.py`). On Python 3.11 (the image's Python) psycopg_pool waits for a
   connection with `asyncio.wait_for`, which swallows a cancellation arriving in the same loop
   iteration as the connection (CPython gh-86296, fixed in 3.12). When a batch ends while its
   heartbeat waits for a pooled connection, `heartbeat()` cancels the task and awaits it; the
   task never sees the cancel, keeps extending the lease every lease/3 s, and the lane waits
   for ever: the partition is stuck until the process dies (SIGTERM then needs the full ack
   grace). Seen in a plain 6-replica drain (scenario 1, full size: a chat partition leased
   and extended for 5 minutes with its cursor at 10 of 147), under the bad-input flood and
   around a database restart. Fix: stop the heartbeat with a flag it checks after every await
   (`if self._stopped or asyncio.current_task().cancelling(): return`), set by `heartbeat()`
   before it cancels, and bound the final wait (`await asyncio.wait({{task}}, timeout=…)`);
   consider Python 3.12 for the image (the same swallow can defeat the handler budget and the
   shutdown interruption, which also rely on cancelling tasks that wait for the pool).
2. **A stale batch acks under the same worker's newer lease** (`sql/queries/outbox.sql`
   `advance_cursor` / `extend_leases`, `worker/outbox/processor.py`). The guard is
   `locked_by = <worker id>` and the id is per process. When one lane's batch outlives its
   lease (no heartbeat through a database outage, an ack waiting for a connection), another
   lane of the same process can lease the partition again (its own expired lease qualifies)
   and start the same messages; the first lane's ack still passes the guard, moves the cursor
   (possibly back), parks its retries and releases the lease the second lane works under. Two
   batches of one partition then run at once and the parked copies go to other replicas while
   the second lane still handles them. Seen in scenario 3; nothing is lost (handlers are
   idempotent) but messages are handled concurrently and twice. The first fix guarded acks and
   heartbeats on `(locked_by, attempts)`; but `advance_cursor` reset `attempts` and
   `release_lease` decremented it, so after expiry → takeover → the same worker leasing again,
   an old acquisition's ack still matched: the cursor moved backwards, the live lease was
   released under its holder and dead letters were written for messages already acked Ok.
   Fix (SPEC §13): a fencing token per acquisition (`locked_by` = worker id + a UUID) that
   heartbeats, releases and acks must match, an ack that moves the cursor only forward from
   the position its lease read, and at most one dead letter per message. Scenario 11 bounces
   partitions between two replicas frozen in turn and checks every cursor change.
3. **Deeply nested JSON and 4 300+-digit numbers escape the payload parser**
   (`worker/handlers/payloads.py`, `_json_object`): `json.loads` raises `RecursionError` /
   `ValueError`, not `JSONDecodeError`; the handler crashes (a traceback per delivery), the
   message is retried as `handler_error` until max_deliveries and dead-lettered as
   "handler_error: RecursionError". Fix: also catch `RecursionError` and `ValueError` there and
   raise `InvalidPayload("payload is not valid JSON: …")`.
4. **A lone surrogate in `provider_file_id`** (`"\\ud800"` is valid JSON) passes `_text`, then
   the SDK's URL quoting raises `UnicodeEncodeError` inside the gateway: same crash-and-retry
   path. Fix: in `_text`, reject values that do not encode as UTF-8 (`value.encode("utf-8")`
   in a try) with `InvalidPayload(f"{{field}}: not valid Unicode text")`.
5. **Attempts are burnt by calls that were never sent** (`worker/handlers/files.py`,
   `_record`): a `Transient` the gateway produced without sending anything (route paused by a
   429's Retry-After, route slots busy past the call budget, circuit open or half-open with
   its probe in flight, no routing) is recorded as a failed attempt. Every delivery of a chat
   adds one to each pending file, so a tenant rate-limited across a few deliveries, or an
   upstream that recovers while the breaker is half-open, ends with files `failed` (terminal,
   leaked until `retry-failed`) that were never sent once. Scenario 4 avoids it only by giving
   each route 1 000 slots. Fix: let the gateway mark results it did not send (it already
   tracks `sent`), and in `_record` return `StillPending` for those without
   `record_cleanup_attempt`.
6. **The log redactor was quadratic in a token's length** (`worker/observability/logging.py`,
   the first `_PATTERNS` regex starts with an unanchored `[\\w-]*`): 8 000 characters take
   seconds, 60 000 minutes, with the event loop blocked (no heartbeats). No value logged today
   carries such a token (reasons are truncated), so this is latent. Fix: anchor the pattern
   (`(?<![\\w-])[\\w-]*(?:authorization|…)`) or cap the text length before redacting.

7. **A call that sent a request and then had its in-call retry refused reads as "not sent"**
   (`worker/providers/gateway.py`, `_guarded_call`). The fix of 5 marks gateway-made results
   `sent=False`; `_guarded_call` tracks whether any attempt was sent but returns the last
   attempt's result. A request that timed out, followed by a retry the route's own limiter
   refused (slots busy past the budget; in scenario 4 the 429-adaptive rate limit), comes back
   as `Transient(rate_limited, "all N slots busy", sent=False)`: the failed request is not an
   attempt, and the reason hides the timeout. Fix: when `sent` is True and the final result is
   `Transient(sent=False)`, return the last *sent* attempt's result instead.

8. **A busy replica lost leases it was working under** (`worker/outbox/engine.py`,
   `worker/runtime/app.py`). Heartbeats and acks took connections from the handlers' pool
   (`database.pool_max_size`, 10) and queued behind up to `outbox.concurrency` handlers; with
   the 2 cores also starved (load average 5-7 during full runs) an extension now and then
   waited past a 5 s lease, another replica took the partition over and delivered its batch a
   second time (nothing lost: the stale ack fails; but repeat DELETEs without any crash, seen
   in scenarios 1 and 5 at full size). Fix: lease upkeep (heartbeats, acks, releases) runs on
   a pool of its own, 2 connections per replica. Pinned by
   `tests/outbox/test_leases.py::test_handlers_holding_every_pooled_connection_do_not_starve_the_heartbeat`,
   whose control case on the shared pool loses the lease. Since §13 a lease that is lost all
   the same costs less: it is no delivery (a message's delivery number grows only when an
   outcome was stored, or a handling of it outlived its lease: killed, or frozen past the
   lease, which the database cannot tell apart), so churn can no longer dead-letter a healthy
   message for "max deliveries" (scenario 11: through dozens of takeovers no delivery number
   grew without a retry outcome or such a handling); the batch after an unacked lease is
   handled one message at a time (slower, only then); and the upkeep statements are single
   transactions without session state, so the 2 connections work unchanged through PgBouncer
   in transaction mode (scenario 10).

9. **A healthy message dead-lettered as a poison pill** (`worker/outbox/isolation.py`
   `run_alone`, `worker/outbox/engine.py`). Isolation handles a suspect batch one message at a
   time, recording each as started before its handler runs and as finished after; a start
   without a finish is a death that message caused. But "one at a time" held per lane: the
   suspect batches of two partitions (a replica that died held several leases, and one
   successor takes them over together) ran their messages at once in one process, so a pill's
   death was charged to the other message as well. Seen in scenario 12 at full size (3 pills,
   replicas restarted after every death): a chat-cleanup message was dead-lettered as
   "handling it killed the worker process 3 times" and its chat was never cleaned up. Fix: one
   lock per process (`Engine._alone`) that every suspect handling holds. What remains: a
   trusted message of a normal batch can still kill the process while a suspect one runs; a
   pill does that only on its first delivery (its batch is suspect afterwards), so each pill
   can charge a healthy suspect message at most once, below `max_handler_crashes` (3) unless
   three pills' first deliveries meet the same message. Pinned by
   `test_suspect_messages_of_one_process_are_handled_one_at_a_time_across_partitions`.

Observations (not bugs):

* A slow provider alone cannot make a lease expire: the heartbeat extends it every lease/3
  and a call is bounded below lease/2 by a config rule; scenario 8 freezes a replica instead.
* A handler's time budget is `lease_seconds`. With 5 s and a provider timing out, a chat with
  more files than `file_concurrency` is cut every delivery (it still converges); a call the
  budget cancels is neither a recorded attempt nor a `provider_requests_total` sample, and a
  write committed just before the cancel can miss its counter (seen in scenario 4 at full
  size with a 5 s lease, hence its 15 s lease).
* A kill -9 between a provider's answer and the database write repeats that DELETE after the
  takeover; the provider answers 404 and the file counts as deleted (scenario 2's repeats).
* A lost lease repeats work the same way: the frozen holder's handlers finish what they were
  doing (their writes are compare-and-set on the row, so each file is recorded once), its ack
  is refused by the fencing token, and the new holder delivers the batch again, alone and
  marked `redelivered`, on the same delivery number; deletes the old holder had carried out
  answer 404 (scenarios 8 and 11's repeats, and `first_deliveries_handled_twice` stays 0). A
  connection cut mid-transaction (scenario 10: server connections terminated, PgBouncer
  killed) does the same to the statement it interrupted.
* A poison pill costs one lease expiry per death (the killed replica's lease must run out
  before anyone handles that partition again): about `(1 + max_handler_crashes) x
  lease_seconds` before it is dead-lettered, during which the rest of its partition waits and
  the other partitions flow (scenario 12).
* Recovery after a database outage grows with the outage (each loop backs off 1, 2, 4 … 30 s;
  the first statement that completes wakes the other loops, at most once a second), and a
  loop that only waited for a pool connection through a short outage logs nothing.
* Route suspicion (SPEC §13) and ghosts: thousands of messages for files that never existed,
  on one route, are what a wrong key or project looks like (more than 10 distinct not-founds
  in a row without a success). At full size scenario 5's 5 000 generated payloads made the
  shared route suspected and 256 "already gone" messages were retried as `config` and
  dead-lettered after `max_deliveries`, as the rule intends (a page, not rows marked done).
  Scenario 5 is about the payload parser, so it raises
  `providers.route_suspicion.not_found_threshold`; the rule has its own tests.
* Outage truthfulness (scenarios 3 and 9): every look at a replica whose last database event
  is `database_unavailable` found `mini_chat_worker_database_up` 0 and `/readyz` 503 naming the
  cause (`/healthz` stays 200: a restart would not help), no replica logged
  `database_recovered` before the database was back, and the causes logged are the server's
  own words (connection refused or closed, administrator command, read-only transaction).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument(
        "--scenario",
        "-s",
        type=int,
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"write the document here (default {DOC.relative_to(REPO)} when every scenario runs)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    parser.add_argument(
        "--note", default="", help="a sentence for the machine paragraph (e.g. other load)"
    )
    args = parser.parse_args(argv)
    numbers = sorted(set(args.scenario or SCENARIOS))
    results: dict[int, tuple[Result | None, str]] = {}
    started = time.monotonic()
    stop_servers_on_sigterm()  # this script owns its signals: SIGTERM stops its server too
    loads = [load_average()]
    with start_postgres() as server, tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        kind = f"{server.kind}, server {server.server_version_num // 10000}"
        for number in numbers:
            workdir = Path(tmp) / f"s{number}"
            workdir.mkdir()
            results[number] = run_one(server, number, args.size, workdir)
            loads.append(load_average())
    seconds = time.monotonic() - started
    print(summary_table(args.size, results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {n: (r.figures if r else {"failed": f}) for n, (r, f) in results.items()},
                indent=2,
                default=str,
            )
        )
    output = args.output or (DOC if len(numbers) == len(SCENARIOS) else None)
    if output is not None:
        raw = sys.argv[1:] if argv is None else argv
        load = (
            f"{loads[0]:.1f} at the start, {max(loads):.1f} at most between scenarios,"
            f" {loads[-1]:.1f} at the end"
        )
        output.write_text(document(args.size, results, seconds, kind, raw, load, args.note))
        print(f"wrote {output} ({platform.node()}, {seconds / 60:.1f} min)", file=sys.stderr)
    return 0 if all(r is not None for r, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
