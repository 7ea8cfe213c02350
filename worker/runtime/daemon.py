"""`cleanup-worker run`: the long-running worker (SPEC §7, §11).

Named loops share one stop event: one lane per partition of each queue, the retrier, the
sequencer, vacuum and the backlog refresher, plus the metrics/health HTTP server. A loop that
meets a database outage (DatabaseUnavailable: see ``worker.db.pool`` for what counts) backs off
and tries again for ever; the process never exits for it; a loop that dies of a bug stops the
process non-zero so Kubernetes restarts it.

While any loop's last database statement failed, the database is "down": the ``database_up``
gauge reads 0, ``/readyz`` answers 503 with the cause, and ``database_recovered`` is logged only
once every such loop has completed a statement again. A turn that asked the database nothing
(a lane with every handler slot taken) proves nothing either way.

Shutdown (SIGTERM/SIGINT): stop leasing; let in-flight batches finish until the grace
deadline; then interrupt what is left, whose messages the ack parks as due at once; release
and exit 0. A second signal exits at once: leases simply expire, nothing is lost. A repeat
within DUPLICATE_SIGNAL_SECONDS of the first is the same request delivered twice (`timeout`
signals the child and then its process group; `uv run` forwards what the terminal also sent),
and a signal after the loops have stopped has nothing left to interrupt: both are ignored. The
latter is ignored by the process itself (SIG_IGN), because closing the event loop would put back
the default disposition, which kills: `timeout`'s second signal made `run` exit 143 after a
clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from worker.db import Database, is_read_only
from worker.db.receipts import prune_receipts
from worker.errors import ConfigError, DatabaseUnavailable, SchemaError
from worker.observability.http import HealthServer
from worker.observability.metrics import Metrics
from worker.runtime.app import App
from worker.runtime.migrate import pending_migrations
from worker.runtime.reconcile import refresh_leak_gauge
from worker.runtime.repair import resolve_finished_dead_letters_of
from worker.runtime.reporting import record_round
from worker.runtime.status import refresh_backlog

log = structlog.get_logger("worker.runtime")


@dataclass(frozen=True)
class Turn:
    """What one step of a loop did."""

    busy: bool  # found work: run again at once
    asked_database: bool = True  # False: decided without a statement (says nothing of it)
    idle_seconds: float | None = None  # not busy: sleep this long (default: the loop's interval)


Step = Callable[[], Awaitable[Turn]]

MAX_OUTAGE_BACKOFF_SECONDS = 30.0
WAKE_INTERVAL_SECONDS = 1.0
ACK_GRACE_SECONDS = 10.0  # after interrupting: time for the final acks
READINESS_CACHE_SECONDS = 2.0
# The shortest sleep of an idle retrier: a due row it could not lease (another worker's
# statement holds it) must not make it spin.
MIN_RETRY_WAIT_SECONDS = 0.02
DUPLICATE_SIGNAL_SECONDS = 1.0
# Below the health server's 2 s probe budget, so a down database is reported as such
# instead of as "readiness check timed out".
READINESS_DB_TIMEOUT_SECONDS = 1.5


class Daemon:
    def __init__(self, app: App):
        self.app = app
        self.stopping = asyncio.Event()  # stop leasing
        self.abort = asyncio.Event()  # interrupt in-flight messages
        self._crashed: BaseException | None = None
        self._database = DatabaseState(app.metrics)
        # Set (and replaced) when a loop completes a statement while others are failing: the
        # database answers, so the loops backing off try again now instead of up to 30 s later
        # (at most once a WAKE_INTERVAL_SECONDS, so a loop failing alone still backs off).
        self._database_back = asyncio.Event()
        self._woken_at = 0.0
        self._readiness: tuple[float, tuple[bool, str]] | None = None
        self._readiness_check: asyncio.Task[tuple[bool, str]] | None = None
        self._first_signal_at: float | None = None

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
        now = time.monotonic()
        if self._first_signal_at is not None:
            if now - self._first_signal_at < DUPLICATE_SIGNAL_SECONDS:
                return  # the same request delivered twice
            log.warning("worker_killed", reason="second signal: exiting at once")
            os._exit(1)
        self._first_signal_at = now
        log.info("worker_stopping", grace_seconds=self.app.config.outbox.shutdown_grace_seconds)
        self.stopping.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    @staticmethod
    def _ignore_further_signals() -> None:
        """Nothing is left to interrupt: the process only closes its pool and exits."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

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
        self._ignore_further_signals()

    def _loops(self) -> list[tuple[str, Step, float]]:
        config, engine = self.app.config, self.app.engine
        poll = config.outbox.poll_interval_seconds
        loops: list[tuple[str, Step, float]] = []
        for queue in config.outbox.queue_configs:
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

        async def step() -> Turn:
            # A full process leases nothing; waiting for a message to finish instead of a poll
            # interval refills it at once (lanes slept 1 s while slots idled).
            if not await self.app.engine.wait_for_capacity(timeout=poll):
                # The poll interval is spent: look again at once. No statement ran, so this
                # turn is no sign that the database is up (it was taken as one).
                return Turn(busy=True, asked_database=False)
            report = await self.app.engine.process_partitions(
                queue, max_partitions=1, abort=self.abort, stop=self.stopping
            )
            record_round(self.app.metrics, report)
            return Turn(busy=report.partitions > 0)

        return step

    async def _retrier(self) -> Turn:
        limit = self.app.config.outbox.batch_size
        report = await self.app.engine.process_retries(limit=limit, abort=self.abort)
        record_round(self.app.metrics, report)
        if report.handled + len(report.lost) > 0:
            return Turn(busy=True)
        # Nothing due: sleep until the next parked message is, within the poll interval. A
        # message parked for its tenant's fair turn then comes back at its turn; a whole poll
        # interval late, the route's budget idled (bench FAIR: the busy tenant kept 0.80).
        due = await self.app.engine.next_retry_due()
        poll = self.app.config.outbox.poll_interval_seconds
        wait = poll if due is None else min(poll, max(MIN_RETRY_WAIT_SECONDS, due))
        return Turn(busy=False, idle_seconds=wait)

    async def _sequencer(self) -> Turn:
        return Turn(busy=await self.app.engine.sequence() > 0)

    async def _vacuum(self) -> Turn:
        await self.app.engine.vacuum()
        retention = self.app.config.audit.receipt_retention_days
        await prune_receipts(self.app.pool, retention_days=retention)
        resolved = await resolve_finished_dead_letters_of(self.app)
        if resolved:
            log.info("dead_letters_resolved", count=resolved, why="their cleanup has completed")
        return Turn(busy=False)

    async def _refresh_backlog(self) -> Turn:
        await refresh_backlog(self.app.pool, self.app.metrics, self.app.queues)
        await refresh_leak_gauge(self.app.pool, self.app.metrics)
        return Turn(busy=False)

    async def _loop(self, name: str, step: Step, idle_seconds: float) -> None:
        outage_backoff = 1.0
        while not self.stopping.is_set():
            try:
                turn = await step()
            except (DatabaseUnavailable, SchemaError) as exc:
                # An outage, or migrations not applied yet: back off and wait (not ready);
                # never exit for it (SPEC §11). Waiting for the database is not a hang.
                self.app.metrics.mark_loop_iteration()
                self._database.failed(name, exc)
                await self._outage_sleep(outage_backoff)
                outage_backoff = min(MAX_OUTAGE_BACKOFF_SECONDS, outage_backoff * 2)
                continue
            except Exception as exc:
                log.exception("loop_crashed", loop=name)
                self._crashed = exc
                self.stopping.set()
                return
            if turn.asked_database:
                outage_backoff = 1.0
                if self._database.answered(name):
                    self._wake_backed_off_loops()
            self.app.metrics.mark_loop_iteration()
            if not turn.busy:
                await self._sleep(idle_seconds if turn.idle_seconds is None else turn.idle_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _wake_backed_off_loops(self) -> None:
        now = time.monotonic()
        if now - self._woken_at >= WAKE_INTERVAL_SECONDS:
            self._woken_at = now
            self._database_back.set()
            self._database_back = asyncio.Event()

    async def _outage_sleep(self, seconds: float) -> None:
        """Back off, still beating: a loop waiting for the database is not hung (/healthz).
        Cut short when another loop completed a statement: the database may be back."""
        back = self._database_back
        deadline = time.monotonic() + seconds
        while not (self.stopping.is_set() or back.is_set()):
            if (left := deadline - time.monotonic()) <= 0:
                return
            self.app.metrics.mark_loop_iteration()
            waits = {asyncio.ensure_future(e.wait()) for e in (self.stopping, back)}
            _, pending = await asyncio.wait(
                waits, timeout=min(1.0, left), return_when=asyncio.FIRST_COMPLETED
            )
            for waiting in pending:
                waiting.cancel()

    async def ready(self) -> tuple[bool, str]:
        """Not ready while a loop is in an outage (the cause, no statement needed); otherwise
        the database answers, accepts writes and is migrated. One check at a time, whatever
        the number of concurrent probes, and its answer is reused for a moment."""
        if self.stopping.is_set():  # at once, not after the cache expires
            return False, "shutting down"
        if (cause := self._database.cause) is not None:
            return False, cause
        if self._readiness and time.monotonic() - self._readiness[0] < READINESS_CACHE_SECONDS:
            return self._readiness[1]
        if self._readiness_check is None:
            self._readiness_check = asyncio.create_task(self._check_and_remember())
            self._readiness_check.add_done_callback(_retrieve)
        # A probe that gives up (its own timeout) must not cancel the check the others await.
        return await asyncio.shield(self._readiness_check)

    async def _check_and_remember(self) -> tuple[bool, str]:
        try:
            result = await self._check_ready()
            self._readiness = (time.monotonic(), result)
            return result
        finally:
            self._readiness_check = None

    async def _check_ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "shutting down"
        try:
            async with Database(self.app.pool).connection(
                timeout=READINESS_DB_TIMEOUT_SECONDS
            ) as conn:
                if await is_read_only(conn):
                    return False, READ_ONLY
                missing = await pending_migrations(conn)
        except DatabaseUnavailable as exc:
            return False, str(exc)
        if missing:
            return (
                False,
                f"migrations not applied: {', '.join(missing)} (run cleanup-worker migrate)",
            )
        return True, "ready"


READ_ONLY = (
    "database unavailable: the server accepts only read-only transactions"
    " (a standby or a read-only node after a failover?)"
)


def _retrieve(task: asyncio.Task[tuple[bool, str]]) -> None:
    """Retrieve a check's exception even when every probe awaiting it gave up."""
    if not task.cancelled():
        task.exception()


class DatabaseState:
    """What the loops last learned from the database, told by the gauge, the log and /readyz.

    Down from a loop's failed statement until every loop that failed has completed one again:
    one loop's success (a read while writes fail on a read-only node) does not prove the
    others' statements work. Each distinct cause is logged once per outage.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._failing: dict[str, str] = {}  # loop -> cause
        self._logged_causes: set[str] = set()  # of this outage
        self._down_since: float | None = None
        self._schema_missing = False

    @property
    def cause(self) -> str | None:
        """Why the database is not usable now (the latest failure's cause); None while it is."""
        return next(reversed(self._failing.values()), None)

    def failed(self, loop: str, exc: DatabaseUnavailable | SchemaError) -> None:
        if isinstance(exc, SchemaError):  # it answered: reachable, only not migrated yet
            self._answered(loop)
            if not self._schema_missing:
                self._schema_missing = True
                log.error("database_schema_missing", loop=loop, cause=str(exc))
            return
        cause = str(exc)
        self._failing.pop(loop, None)  # re-inserted last: the latest cause
        self._failing[loop] = cause
        self._metrics.set_database_up(False)
        if self._down_since is None:
            self._down_since = time.monotonic()
        if cause not in self._logged_causes:
            self._logged_causes.add(cause)
            log.error("database_unavailable", loop=loop, cause=cause)

    def answered(self, loop: str) -> bool:
        """``loop`` completed its statements; True if an outage was on (loops still failing
        should try again: the database answers, perhaps to them too)."""
        self._schema_missing = False
        outage = bool(self._failing)
        self._answered(loop)
        return outage

    def _answered(self, loop: str) -> None:
        self._failing.pop(loop, None)
        if not self._failing:
            self._metrics.set_database_up(True)
            if self._down_since is not None:
                down = time.monotonic() - self._down_since
                self._down_since = None
                self._logged_causes.clear()
                log.info("database_recovered", loop=loop, down_seconds=round(down, 1))
