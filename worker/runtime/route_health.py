"""Route suspicion outside the gateway: metrics, the route_health table, restore at start.

The gateway keeps each route's not-found streak in memory (``worker.providers.suspicion``);
this records the transitions so that ``status`` and ``check-config`` (other processes) can
show suspected routes, and so a restarted worker starts with them still suspected. A database
that is down must not turn a delete into an error: a failed write is logged and skipped (the
next transition, or the next start's restore, catches up).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from worker.db import AsyncConnectionPool
from worker.db.route_health import RouteHealthChange, RouteHealthStore
from worker.observability.metrics import Metrics
from worker.providers.routing import Route, RouteId

if TYPE_CHECKING:  # importing the gateway loads the SDK; only the daemon pays for that
    from worker.providers.gateway import ProviderGateway

log = structlog.get_logger("worker.providers")


class RouteHealthRecorder:
    """The gateway's ``RouteHealthListener``: counts, sets gauges and records transitions."""

    def __init__(self, pool: AsyncConnectionPool, metrics: Metrics, worker_id: str) -> None:
        self._store = RouteHealthStore(pool)
        self._metrics = metrics
        self._worker_id = worker_id
        self._suspected: set[RouteId] = set()
        metrics.set_routes_suspected({})

    async def route_suspected(self, route: Route, distinct_not_found: int) -> None:
        log.warning(
            "provider_route_suspected",
            backend=route.label,
            tenant_id=str(route.tenant_id) if route.tenant_id else None,
            distinct_not_found=distinct_not_found,
        )
        self._metrics.route_suspected(route.label)
        self._mark(route, suspected=True)
        await self._write("mark_route_suspected", route, distinct_not_found=distinct_not_found)

    async def route_recovered(self, route: Route) -> None:
        log.info(
            "provider_route_recovered",
            backend=route.label,
            tenant_id=str(route.tenant_id) if route.tenant_id else None,
        )
        self._mark(route, suspected=False)
        await self._write("clear_route_suspicion", route)

    def restored(self, route: Route) -> None:
        """A route the gateway starts suspected (from the table): counted in the gauge."""
        self._mark(route, suspected=True)

    def _mark(self, route: Route, *, suspected: bool) -> None:
        if suspected:
            self._suspected.add(route.route_id)
        else:
            self._suspected.discard(route.route_id)
        self._metrics.set_routes_suspected(Counter(label for label, _ in self._suspected))

    async def _write(self, change: RouteHealthChange, route: Route, **extra: Any) -> None:
        params = {
            "backend": route.label,
            "tenant_id": str(route.tenant_id) if route.tenant_id else "",
            "fingerprint": route.fingerprint,
            "updated_by": self._worker_id,
            **extra,
        }
        await self._store.record(change, params)


async def restore_suspected_routes(
    pool: AsyncConnectionPool, gateway: ProviderGateway, recorder: RouteHealthRecorder
) -> int:
    """Start every route the table lists (with an unchanged configuration) suspected."""
    rows = await RouteHealthStore(pool).suspected_routes()
    routes = {route.route_id: route for route in gateway.routes()}
    restored = 0
    for row in rows:
        tenant = UUID(row.tenant_id) if row.tenant_id else None
        route = routes.get((row.backend, tenant))
        if route is None:
            continue
        if gateway.restore_suspicion(row.backend, tenant, row.fingerprint, row.distinct_not_found):
            recorder.restored(route)
            restored += 1
    return restored
