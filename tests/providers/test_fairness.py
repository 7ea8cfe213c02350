"""Fair share of a route between tenants (SPEC §15): ``RouteLimiter`` turns and deferrals.

The limiter runs on a fake clock whose ``sleep`` moves it, so grant order and grant times are
exact: every turn below is the one fair queuing must give, not a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from worker.providers.limits import RouteBusy, RouteDeferred, RouteLimiter

BIG_WAIT = 1000.0  # fake seconds: never the limit in these tests


class FakeTime:
    """A clock that only ``sleep`` moves (the dispatcher's token waits).

    A sleep first lets every runnable task run at the old time (a call granted a turn records
    the time it was granted), then moves the clock; while ``held``, it waits to be released.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.running = asyncio.Event()
        self.running.set()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await settle()
        await self.running.wait()
        self.now += seconds


def limiter(
    time: FakeTime, *, rps: float = 1.0, concurrency: int = 100, fair_queue: float = 0.0
) -> RouteLimiter:
    return RouteLimiter(concurrency, rps, time, time.sleep, fair_queue_seconds=fair_queue)


async def call(
    route: RouteLimiter, tenant: Hashable, grants: list[tuple[Hashable, float]], time: FakeTime
) -> None:
    """One request: record who got the turn and when, then leave the slot at once."""
    async with route.slot(BIG_WAIT, tenant):
        grants.append((tenant, time.now))


async def settle() -> None:
    """Let every task that can run, run (the waiters queue up, in creation order)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiting_tenants_take_turns_round_robin() -> None:
    time = FakeTime()
    route = limiter(time, rps=1.0)  # burst 1: the first call goes at once, the rest wait
    grants: list[tuple[Hashable, float]] = []
    tenants = ["heavy"] * 6 + ["light"] * 2 + ["third"]
    tasks = [asyncio.create_task(call(route, t, grants, time)) for t in tenants]

    await asyncio.gather(*tasks)

    order = [tenant for tenant, _ in grants]
    # The first heavy call took the saved token; then the waiting tenants alternate.
    assert order == [
        "heavy", "heavy", "light", "third", "heavy", "light", "heavy", "heavy", "heavy",
    ]  # fmt: skip
    assert [at for _, at in grants] == [float(i) for i in range(9)]  # one token per second


async def test_a_tenant_alone_gets_the_whole_budget() -> None:
    time = FakeTime()
    route = limiter(time, rps=10.0, fair_queue=10.0)  # room for all of its calls to queue
    grants: list[tuple[Hashable, float]] = []

    await asyncio.gather(*(call(route, "only", grants, time) for _ in range(50)))

    # 10 saved tokens at once, then one every 0.1 s without a gap: the full 10/s.
    times = [at for _, at in grants]
    assert len(times) == 50
    assert times[:10] == [0.0] * 10
    assert times[-1] == pytest.approx(4.0)


async def test_deferring_a_tenant_keeps_the_route_busy_for_it_alone() -> None:
    """Over its queue bound a lone tenant is deferred, yet every token still goes to it."""
    time = FakeTime()
    route = limiter(time, rps=10.0, fair_queue=0.5)  # at most 5 queued
    grants: list[tuple[Hashable, float]] = []
    deferred: list[float] = []

    async def one() -> None:
        try:
            await call(route, "only", grants, time)
        except RouteDeferred as exc:
            deferred.append(exc.retry_after_seconds)

    await asyncio.gather(*(one() for _ in range(30)))

    assert len(grants) == 15  # 10 saved tokens + 5 queued
    assert len(deferred) == 15
    # The deferred ones are due one token apart, after what was queued: the tenant's next
    # turns at the full rate (it is the only tenant), none sooner than the queue drains.
    assert deferred == pytest.approx([0.5 + 0.1 * (i + 1) for i in range(15)])


async def test_a_tenant_over_its_share_is_deferred_and_others_are_not() -> None:
    time = FakeTime()
    time.running.clear()  # the clock stands still until the queues are set up
    route = limiter(time, rps=4.0, fair_queue=0.5)  # at most 2 queued per tenant
    grants: list[tuple[Hashable, float]] = []
    heavy = [asyncio.create_task(call(route, "heavy", grants, time)) for _ in range(4 + 2)]
    await settle()  # 4 saved tokens taken, 2 queued: heavy has its share waiting

    light = asyncio.create_task(call(route, "light", grants, time))
    await settle()  # light waits too, with one call: within its share

    with pytest.raises(RouteDeferred) as first:
        await call(route, "heavy", grants, time)
    with pytest.raises(RouteDeferred) as second:
        await call(route, "heavy", grants, time)
    time.running.set()
    await asyncio.gather(*heavy, light)

    # Two tenants wait: heavy's share is 2/s, its next turns 0.5 s apart after its queue.
    assert first.value.retry_after_seconds == pytest.approx(1.5)
    assert second.value.retry_after_seconds == pytest.approx(2.0)
    assert "share" in first.value.detail
    assert [t for t, _ in grants][4:] == ["heavy", "light", "heavy"]
    assert route.waiting("heavy") == route.waiting("light") == 0


async def test_no_tenant_starves_behind_a_refilled_backlog() -> None:
    """A tenant that starts waiting gets a turn within one round of the waiting tenants."""
    time = FakeTime()
    route = limiter(time, rps=1.0, concurrency=1)
    grants: list[tuple[Hashable, float]] = []
    stop, twenty_turns = asyncio.Event(), asyncio.Event()

    async def busy_tenant(name: str) -> None:  # always has calls waiting
        while not stop.is_set():
            await call(route, name, grants, time)
            if len(grants) >= 20:
                twenty_turns.set()

    workers = [asyncio.create_task(busy_tenant(n)) for n in ("a", "a", "b", "b", "b")]
    await twenty_turns.wait()
    joined_at = len(grants)
    await call(route, "late", grants, time)
    stop.set()
    await asyncio.gather(*workers)

    late = [t for t, _ in grants].index("late")
    assert late - joined_at <= 2  # at most one turn of each tenant already waiting


async def test_a_waiting_call_that_gives_up_takes_nothing() -> None:
    """Timed out or cancelled while waiting: no slot, no token kept; the others proceed."""
    time = FakeTime()
    route = RouteLimiter(1, 1000.0, time, time.sleep, fair_queue_seconds=0.0)
    release = asyncio.Event()

    async def holder() -> None:
        async with route.slot(BIG_WAIT, "a"):
            await release.wait()

    held = asyncio.create_task(holder())
    await settle()
    with pytest.raises(RouteBusy) as busy:
        async with route.slot(0.01, "b"):
            pytest.fail("granted a slot that was taken")
    cancelled = asyncio.create_task(call(route, "c", [], time))
    await settle()
    cancelled.cancel()
    release.set()
    await held

    grants: list[tuple[Hashable, float]] = []
    await asyncio.wait_for(call(route, "d", grants, time), 1.0)
    assert busy.value.detail.startswith("all 1 slots busy")
    assert [t for t, _ in grants] == ["d"]
    assert route.waiting("b") == route.waiting("c") == 0


async def test_bound_off_means_no_deferral() -> None:
    time = FakeTime()
    route = limiter(time, rps=2.0, fair_queue=0.0)
    grants: list[tuple[Hashable, float]] = []

    await asyncio.gather(*(call(route, "only", grants, time) for _ in range(20)))

    assert len(grants) == 20


async def test_a_turn_beyond_the_call_budget_is_refused_at_once() -> None:
    """Its round-robin turn is known: a call that would wait past its budget does not wait."""
    time = FakeTime()
    time.running.clear()
    route = limiter(time, rps=1.0)
    grants: list[tuple[Hashable, float]] = []
    heavy = [asyncio.create_task(call(route, "heavy", grants, time)) for _ in range(4)]
    await settle()  # one went with the saved token; three wait, one token a second

    with pytest.raises(RouteBusy) as busy:
        async with route.slot(1.5, "light"):
            pytest.fail("granted a turn two tokens away within 1.5 s")
    # Within budget: one heavy call, then light's turn (not after all three heavy ones).
    light = asyncio.create_task(call(route, "light", grants, time))
    await settle()
    time.running.set()
    await asyncio.gather(*heavy, light)

    assert busy.value.retry_after_seconds == pytest.approx(2.0)
    assert [t for t, _ in grants] == ["heavy", "heavy", "light", "heavy", "heavy"]


async def test_when_slots_are_the_limit_the_share_follows_what_the_slots_serve() -> None:
    """2 slots, calls of 1 s: the route serves 2/s whatever its token rate (100/s). A tenant's
    queue bound and its deferral schedule follow those 2/s, not the unused tokens."""
    time = FakeTime()
    time.running.clear()
    route = limiter(time, rps=100.0, concurrency=2, fair_queue=1.0)

    answer = asyncio.Event()
    answer.set()

    async def one_second_call() -> None:
        async with route.slot(BIG_WAIT, "only"):
            await answer.wait()
            time.now += 1.0  # the request takes a second

    for _ in range(5):  # how long calls hold their slot is learnt from the calls
        await one_second_call()
    answer.clear()
    holders = [asyncio.create_task(one_second_call()) for _ in range(2 + 2)]
    await settle()  # 2 hold the slots, 2 wait: its share of 2/s x 1 s

    with pytest.raises(RouteDeferred) as first:
        await one_second_call()
    with pytest.raises(RouteDeferred) as second:
        await one_second_call()
    time.running.set()
    answer.set()
    await asyncio.gather(*holders)

    # Next turns after the 2 queued, half a second apart (2/s), not 1/100 s apart.
    assert first.value.retry_after_seconds == pytest.approx(1.5)
    assert second.value.retry_after_seconds - first.value.retry_after_seconds == pytest.approx(0.5)


async def test_a_pause_set_while_a_turn_waits_for_its_token_holds_that_turn_back() -> None:
    """A 429's Retry-After arriving while the next turn waits for its token: no call goes out
    before the pause ends."""
    time = FakeTime()
    time.running.clear()
    route = limiter(time, rps=1.0)
    grants: list[tuple[Hashable, float]] = []
    calls = [asyncio.create_task(call(route, t, grants, time)) for t in ("a", "b")]
    await settle()  # a took the saved token; b's turn waits a second for the next one

    route.pause_for(5.0)
    time.running.set()
    await asyncio.gather(*calls)

    assert grants[0] == ("a", 0.0)
    assert grants[1][0] == "b"
    assert grants[1][1] >= 5.0
