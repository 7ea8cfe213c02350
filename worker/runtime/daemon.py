"""`cleanup-worker run`: the long-running worker (SPEC §7, §11).

Named loops share one stop event: one lane per partition of each queue, the retrier, the
sequencer, vacuum and the backlog refresher, plus the metrics/health HTTP server. A loop that
meets a database outage backs off and tries again for ever (readiness turns false; the
process never exits for it); a loop that dies of a bug stops the process non-zero so
Kubernetes restarts it.

Shutdown (SIGTERM/SIGINT): stop leasing; let in-flight batches finish until the grace
deadline; then interrupt what is left, whose messages the ack parks as due at once; release
and exit 0. A second signal exits at once: leases simply expire, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable

import structlog

from worker.db.pool import translate_errors
from worker.errors import ConfigError, DatabaseUnavailable, SchemaError
from worker.observability.http import HealthServer
from worker.runtime.app import App
from worker.runtime.migrate import pending_migrations
from worker.runtime.receipts import prune_receipts
from worker.runtime.reconcile import refresh_leak_gauge
from worker.runtime.reporting import record_round
from worker.runtime.status import refresh_backlog

log = structlog.get_logger("worker.runtime")

Step = Callable[[], Awaitable[bool]]  # returns whether it found work (then runs again at once)

MAX_OUTAGE_BACKOFF_SECONDS = 30.0
ACK_GRACE_SECONDS = 10.0  # after interrupting: time for the final acks
READINESS_CACHE_SECONDS = 2.0
# Below the health server's 2 s probe budget, so a down database is reported as such
# instead of as "readiness check timed out".
READINESS_DB_TIMEOUT_SECONDS = 1.5


class Daemon:
    def __init__(self, app: App):
        self.app = app
        self.stopping = asyncio.Event()  # stop leasing
        self.abort = asyncio.Event()  # interrupt in-flight messages
        self._crashed: BaseException | None = None
        self._db_down = False
        self._readiness: tuple[float, tuple[bool, str]] | None = None

    async def run(self) -> int:
        """Run until a signal (exit 0) or a crashed loop (exit 1)."""
        self._install_signal_handlers()
        obs = self.app.config.observability
        outbox = self.app.config.outbox
        server = HealthServer(
            obs.http_host, obs.http_port,
            registry=self.app.metrics.registry,
            heartbeat_age=self.app.metrics.heartbeat_age,
            # A loop may also wait up to the pool's timeout for a connection (database down).
            max_heartbeat_age_seconds=(
                3 * outbox.poll_interval_seconds + outbox.lease_seconds + self.app.pool.timeout
            ),
            readiness=self.ready,
        )  # fmt: skip
        try:
            await server.start()
        except OSError as exc:  # a port in use is the operator's to fix: one line, exit 2
            raise ConfigError(
                f"observability.http_port: cannot listen on {obs.http_host}:{obs.http_port}: "
                f"{exc.strerror or exc}; free the port or choose another one"
            ) from None
        log.info("worker_started", worker_id=self.app.engine.worker_id, http_port=server.port)
        try:
            await self._run_loops()
        finally:
            await server.stop()
        log.info("worker_stopped", crashed=self._crashed is not None)
        return 1 if self._crashed else 0

    def stop(self) -> None:
        if self.stopping.is_set():
            log.warning("worker_killed", reason="second signal: exiting at once")
            os._exit(1)
        log.info("worker_stopping", grace_seconds=self.app.config.outbox.shutdown_grace_seconds)
        self.stopping.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def _run_loops(self) -> None:
        tasks = [asyncio.create_task(self._loop(name, step, idle), name=name)
                 for name, step, idle in self._loops()]  # fmt: skip
        await self.stopping.wait()
        grace = self.app.config.outbox.shutdown_grace_seconds
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            log.warning("worker_interrupting", loops=sorted(t.get_name() for t in pending))
            self.abort.set()
            _, pending = await asyncio.wait(pending, timeout=ACK_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _loops(self) -> list[tuple[str, Step, float]]:
        config, engine = self.app.config, self.app.engine
        poll = config.outbox.poll_interval_seconds
        loops: list[tuple[str, Step, float]] = []
        for queue in (config.outbox.attachment_queue, config.outbox.chat_queue):
            for lane in range(queue.partitions):
                loops.append((f"lane:{queue.name}:{lane}", self._lane(queue.name), poll))
        loops.append(("retrier", self._retrier, poll))
        loops.append(("sequencer", self._sequencer, poll))
        loops.append(("vacuum", self._vacuum, config.outbox.vacuum_interval_seconds))
        loops.append(("backlog", self._refresh_backlog,
                      config.observability.backlog_refresh_seconds))  # fmt: skip
        assert engine.queues  # handlers exist for both queues
        return loops

    def _lane(self, queue: str) -> Step:
        poll = self.app.config.outbox.poll_interval_seconds

        async def step() -> bool:
            # A full process leases nothing; waiting for a slot instead of a poll interval
            # refills it as soon as a message finishes (lanes slept 1 s while slots idled).
            if not await self.app.engine.wait_for_capacity(timeout=poll):
                return True  # the poll interval is spent: look again at once
            report = await self.app.engine.process_partitions(
                queue, max_partitions=1, abort=self.abort, stop=self.stopping
            )
            record_round(self.app.metrics, report)
            return report.partitions > 0

        return step

    async def _retrier(self) -> bool:
        limit = self.app.config.outbox.batch_size
        report = await self.app.engine.process_retries(limit=limit, abort=self.abort)
        record_round(self.app.metrics, report)
        return report.handled + len(report.lost) > 0

    async def _sequencer(self) -> bool:
        return await self.app.engine.sequence() > 0

    async def _vacuum(self) -> bool:
        await self.app.engine.vacuum()
        retention = self.app.config.audit.receipt_retention_days
        await prune_receipts(self.app.pool, retention_days=retention)
        return False

    async def _refresh_backlog(self) -> bool:
        await refresh_backlog(self.app.pool, self.app.metrics, self.app.queues)
        await refresh_leak_gauge(self.app.pool, self.app.metrics)
        return False

    async def _loop(self, name: str, step: Step, idle_seconds: float) -> None:
        outage_backoff = 1.0
        while not self.stopping.is_set():
            try:
                busy = await step()
            except (DatabaseUnavailable, SchemaError) as exc:
                # An outage, or migrations not applied yet: back off and wait (not ready);
                # never exit for it (SPEC §11).
                self._database_down(name, exc)
                await self._outage_sleep(outage_backoff)
                outage_backoff = min(MAX_OUTAGE_BACKOFF_SECONDS, outage_backoff * 2)
                continue
            except Exception as exc:
                log.exception("loop_crashed", loop=name)
                self._crashed = exc
                self.stopping.set()
                return
            outage_backoff = 1.0
            self._database_up()
            self.app.metrics.mark_loop_iteration()
            if not busy:
                await self._sleep(idle_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _outage_sleep(self, seconds: float) -> None:
        """Back off, still beating: a loop waiting for the database is not hung (/healthz)."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            self.app.metrics.mark_loop_iteration()
            await self._sleep(min(1.0, left))

    def _database_down(self, loop: str, exc: DatabaseUnavailable | SchemaError) -> None:
        self.app.metrics.mark_loop_iteration()  # waiting for the database is not a hang
        unreachable = isinstance(exc, DatabaseUnavailable)
        self.app.metrics.set_database_up(not unreachable)
        if not self._db_down:
            self._db_down = True
            event = "database_unavailable" if unreachable else "database_schema_missing"
            log.error(event, loop=loop, error=str(exc))

    def _database_up(self) -> None:
        if self._db_down:
            self._db_down = False
            log.info("database_recovered")
        self.app.metrics.set_database_up(True)

    async def ready(self) -> tuple[bool, str]:
        """Database reachable and migrated; cached briefly so probes cost no load."""
        if self.stopping.is_set():  # at once, not after the cache expires
            return False, "shutting down"
        now = time.monotonic()
        if self._readiness and now - self._readiness[0] < READINESS_CACHE_SECONDS:
            return self._readiness[1]
        result = await self._check_ready()
        self._readiness = (now, result)
        return result

    async def _check_ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "shutting down"
        try:
            with translate_errors():
                async with self.app.pool.connection(timeout=READINESS_DB_TIMEOUT_SECONDS) as conn:
                    missing = await pending_migrations(conn)
        except DatabaseUnavailable as exc:
            return False, str(exc)
        if missing:
            return (
                False,
                f"migrations not applied: {', '.join(missing)} (run cleanup-worker migrate)",
            )
        return True, "ready"
