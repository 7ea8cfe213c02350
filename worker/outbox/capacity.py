"""How much work one process has taken on, and how much more it may lease (SPEC §15).

One object per engine, shared by its lanes (which decide how much to lease) and its runner
(which runs handlers in the slots). Leasing only what the process can soon start is what lets
replicas share the work: a busy replica that leased greedily parked whole batches while others
idled (4 replicas ran at under 2x one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class Capacity:
    """The handler slots of one process and the messages that hold them or will.

    A message is *taken* from the moment a lane reserves it (before leasing, so lanes deciding
    at once see each other's batches) until its handler has finished::

        taken = reserved     leased or being read, not yet handed to the runner
              + unfinished   handed to the runner: running, settled by its batch step,
                             or queued for a slot

    Invariant: ``reserved >= 0``, ``unfinished >= 0``, and at most ``slots`` handlings hold a
    slot at once (``slot()``). A handling holds one from start to end, or, for a
    ``models.CallSlotHandler``, only around its provider calls; it is unfinished either way.
    From it: ``wanted = max(0, slots + ahead - taken)`` with ``ahead = slots // 4``, and a
    lane leases only while it is positive; ``room = max(0, 2 * slots - taken)``, the most a
    busy process takes on (its slots plus one wave of queue; more would only wait here while
    other replicas have free slots). ``ahead`` keeps a quarter of the slots' worth of
    messages queued while all slots run, so a slot that frees starts its next message at
    once: leasing only when a slot was already free left it idle for a lease, a read and a
    batch step (at provider latency 100 ms and 64 slots, 0.78-0.80 of the ideal rate,
    0.83-0.86 with it). Half the slots queued ahead held partitions another replica could
    have worked (2 replicas ran at 1.5-1.6x one, 1.9x with a quarter; docs/PERFORMANCE.md).
    Each message that finishes and each reservation given back wakes at most one waiting
    lane, so a freed slot is refilled at once, without every lane racing for it.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a process needs at least one handler slot, got {slots}")
        self.slots = slots
        self.ahead = slots // 4
        self._running = asyncio.Semaphore(slots)
        self._reserved = 0
        self._unfinished = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def taken(self) -> int:
        return self._reserved + self._unfinished

    @property
    def idle(self) -> bool:
        return self.taken == 0

    @property
    def wanted(self) -> int:
        """Messages this process wants leased now: its slots' worth plus ``ahead`` queued."""
        return max(0, self.slots + self.ahead - self.taken)

    @property
    def room(self) -> int:
        """Messages this process can take on now: its slots plus one wave of queue."""
        return max(0, 2 * self.slots - self.taken)

    def lease_limit(self, batch_size: int) -> int:
        """How many messages one lease may read now: a whole batch while idle, else ``room``."""
        return batch_size if self.idle else min(batch_size, self.room)

    def reserve(self, count: int) -> None:
        """Count ``count`` messages as taken while they are leased and read.

        Lanes decide how much to lease before awaiting the database: unreserved, every lane of
        an idle process saw it idle at once and each leased a full batch, and other replicas
        had nothing left to lease (4 replicas drained at under 3x one).
        """
        self._reserved += count

    def unreserve(self, count: int) -> None:
        """Give back ``count`` reserved messages (not leased, or read and about to be admitted)."""
        if count > self._reserved:
            raise RuntimeError(f"unreserving {count} messages, {self._reserved} reserved")
        self._reserved -= count
        for _ in range(min(count, len(self._waiters))):
            self._wake_one()

    def admit(self, count: int) -> None:
        """``count`` messages were handed to the runner; each ends with one ``finish()``."""
        self._unfinished += count

    def finish(self) -> None:
        """One admitted message finished (or was cancelled): its slot may be refilled."""
        if self._unfinished == 0:
            raise RuntimeError("a message finished that was never admitted")
        self._unfinished -= 1
        self._wake_one()

    @contextlib.asynccontextmanager
    async def slot(self, *, at_once: bool = True) -> AsyncIterator[SlotHold]:
        """One handling's slot (``async with capacity.slot() as hold:``); at most ``slots``
        are held at once. ``at_once=False``: not held until ``hold.acquire()``."""
        hold = SlotHold(self._running)
        if at_once:
            await hold.acquire()
        try:
            yield hold
        finally:
            hold.release()

    async def wait_until_wanted(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the process wants more messages, waiting up to ``timeout`` for it to."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.wanted:
            if (left := deadline - loop.time()) <= 0:
                return False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, left)
        return True

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that timed out is cancelled, hence done
                waiter.set_result(None)
                return


class SlotHold:
    """One handling's hold on a slot (``models.Slot``): taken and given back any number of
    times, never twice over; given back at the latest when the handling ends."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self) -> None:
        if not self._held:
            await self._semaphore.acquire()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()
