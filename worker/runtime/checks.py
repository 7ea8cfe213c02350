"""`cleanup-worker check-config`: validate what can be validated without processing anything.

The configuration itself was validated when it loaded; this adds what needs the outside
world: the database answers and is migrated, every API key source is readable. Values are
never printed, only where they come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.config import BackendConfig, Config, KeyUnavailable, TenantOverride, redact_passwords
from worker.db import open_connection
from worker.db.route_health import SuspectedRoute, read_suspected_routes
from worker.errors import CleanupWorkerError, DatabaseUnavailable
from worker.runtime.migrate import IndexState, index_states, pending_migrations


@dataclass
class CheckReport:
    lines: list[tuple[bool, str]] = field(default_factory=list)
    database_reachable: bool = True

    def add(self, ok: bool, text: str) -> None:
        self.lines.append((ok, text))

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.lines)

    def render(self) -> str:
        return "\n".join(f"{'ok  ' if ok else 'FAIL'}  {text}" for ok, text in self.lines)


async def check_config(config: Config, *, environ: dict[str, str]) -> CheckReport:
    report = CheckReport()
    report.add(True, "configuration: valid")
    await _check_database(config, report)
    for label, backend in config.providers.backends.items():
        _check_key(report, f"providers.backends.{label}", backend, environ)
    for tenant, overrides in config.providers.tenants.items():
        for label, override in overrides.items():
            _check_key(report, f"providers.tenants.{tenant}.{label}", override, environ)
    if not config.providers.backends:
        report.add(False, "providers.backends: none configured: nothing could be deleted")
    return report


async def _check_database(config: Config, report: CheckReport) -> None:
    where = redact_passwords(config.database.dsn)
    suspected: list[SuspectedRoute] = []
    try:
        async with open_connection(config.database.dsn, timeout_seconds=5) as conn:
            missing = await pending_migrations(conn)
            indexes = await index_states(conn)
            if not missing:
                suspected = await read_suspected_routes(conn)
    except CleanupWorkerError as exc:
        report.database_reachable = not isinstance(exc, DatabaseUnavailable)
        report.add(False, f"database {where}: {exc}")
        return
    report.add(True, f"database {where}: reachable")
    if missing:
        report.add(
            False, f"migrations not applied: {', '.join(missing)} (run cleanup-worker migrate)"
        )
    else:
        report.add(True, "migrations: applied")
    for route in suspected:
        report.add(
            False,
            f"provider route {route.describe()}: suspected, not-found for "
            f"{route.distinct_not_found} distinct objects in a row without a success; its "
            "not-founds are retried, not marked done (check its key, project and organization)",
        )
    _check_indexes(report, indexes)


def _check_indexes(report: CheckReport, states: list[IndexState]) -> None:
    """One line per index the worker needs that is missing or INVALID: without it the hot
    statements scan the whole chat-service table (issue 16). Fails check-config, as a
    deployment that runs ``migrate --skip-app-indexes`` expects a DBA to create them."""
    problems = [s for s in states if s.problem]
    for state in problems:
        report.add(
            False,
            f"index {state.index.name} on {state.index.table}: {state.problem} "
            f"({state.index.purpose.rstrip('.')}); run cleanup-worker migrate, or as a DBA: "
            f"{state.repair} (docs/deploy.md)",
        )
    present = [s.index.name for s in states if s.valid]
    if present and not problems:
        report.add(True, f"chat-service indexes: present ({', '.join(present)})")


def _check_key(
    report: CheckReport, path: str, entry: BackendConfig | TenantOverride, environ: dict[str, str]
) -> None:
    source = entry.key_source
    if source is None:
        return
    try:
        source.text(environ)
    except KeyUnavailable:
        readable = False
    else:
        readable = True
    if source.env is not None:
        state = "is set" if readable else "is not set or empty"
        report.add(readable, f"{path}.api_key_env: {source.env} {state}")
    else:
        state = "is readable" if readable else "is missing, unreadable or empty"
        report.add(readable, f"{path}.api_key_file: {source.file} {state}")
