"""The composition root: builds the pool, the provider gateway, metrics, handlers and engine.

Everything the CLI commands run is built here and nowhere else; order of the exit stack is the
shutdown order (engine users first, then the provider pool, then the database pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from worker.config import Config
from worker.db import AsyncConnectionPool
from worker.db.pool import open_pool
from worker.handlers.attachment import AttachmentCleanupHandler
from worker.handlers.chat import ChatCleanupHandler
from worker.handlers.files import CleanupContext
from worker.handlers.repository import CleanupRepository
from worker.models import Handler
from worker.observability.metrics import Metrics
from worker.outbox.engine import Engine, EngineSettings, new_worker_id
from worker.providers.clients import HttpPool
from worker.providers.gateway import ProviderGateway
from worker.runtime.route_health import RouteHealthRecorder, restore_suspected_routes
from worker.runtime.secrets import register_secrets

# Connections kept for lease upkeep (heartbeats, acks, releases) beside database.pool_max_size:
# these statements are short, and on the handlers' pool they waited longer than a lease.
LEASE_POOL_SIZE = 2


@dataclass(frozen=True)
class App:
    config: Config
    pool: AsyncConnectionPool
    metrics: Metrics
    gateway: ProviderGateway
    engine: Engine

    @property
    def queues(self) -> tuple[str, ...]:
        return self.engine.queues


@asynccontextmanager
async def open_app(
    config: Config,
    *,
    environ: dict[str, str],
    metrics: Metrics | None = None,
    http_client: HttpPool | None = None,
) -> AsyncIterator[App]:
    register_secrets(config, environ)
    metrics = metrics or Metrics(config.observability.metrics_prefix)
    async with AsyncExitStack() as stack:
        db = config.database
        pool = await stack.enter_async_context(
            open_pool(db.dsn, min_size=db.pool_min_size, max_size=db.pool_max_size)
        )
        lease_pool = await stack.enter_async_context(
            open_pool(db.dsn, min_size=1, max_size=LEASE_POOL_SIZE, name="cleanup-worker-leases")
        )
        worker_id = new_worker_id()
        route_health = RouteHealthRecorder(pool, metrics, worker_id)
        gateway = ProviderGateway(
            config.providers,
            breaker=config.providers.circuit_breaker,
            observer=metrics.provider_observer,
            route_health=route_health,
            http_client=http_client,
            environ=environ,
        )
        stack.push_async_callback(gateway.aclose)
        await restore_suspected_routes(pool, gateway, route_health)
        ctx = CleanupContext(
            CleanupRepository(pool, worker_id=worker_id),
            gateway,
            metrics,
            max_attempts=config.cleanup.max_attempts,
        )
        outbox = config.outbox
        handlers: dict[str, Handler] = {
            outbox.attachment_queue.name: AttachmentCleanupHandler(ctx),
            outbox.chat_queue.name: ChatCleanupHandler(
                ctx, file_concurrency=config.cleanup.file_concurrency
            ),
        }
        engine = Engine(
            pool,
            handlers,
            EngineSettings.from_config(outbox),
            lease_pool=lease_pool,
            worker_id=worker_id,
        )
        yield App(config, pool, metrics, gateway, engine)
