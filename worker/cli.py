"""`cleanup-worker` (also `python -m worker`): thin click commands over the runtime.

Each command parses options, loads the configuration, builds what it needs and runs one
coroutine. ``main`` is the one place errors become a single stderr line and an exit code:
0 ok, 1 work failed (drain produced terminal failures or dead letters), 2 usage or
configuration, 3 database unreachable.

Over 400 lines because every command's options and help (examples, exit codes) live here, in
one place a reader scans; the command bodies stay a few lines over ``worker.runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click

from worker import __version__, render
from worker.config import LOG_LEVELS, Config, load_config, redact_passwords
from worker.db import Conn, check_reachable, open_connection
from worker.errors import (
    CleanupWorkerError,
    ConfigError,
    DatabaseUnavailable,
    OutboxError,
    ProducerError,
    SchemaError,
    UsageError,
)
from worker.observability.logging import configure_logging
from worker.outbox import dead_letters as dl
from worker.runtime.checks import check_config
from worker.runtime.migrate import migrate as apply_migrations
from worker.runtime.repair import retry_failed as run_retry_failed
from worker.runtime.secrets import register_secrets
from worker.runtime.status import read_status

if TYPE_CHECKING:
    from worker.runtime.reconcile import ReconcileOptions

T = TypeVar("T")
EXIT_FAILED, EXIT_USAGE, EXIT_DATABASE = 1, 2, 3


@dataclass
class Globals:
    config_path: Path | None
    dsn: str | None
    log_format: str | None
    log_level: str | None
    dsn_from_env: bool = False

    def load(self) -> Config:
        dsn = None if self.dsn_from_env else self.dsn
        config = load_config(self.config_path, environ=os.environ, dsn=dsn)
        register_secrets(config, dict(os.environ))  # before anything can print or log
        obs = config.observability
        configure_logging(
            log_format=self.log_format or obs.log_format,  # type: ignore[arg-type]
            level=self.log_level or obs.log_level,
        )
        return config


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _queue_names(config: Config) -> list[str]:
    return [config.outbox.attachment_queue.name, config.outbox.chat_queue.name]


def _epilog(*examples: str, codes: str) -> str:
    """The end of every command's --help: examples, then the exit codes (\b: keep lines)."""
    shown = "\n".join(f"  {example}" for example in examples)
    return f"\b\nExamples:\n{shown}\n\n\b\nExit codes: {codes}."


CODES_DB = "0 done, 2 usage or configuration error, 3 database unreachable"


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_epilog(
        "cleanup-worker demo",
        "cleanup-worker --config /etc/cleanup-worker/config.yaml check-config",
        "cleanup-worker drain --help",
        codes="0 ok, 1 work failed (drain: terminal failures or dead letters), 2 usage or "
        "configuration error, 3 database unreachable, 130 interrupted",
    ),
)
@click.option(
    "--config",
    "config_path",
    envvar="CLEANUP_WORKER_CONFIG",
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML configuration file (env CLEANUP_WORKER_CONFIG).",
)
@click.option(
    "--dsn",
    envvar="CLEANUP_WORKER_DSN",
    metavar="DSN",
    help="PostgreSQL DSN; overrides database.dsn (env CLEANUP_WORKER_DSN); migrate uses "
    "database.migrate_dsn when that is set.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "console", "auto"]),
    help="Log format; auto = console on a terminal, JSON otherwise.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Least severe log level written (default: observability.log_level, info).",
)
@click.version_option(__version__, prog_name="cleanup-worker")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    dsn: str | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Deletes provider files and vector stores of deleted chats and attachments.

    Reads the chat service's transactional outbox in PostgreSQL. Every key of the
    configuration can be overridden with CLEANUP_WORKER__SECTION__KEY. Run a command with
    --help for its options.
    """
    # Values click took from CLEANUP_WORKER_CONFIG / CLEANUP_WORKER_DSN are left to load_config,
    # which reads the same variables and names them (not "--dsn") as the source of a bad value.
    from_env = click.core.ParameterSource.ENVIRONMENT
    if ctx.get_parameter_source("config_path") is from_env:
        config_path = None
    dsn_from_env = ctx.get_parameter_source("dsn") is from_env
    ctx.obj = Globals(config_path, dsn, log_format, log_level, dsn_from_env)


@cli.command(
    epilog=_epilog(
        "cleanup-worker --config config.yaml migrate",
        "cleanup-worker --dsn postgresql://app@db/chat migrate --with-app-schema",
        codes="0 applied (or nothing new), 2 configuration error or a queue registered with "
        "another partition count, 3 database unreachable",
    )
)
@click.option(
    "--with-app-schema",
    is_flag=True,
    help="Also create the chat-service tables (tests, demo, new installs).",
)
@click.option(
    "--skip-app-indexes",
    is_flag=True,
    help="Do not build the indexes the worker needs on the chat-service tables (by default "
    "built with CREATE INDEX CONCURRENTLY); a DBA creates them instead, and check-config and "
    "status name any that is missing (docs/deploy.md).",
)
@click.pass_obj
def migrate(g: Globals, with_app_schema: bool, skip_app_indexes: bool) -> None:
    """Apply sql/ and register the queues (idempotent; safe from many replicas at once)."""
    config = g.load()
    db = config.database
    key = "database.migrate_dsn" if db.migrate_dsn else "database.dsn"
    hint = "migrate needs a role that may create tables: set database.migrate_dsn (docs/deploy.md)"

    async def go() -> None:
        dsn = db.migrate_dsn or db.dsn
        async with open_connection(dsn, key=key, missing_privilege_hint=hint) as conn:
            report = await apply_migrations(
                conn,
                queues=config.outbox.queue_configs,
                with_app_schema=with_app_schema,
                build_app_indexes=not skip_app_indexes,
            )
        applied = ", ".join(report.applied) or "nothing new"
        if skip_app_indexes:
            indexes = "skipped (check-config lists any missing)"
        else:
            indexes = f"built {', '.join(report.indexes)}" if report.indexes else "all present"
        if report.left_to_owner:
            indexes += (
                f"; not built, this role does not own their table: "
                f"{', '.join(report.left_to_owner)} (check-config lists the statements)"
            )
        click.echo(
            f"migrated: applied {applied}; queues {', '.join(report.queues)}; "
            f"chat-service indexes: {indexes}"
        )

    _run(go())


@cli.command(
    epilog=_epilog(
        "cleanup-worker --config /etc/cleanup-worker/config.yaml run",
        codes="0 stopped cleanly after SIGTERM/SIGINT, 1 a loop crashed (a bug: restart it), "
        "2 configuration error (also: no provider backend configured). A database outage is "
        "waited out, never an exit",
    )
)
@click.pass_obj
def run(g: Globals) -> int:
    """Run the worker until SIGTERM/SIGINT (metrics, /healthz and /readyz on the HTTP port).

    Refuses to start with a configuration that could not delete anything (no provider
    backend); `check-config` says the same without starting.
    """
    config = g.load()
    if not config.providers.backends:
        raise ConfigError(
            "providers.backends: none configured, so nothing could be deleted: add one "
            "(see config.example.yaml) and check it with `cleanup-worker check-config`"
        )

    async def go() -> int:
        # Refused credentials stop it at once (exit 2); an unreachable database does not: the
        # daemon starts, reports not-ready and waits for it.
        with contextlib.suppress(DatabaseUnavailable):
            await check_reachable(config.database.dsn, timeout_seconds=5)
        from worker.runtime.app import open_app  # loads the provider SDK: only when needed
        from worker.runtime.daemon import Daemon

        async with open_app(config, environ=dict(os.environ)) as app:
            return await Daemon(app).run()

    return _run(go())


@cli.command(
    epilog=_epilog(
        "cleanup-worker drain",
        "cleanup-worker drain --until-empty --max-seconds 900",
        "cleanup-worker drain --queue mini-chat.chat_cleanup --json",
        codes="0 clean, 1 this pass produced terminal failures or dead letters, 2 usage or "
        "configuration error, 3 database unreachable",
    )
)
@click.option(
    "--queue",
    "queue_names",
    multiple=True,
    metavar="Q",
    help="Only this queue (repeatable); default both.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this long even if work is left.",
)
@click.option(
    "--until-empty",
    is_flag=True,
    help="Also wait for parked retries until none is left (bound it with --max-seconds).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def drain(
    g: Globals,
    queue_names: tuple[str, ...],
    max_seconds: float | None,
    until_empty: bool,
    as_json: bool,
) -> int:
    """Process everything due once, then exit; print what was done, retried and dead-lettered.

    Progress goes to stderr: a bar on a terminal, a plain line every 5 s otherwise (none with
    --json). "Messages" are outbox messages, not attachment rows.
    """
    config = g.load()
    known = _queue_names(config)
    unknown = [name for name in queue_names if name not in known]
    if unknown:
        raise UsageError(f"unknown queue {unknown[0]!r}: configured queues are {', '.join(known)}")
    queues = list(queue_names) or known

    async def go() -> int:
        await check_reachable(config.database.dsn)  # unreachable: exit 3 at once
        from worker.runtime.app import open_app  # loads the provider SDK: only when needed
        from worker.runtime.drain import drain as run_drain

        async with open_app(config, environ=dict(os.environ)) as app:
            with render.DrainProgress(enabled=not as_json) as progress:
                summary = await run_drain(
                    app,
                    queues=queues,
                    max_seconds=max_seconds,
                    until_empty=until_empty,
                    progress=progress.update,
                )
        if as_json:
            _emit_json(summary.as_json())
        else:
            click.echo(render.drain_summary(summary))
        return 0 if summary.clean else EXIT_FAILED

    return _run(go())


@cli.command(
    epilog=_epilog(
        "cleanup-worker status", "cleanup-worker status --json | jq .top_tenants", codes=CODES_DB
    )
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(g: Globals, as_json: bool) -> None:
    """What is left to do: outbox messages per queue and partition (oldest age, lease holder
    and expiry), parked retries, dead letters, attachment rows by cleanup_status, vector
    stores of deleted chats, and the tenants with the most cleanup left."""
    config = g.load()

    async def go() -> None:
        async with open_connection(config.database.dsn) as conn:
            report = await read_status(
                conn, _queue_names(config), all_attachments=True, with_indexes=True
            )
        click.echo(
            json.dumps(report.as_json(), indent=2, sort_keys=True, default=str)
            if as_json
            else render.status(report)
        )

    _run(go())


@cli.group(
    "dead-letters",
    epilog=_epilog(
        "cleanup-worker dead-letters list",
        "cleanup-worker dead-letters discard --id 42",
        codes=CODES_DB + " (also: an --id that names no open dead letter)",
    ),
)
def dead_letters() -> None:
    """Inspect and repair messages that could not be processed."""


@dead_letters.command(
    "list",
    epilog=_epilog(
        "cleanup-worker dead-letters list",
        "cleanup-worker dead-letters list --status resolved --queue mini-chat.chat_cleanup",
        "cleanup-worker dead-letters list --id 42 --json",
        codes=CODES_DB,
    ),
)
@click.option("--queue", metavar="Q", help="Only this queue.")
@click.option(
    "--status",
    type=click.Choice(dl.STATUSES),
    default="pending",
    show_default=True,
    help="Only dead letters in this state.",
)
@click.option("--id", "ids", type=int, multiple=True, help="Dead letter id (repeatable).")
@click.option(
    "--limit",
    type=click.IntRange(1, 100000),
    default=100,
    show_default=True,
    help="At most this many, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (payload too).")
@click.pass_obj
def dl_list(
    g: Globals, queue: str | None, status: str, ids: tuple[int, ...], limit: int, as_json: bool
) -> None:
    """List dead letters (newest first)."""
    config = g.load()

    async def go() -> None:
        async with open_connection(config.database.dsn) as conn:
            rows = await dl.list_dead_letters(conn, dl.Filter(queue, status, ids, limit))
        if as_json:
            _emit_json([render.dead_letter_json(row) for row in rows])
        else:
            click.echo(render.dead_letters(rows))

    _run(go())


def _require_scope(queue: str | None, ids: tuple[int, ...], all_: bool) -> None:
    if not (queue or ids or all_):
        raise UsageError("say which dead letters: --id N, --queue Q, or --all")


async def _require_open_ids(conn: Conn, ids: tuple[int, ...]) -> None:
    """An --id that names no dead letter, or one already closed, is a mistake to report, not
    "0 done": the operator may have mistyped it or looked at another database."""
    if not ids:
        return
    found = await dl.list_dead_letters(conn, dl.Filter(ids=ids, limit=len(ids)))
    status = {row.id: row.status for row in found}
    unknown = sorted(set(ids) - set(status))
    if unknown:
        raise UsageError(
            f"no dead letter with id {', '.join(map(str, unknown))}: "
            "see `cleanup-worker dead-letters list --status pending`"
        )
    closed = sorted(i for i, s in status.items() if s in ("resolved", "discarded"))
    if closed:
        raise UsageError(
            f"dead letter {closed[0]} is already {status[closed[0]]}: only pending ones can be "
            "replayed or discarded"
        )


@dead_letters.command(
    "replay",
    epilog=_epilog(
        "cleanup-worker dead-letters replay --id 42",
        "cleanup-worker dead-letters replay --queue mini-chat.chat_cleanup",
        codes=CODES_DB + " (also: an --id that names no open dead letter)",
    ),
)
@click.option("--queue", metavar="Q", help="The pending dead letters of this queue.")
@click.option("--id", "ids", type=int, multiple=True, help="Dead letter id (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Every pending dead letter.")
@click.option(
    "--limit",
    type=click.IntRange(1, 100000),
    default=1000,
    show_default=True,
    help="At most this many in one run.",
)
@click.pass_obj
def dl_replay(g: Globals, queue: str | None, ids: tuple[int, ...], all_: bool, limit: int) -> None:
    """Re-enqueue pending dead letters; they end 'resolved' once processed.

    After fixing a cause, prefer `retry-failed --all`: it replays only the dead letters whose
    cleanup is unfinished and also resets failed rows.
    """
    _require_scope(queue, ids, all_)
    config = g.load()

    async def go() -> None:
        async with open_connection(config.database.dsn) as conn:
            await _require_open_ids(conn, ids)
            done = await dl.replay(conn, dl.Filter(queue, None, ids, limit))
        click.echo(f"replayed {len(done)} dead letter(s){render.id_list(done)}")

    _run(go())


@dead_letters.command(
    "discard",
    epilog=_epilog(
        "cleanup-worker dead-letters discard --id 42 --id 43",
        codes=CODES_DB + " (also: an --id that names no open dead letter)",
    ),
)
@click.option("--queue", metavar="Q", help="The pending dead letters of this queue.")
@click.option("--id", "ids", type=int, multiple=True, help="Dead letter id (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Every pending dead letter.")
@click.pass_obj
def dl_discard(g: Globals, queue: str | None, ids: tuple[int, ...], all_: bool) -> None:
    """Give up on pending dead letters (status 'discarded')."""
    _require_scope(queue, ids, all_)
    config = g.load()

    async def go() -> None:
        async with open_connection(config.database.dsn) as conn:
            await _require_open_ids(conn, ids)
            done = await dl.discard(conn, dl.Filter(queue, None, ids, 100000))
        click.echo(f"discarded {len(done)} dead letter(s){render.id_list(done)}")

    _run(go())


@cli.command(
    "retry-failed",
    epilog=_epilog(
        "cleanup-worker retry-failed --all && cleanup-worker drain --until-empty",
        "cleanup-worker retry-failed --chat-id 6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b",
        codes=CODES_DB,
    ),
)
@click.option("--chat-id", type=click.UUID, help="Only this chat.")
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Every failed attachment, unfinished chat and pending dead letter.",
)
@click.pass_obj
def retry_failed(g: Globals, chat_id: UUID | None, all_: bool) -> None:
    """The repair after a fix (a revoked key, a wrong route): put all it unblocks back to work.

    Failed attachment rows go back to pending with a fresh attempt budget; pending dead
    letters whose cleanup is unfinished are replayed, those whose cleanup is already finished
    are resolved; deleted chats with cleanup left get a new chat-cleanup message. Poison (an
    invalid payload, a live or mismatching row) stays pending: discard it. The running
    workers (or one `drain --until-empty`) then do the work.
    """
    if (chat_id is None) == (not all_):
        raise UsageError("give exactly one of --chat-id ID or --all")
    config = g.load()

    async def go() -> None:
        async with open_connection(config.database.dsn) as conn:
            report = await run_retry_failed(conn, config.outbox.queues, chat_id=chat_id)
        click.echo(render.repair_report(report))

    _run(go())


@cli.command(
    "receipts",
    epilog=_epilog(
        "cleanup-worker receipts --tenant 7d1c5e0a-2f4b-4c8e-9a51-0b6f3e2d1c44 --since 30d",
        "cleanup-worker receipts --attachment-id 0ba79834-d41e-4799-a772-b089733b2f07 --json",
        codes="0 shown (also when none match), 2 a bad option or configuration, 3 database "
        "unreachable",
    ),
)
@click.option("--tenant", "tenant_id", type=click.UUID, help="Only this tenant.")
@click.option("--chat-id", type=click.UUID, help="Only this chat.")
@click.option("--attachment-id", type=click.UUID, help="Only this attachment.")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only receipts from this time on: ISO 8601 (2026-01-31T00:00:00Z) or a duration ago "
    "(24h, 30d).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="At most this many receipts, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of receipts.")
@click.pass_obj
def receipts_cmd(
    g: Globals,
    tenant_id: UUID | None,
    chat_id: UUID | None,
    attachment_id: UUID | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show deletion receipts: the evidence that provider files and vector stores were erased.

    One receipt per provider delete that ended gone: object kind and id, tenant, chat,
    attachment, route, HTTP status, outcome (deleted / already_gone), the provider's
    x-request-id, time and worker id; newest first. Kept audit.receipt_retention_days.
    """
    from worker.db.receipts import ReceiptFilter, list_receipts
    from worker.runtime.timespec import parse_since

    when = parse_since(since, option="--since") if since is not None else None
    config = g.load()

    async def go() -> None:
        async with open_connection(config.database.dsn) as conn:
            rows = await list_receipts(
                conn, ReceiptFilter(tenant_id, chat_id, attachment_id, when, limit)
            )
        if as_json:
            _emit_json([row.as_json() for row in rows])
        else:
            click.echo(render.receipts(rows))

    _run(go())


@cli.command(
    "reconcile",
    epilog=_epilog(
        "cleanup-worker reconcile --json > reconcile.json    # dry run, every route",
        "cleanup-worker reconcile --backend openai --apply   # then: cleanup-worker drain",
        codes="0 every route listed (findings are in the report), 1 partial: a route's listing "
        "or an unreferenced delete failed (the other routes are reported), 2 a bad option or "
        "configuration, 3 database unreachable",
    ),
)
@click.option("--tenant", "tenant_id", type=click.UUID, help="Only this tenant's routes and rows.")
@click.option("--backend", metavar="LABEL", help="Only this backend's routes.")
@click.option(
    "--apply",
    is_flag=True,
    help="Hand leaked objects back to cleanup: rows to pending, messages enqueued.",
)
@click.option(
    "--delete-unreferenced",
    is_flag=True,
    help="Delete files no row references (with a receipt); needs --older-than.",
)
@click.option(
    "--older-than",
    metavar="DURATION",
    help="With --delete-unreferenced: only files created longer ago (e.g. 30d; >= --grace).",
)
@click.option(
    "--grace",
    metavar="DURATION",
    help="Leave objects younger than this alone [default: audit.reconcile_grace_hours, 24h].",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 10_000),
    help="Objects per listing call [default: the API's largest: 10000 files, 100 stores].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object: counts and per-route detail."
)
@click.pass_obj
def reconcile_cmd(
    g: Globals,
    tenant_id: UUID | None,
    backend: str | None,
    apply: bool,
    delete_unreferenced: bool,
    older_than: str | None,
    grace: str | None,
    page_size: int | None,
    as_json: bool,
) -> int:
    """Compare each route's provider listing with the database and report leaks.

    Pages through the files and vector stores of every configured route (each backend's shared
    key, each tenant override) within the route's rate and concurrency limits, and classifies
    them: leaked (its attachment or chat is soft-deleted, whatever cleanup_status says; a
    vector store of a deleted chat), unreferenced (no row names it, older than the grace
    period), or left alone (a live row references it, or it is younger than the grace period).

    A dry run by default: listing calls only, no database change but the report row that
    feeds the cleanup_leaks_found gauge. --apply puts leaked objects back through normal
    cleanup (retries, receipts, metrics apply; run the worker or drain afterwards).
    Unreferenced files are only reported unless --delete-unreferenced --older-than is given.
    """
    config = g.load()
    options = _reconcile_options(
        config, tenant_id, backend, apply, delete_unreferenced, older_than, grace, page_size
    )

    async def go() -> int:
        await check_reachable(config.database.dsn)  # unreachable: exit 3 at once
        from worker.runtime.app import open_app  # loads the provider SDK: only when needed
        from worker.runtime.reconcile import reconcile

        async with open_app(config, environ=dict(os.environ)) as app:
            progress = render.ReconcileProgress(enabled=not as_json and sys.stderr.isatty())
            with progress:
                report = await reconcile(
                    app.pool, app.gateway, config.outbox.queues, options, progress=progress.update
                )
        if as_json:
            _emit_json(report.as_json())
        else:
            click.echo(render.reconcile(report))
        return EXIT_FAILED if report.partial else 0

    return _run(go())


def _reconcile_options(
    config: Config,
    tenant_id: UUID | None,
    backend: str | None,
    apply: bool,
    delete_unreferenced: bool,
    older_than: str | None,
    grace: str | None,
    page_size: int | None,
) -> ReconcileOptions:
    """Check reconcile's options against each other and the configuration (one-line errors)."""
    from datetime import timedelta

    from worker.runtime.reconcile import ReconcileOptions  # loads the SDK: only when needed
    from worker.runtime.timespec import parse_duration

    labels = sorted(config.providers.backends)
    if backend is not None and backend not in labels:
        raise UsageError(f"--backend: unknown backend {backend!r}; configured: {', '.join(labels)}")
    if delete_unreferenced != (older_than is not None):
        raise UsageError("--delete-unreferenced and --older-than DURATION go together")
    grace_span = (
        parse_duration(grace, option="--grace")
        if grace is not None
        else timedelta(hours=config.audit.reconcile_grace_hours)
    )
    cutoff = parse_duration(older_than, option="--older-than") if older_than else None
    if cutoff is not None and cutoff < grace_span:
        raise UsageError(
            f"--older-than {older_than} is shorter than the grace period ({grace_span}): "
            "files that young are never deleted"
        )
    return ReconcileOptions(tenant_id, backend, apply, grace_span, cutoff, page_size)


@cli.command(
    "check-config",
    epilog=_epilog(
        "cleanup-worker --config /etc/cleanup-worker/config.yaml check-config",
        codes="0 all good, 2 a configuration problem, 3 the database cannot be reached",
    ),
)
@click.pass_obj
def check_config_cmd(g: Globals) -> int:
    """Validate the configuration (routes, keys, database) and reach the database; processes
    nothing."""
    config = g.load()
    report = _run(check_config(config, environ=dict(os.environ)))
    click.echo(report.render())
    if not report.database_reachable:
        return EXIT_DATABASE
    return 0 if report.ok else EXIT_USAGE


@cli.command(
    epilog=_epilog(
        "cleanup-worker demo",
        "cleanup-worker demo --keep --json",
        codes="0 the demo ran (its failures and dead letters are part of the show), 1 it could "
        "not run (no PostgreSQL could be started), 2 usage error (also: --dsn names a database "
        "that is not empty, or the lab is not installed)",
    )
)
@click.option(
    "--chats",
    type=click.IntRange(1, 5000),
    default=40,
    show_default=True,
    help="Chats to create (about half are deleted whole).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed of the world.")
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=0.15,
    show_default=True,
    help="Share of provider files whose delete meets an injected fault.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Stop the drain after this long.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the database running; print its DSN and how to stop it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def demo(
    g: Globals,
    chats: int,
    seed: int,
    fault_rate: float,
    max_seconds: float,
    keep: bool,
    as_json: bool,
) -> None:
    """See the worker do its job: throwaway PostgreSQL + local OpenAI-compatible server.

    Seeds tenants (OpenAI, an Azure override, one with a revoked key), chats with attachments
    and vector stores, deletes them through the chat service's flows, injects provider faults,
    drains, and prints what was deleted, retried, failed and dead-lettered. --dsn uses an
    existing database instead of starting one, only if it is empty (nothing is ever seeded
    into an application's database); CLEANUP_WORKER_DSN is ignored here.
    """
    # The lab (lab/cwlab) is tooling, installed with the demo extra: imported here only, so
    # the product runs without it (.importlinter allows exactly this edge).
    try:
        from cwlab import demo as lab
        from cwlab import summary as lab_summary
        from cwlab.fake_openai import FakeOpenAI
        from cwlab.postgres import ProvisioningError, stop_servers_on_sigterm
    except ModuleNotFoundError as exc:
        if exc.name != "cwlab":
            raise
        raise UsageError(
            "demo needs the lab, installed with the demo extra: scripts/demo.sh, or "
            "uv sync --extra demo"
        ) from None

    # The summary is the demo's output; per-message log lines would drown it.
    base = replace(g, log_level=g.log_level or "error", log_format=g.log_format or "console").load()
    options = lab.DemoOptions(chats, seed, fault_rate, max_seconds)
    # Only an explicit --dsn: a CLEANUP_WORKER_DSN exported for real work (production!) must
    # never receive demo data, and even an explicit one must name an empty database.
    dsn, stop_hint = ("" if g.dsn_from_env else g.dsn or ""), ""
    if dsn:
        _run(lab.refuse_unless_empty(dsn))
    stop_servers_on_sigterm()  # this command owns its signals: SIGTERM stops its server too
    with (
        contextlib.ExitStack() as stack,
        render.DrainProgress(enabled=not as_json) as progress,
    ):
        if not dsn:
            progress.note("demo: starting a throwaway PostgreSQL (a few seconds) ...")
            try:
                dsn, stop_hint = lab.start_demo_database(stack, keep=keep)
            except ProvisioningError as exc:
                raise click.ClickException(str(exc)) from None  # one line, exit 1
        fake = stack.enter_context(FakeOpenAI(api_keys=lab.DEMO_API_KEYS))
        progress.note(f"demo: PostgreSQL at {redact_passwords(dsn)}, provider at {fake.url}")
        summary = _run(
            lab.run_demo(
                base, options, dsn=dsn, fake=fake, progress=progress.update, note=progress.note
            )
        )
    shown = redact_passwords(dsn)
    if as_json:
        _emit_json(lab_summary.as_json(summary, dsn=shown, keep=keep, stop_hint=stop_hint))
    else:
        click.echo(lab_summary.text(summary, dsn=shown, keep=keep, stop_hint=stop_hint))


def exit_code(exc: CleanupWorkerError) -> int:
    if isinstance(exc, DatabaseUnavailable):
        return EXIT_DATABASE
    if isinstance(exc, ConfigError | UsageError | SchemaError | OutboxError | ProducerError):
        return EXIT_USAGE
    return EXIT_FAILED


def _one_line(exc: click.ClickException) -> str:
    """Click's three-line Usage/Try/Error, as one line that says where to read more."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{message.rstrip('.')}: see `{ctx.command_path} --help`"
    return message


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a documented exit code for every known failure."""
    try:
        result = cli.main(args=argv, prog_name="cleanup-worker", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: show what it offers
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"cleanup-worker: {_one_line(exc)}", err=True)
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except CleanupWorkerError as exc:
        click.echo(f"cleanup-worker: {exc}", err=True)
        sys.exit(exit_code(exc))
    sys.exit(result if isinstance(result, int) else 0)
