"""Watching a run: progress from the database, CPU and memory from /proc (psutil).

Rates come from the steady part of a drain: the time between 5 % and 95 % of the backlog done,
so process start-up, the first poll and the last partial batches do not count. CPU is sampled
at the same two instants, per process group (workers, PostgreSQL, the fake provider).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import psutil
import psycopg

from bench import sql

WINDOW = (0.05, 0.95)
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class CpuSample:
    at: float
    seconds: dict[str, float]  # group name -> CPU seconds used so far (user + system)


class ProcessGroups:
    """CPU seconds of named process groups; processes that appear later are picked up."""

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]):
        self._groups = groups
        self._procs: dict[int, psutil.Process] = {}
        self._peak_rss: dict[int, int] = {}

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return proc

    def sample(self) -> CpuSample:
        seconds: dict[str, float] = {}
        for name, pids in self._groups.items():
            total = 0.0
            for pid in pids():
                proc = self._proc(pid)
                if proc is None:
                    continue
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self._peak_rss[pid] = max(self._peak_rss.get(pid, 0), rss)
            seconds[name] = total
        return CpuSample(time.monotonic(), seconds)

    def peak_rss(self, pid: int) -> int:
        """The larger of the sampled peak and the kernel's high-water mark (VmHWM)."""
        peak = self._peak_rss.get(pid, 0)
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        return peak


def postgres_pids(dsn: str) -> Callable[[], list[int]]:
    """The postmaster and all its children (backends, background workers), if local."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # While the connection is open: once closed, its backend exits and the lookup raced
        # it (the PostgreSQL CPU of some runs read 0).
        try:
            postmaster = psutil.Process(row[0]).parent()
        except psutil.Error:
            postmaster = None  # a server elsewhere (CLEANUP_WORKER_TEST_DSN): not measurable

    def pids() -> list[int]:
        if postmaster is None:
            return []
        try:
            return [postmaster.pid, *(c.pid for c in postmaster.children())]
        except psutil.Error:
            return []

    return pids


@dataclass
class Window:
    """The steady part of one drain: messages done in it, its length, CPU used in it."""

    messages: float
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0  # from the first message done to the last

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def cores(self, group: str) -> float:
        """Average cores the group used during the window."""
        return self.cpu.get(group, 0.0) / self.seconds if self.seconds > 0 else 0.0

    def cpu_ms_per_message(self, group: str) -> float:
        return self.cpu.get(group, 0.0) * 1000 / self.messages if self.messages else 0.0


Counter = Callable[[], Awaitable[int]]


async def watch_drain(
    done_count: Counter,
    total: int,
    groups: ProcessGroups | None = None,
    *,
    timeout_seconds: float,
    alive: Callable[[], str | None] = lambda: None,
) -> Window:
    """Poll ``done_count`` until it reaches ``total``; measure the 5 %..95 % window.

    ``alive`` returns why the run cannot finish (a worker died), or None.
    """
    lo, hi = (max(1, round(total * f)) for f in WINDOW)
    started = time.monotonic()
    first: float | None = None
    at_lo: tuple[float, int, CpuSample | None] | None = None
    at_hi: tuple[float, int, CpuSample | None] | None = None
    while True:
        done = await done_count()
        now = time.monotonic()
        if done > 0 and first is None:
            first = now
        if at_lo is None and done >= lo:
            at_lo = (now, done, groups.sample() if groups else None)
        if at_hi is None and done >= hi:
            at_hi = (now, done, groups.sample() if groups else None)
        if done >= total:
            break
        if (dead := alive()) is not None:
            raise RuntimeError(f"drain cannot finish ({done}/{total} done): {dead}")
        if now - started > timeout_seconds:
            raise TimeoutError(f"drain stalled: {done}/{total} done after {timeout_seconds:g}s")
        if groups is not None:
            groups.sample()  # keeps the RSS peaks current
        await asyncio.sleep(POLL_SECONDS)
    assert at_lo is not None
    assert at_hi is not None
    assert first is not None
    window = Window(messages=at_hi[1] - at_lo[1], seconds=at_hi[0] - at_lo[0])
    window.total_seconds = time.monotonic() - first
    if at_lo[2] is not None and at_hi[2] is not None:
        window.cpu = {name: at_hi[2].seconds[name] - at_lo[2].seconds[name]
                      for name in at_hi[2].seconds}  # fmt: skip
    if window.seconds <= 0:  # toy sizes: the whole backlog in one poll; use the whole drain
        window.messages, window.seconds = float(total), max(window.total_seconds, POLL_SECONDS)
    return window


class Database:
    """The harness's own connection to a scenario database (progress and counters)."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]):
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> Database:
        return cls(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def close(self) -> None:
        await self.conn.close()

    async def scalar(self, name: str, params: dict[str, object] | None = None) -> int:
        cur = await self.conn.execute(sql.q(name), params or {})
        row = await cur.fetchone()
        assert row is not None
        value = row[0]
        assert isinstance(value, int)
        return value

    async def row(self, name: str) -> dict[str, int]:
        cur = await self.conn.execute(sql.q(name))
        row = await cur.fetchone()
        assert row is not None
        assert cur.description is not None
        return {c.name: int(v) for c, v in zip(cur.description, row, strict=True)}  # type: ignore[call-overload]

    async def execute(self, name: str, params: dict[str, object]) -> None:
        await self.conn.execute(sql.q(name), params)
