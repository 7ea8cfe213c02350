"""The route-health repository: ``cleanup_worker_route_health`` (SPEC §13 route suspicion).

Best effort by design: a database that is down must not turn a provider delete into an error,
so a write or read that fails is logged and skipped (the next transition, or the next start's
restore, catches up). ``runtime.route_health`` decides what to record; this owns how.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import structlog

from worker.db.database import AsyncConnectionPool
from worker.db.pool import Conn
from worker.db.queries import q
from worker.errors import CleanupWorkerError

log = structlog.get_logger("worker.providers")

RouteHealthChange = Literal["mark_route_suspected", "clear_route_suspicion"]


@dataclass(frozen=True)
class SuspectedRoute:
    """A row of ``cleanup_worker_route_health``, as ``status`` and ``check-config`` show it."""

    backend: str
    tenant_id: str  # '' for the backend's shared route
    fingerprint: str
    distinct_not_found: int
    suspected_for_seconds: float
    updated_by: str | None

    def describe(self) -> str:
        owner = f" (tenant {self.tenant_id})" if self.tenant_id else ""
        return f"{self.backend}{owner}"


async def read_suspected_routes(conn: Conn) -> list[SuspectedRoute]:
    """Provider routes whose not-founds do not count as deleted (SPEC §13 route suspicion)."""
    cur = await conn.execute(q("suspected_routes"))
    return [SuspectedRoute(*row) for row in await cur.fetchall()]


class RouteHealthStore:
    """Writes and reads the table on the pool, never raising for a database problem."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(self, change: RouteHealthChange, params: dict[str, Any]) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(q(change), params)
        except (psycopg.Error, CleanupWorkerError, OSError) as exc:
            log.warning("route_health_not_recorded", query=change, error=type(exc).__name__)

    async def suspected_routes(self) -> list[SuspectedRoute]:
        """The suspected routes; none when the table cannot be read (logged) or does not exist
        yet (not migrated: the commands say so themselves, "run cleanup-worker migrate")."""
        try:
            async with self._pool.connection() as conn:
                return await read_suspected_routes(conn)
        except psycopg.errors.UndefinedTable:
            return []
        except (psycopg.Error, CleanupWorkerError, OSError) as exc:
            log.warning("route_health_not_restored", error=type(exc).__name__)
            return []
