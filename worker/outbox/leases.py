"""Keeping leases alive while a batch is in flight (heartbeat), so a slow batch is not stolen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog

from worker.errors import DatabaseUnavailable

log = structlog.get_logger("worker.outbox")


class Heartbeat:
    """Calls ``extend`` every ``interval`` seconds; remembers if the lease was lost."""

    def __init__(self, extend: Callable[[], Awaitable[bool]], interval_seconds: float):
        self._extend = extend
        self._interval = interval_seconds
        self._stopped = asyncio.Event()
        self.lost = False

    async def _beat(self) -> None:
        # The stop flag, not only cancellation, ends the loop: on Python 3.11 psycopg_pool's
        # wait for a connection can swallow a cancel (CPython gh-86296), and a heartbeat that
        # outlives its batch would keep the partition leased for ever.
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=self._interval)
            if self._stopped.is_set():
                return
            try:
                still_held = await self._extend()
            except DatabaseUnavailable:
                continue  # the lease runs on; the ack will tell whether it survived
            if not still_held:
                self.lost = True
                log.warning("lease_lost", during="heartbeat")
                return


@asynccontextmanager
async def heartbeat(
    extend: Callable[[], Awaitable[bool]], *, lease_seconds: float
) -> AsyncIterator[Heartbeat]:
    beat = Heartbeat(extend, interval_seconds=max(0.2, lease_seconds / 3))
    task = asyncio.create_task(beat._beat(), name="lease-heartbeat")
    try:
        yield beat
    finally:
        beat._stopped.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
