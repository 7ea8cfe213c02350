"""The reliability scenarios (SPEC §11 under load and faults), one implementation for both the
CI tests (size ``small``) and ``scripts/reliability.py`` (``medium`` / ``full``).

Each scenario builds a ``Cluster`` (fresh database, fake provider, worker processes), seeds
a backlog through the chat service's flows, does its damage, waits until nothing is
outstanding, and then proves from the database, the fake's request log and the workers' own
output that nothing was lost. It returns a ``Result`` of figures, or raises AssertionError
listing every violated property.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwlab.postgres import PostgresServer
from reliability import harness as h
from reliability.harness import Cluster, SeedPlan, Verdict, World
from worker.outbox.enqueue import enqueue

SIZES = ("small", "medium", "full")


@dataclass
class Result:
    number: int
    title: str
    size: str
    figures: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    # The columns every scenario reports (docs/RELIABILITY.md).
    def row(self) -> dict[str, Any]:
        f = self.figures
        return {
            "messages": f.get("messages"),
            "faults injected": f.get("faults_injected", 0),
            "kills": f.get("kills", 0),
            "lost": f.get("lost"),
            "duplicates (repeat deletes)": f.get("repeat_deletes"),
            "time to recover": f.get("recover"),
            "wall time": f"{f.get('wall_seconds', 0):.1f} s",
        }


Scenario = Callable[[PostgresServer, Path, str], Awaitable[Result]]


def _pick(size: str, small: Any, medium: Any, full: Any) -> Any:
    return {"small": small, "medium": medium, "full": full}[size]


async def _common_checks(
    c: Cluster,
    world: World,
    v: Verdict,
    *,
    allow_crash: bool = False,
    expect_takeovers: bool = False,
    expect_stale: bool = False,
) -> None:
    await h.verify_nothing_lost(c, world, v)
    v.figures.update(h.count_repeats(c, world))
    # What the (surviving) workers saw time out or break: each such request may have been
    # carried out by the provider all the same, and then explains one repeat delete.
    texts = [r.last_metrics for r in c.replicas if not r.killed]
    v.figures["worker_seen_timeouts"] = h.metric_sum(
        texts, "mini_chat_provider_requests_total", outcome="timeout"
    )
    v.figures["worker_seen_connection_errors"] = h.metric_sum(
        texts, "mini_chat_provider_requests_total", outcome="connection"
    )
    h.verify_routing(c, world, v)
    h.verify_no_secrets(c, v, await h.database_texts(c))
    h.verify_clean_logs(c, v, allow_crash=allow_crash)
    await h.check_leases(
        c, v, expect_takeovers=expect_takeovers, expect_stale_handling=expect_stale
    )


# -- 1. four replicas drain a large backlog -----------------------------------------------------


async def s1_replicas_drain_backlog(server: PostgresServer, workdir: Path, size: str) -> Result:
    """≥4 ``run`` processes on one database drain a backlog seeded through the producer flows.
    Each provider resource is deleted once (no repeat DELETE at all, there is no crash), and
    no partition or parked message is ever held by two workers at once (audit + logs)."""
    replicas = _pick(size, 4, 4, 6)
    plan = _pick(
        size,
        SeedPlan(chats=40, files_per_chat=(2, 8), live_chats=12, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(2, 12), live_chats=60, singles_per_live_chat=(1, 6)),
        SeedPlan(chats=600, files_per_chat=(2, 14), live_chats=150, singles_per_live_chat=(1, 6)),
    )
    v = Verdict()
    # Small batches: many lease hand-overs between the replicas, for the exclusivity checks.
    async with h.cluster(server, workdir, "s1", config={"outbox.batch_size": 10}) as c:
        booted = time.monotonic()
        await c.start_replicas(replicas)
        startup = time.monotonic() - booted
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        started = time.monotonic()
        drained = await c.wait_drained(_pick(size, 90, 300, 600))
        wall = time.monotonic() - started
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await _common_checks(c, world, v)
        # No crash, no fault: a repeat needs a request the worker saw time out or break (a
        # loaded machine) although the provider carried it out.
        seen = v.figures["worker_seen_timeouts"] + v.figures["worker_seen_connection_errors"]
        v.require(
            v.figures["repeat_deletes"] <= seen,
            f"{v.figures['repeat_deletes']} repeat deletes, only {seen:g} requests the"
            " workers saw time out or break",
        )
        per_replica = Counter()
        for r in c.replicas:
            per_replica[r.name] = sum(1 for e in r.events() if e.get("event") == "message_handled")
        v.figures.update(
            replicas=replicas,
            startup_seconds=round(startup, 1),
            drain_seconds=round(drained, 1),
            wall_seconds=wall,
            attachments_per_second=round(len(world.attachments) / max(drained, 0.001), 1),
            handled_per_replica=dict(per_replica),
        )
        v.require(
            sum(1 for n in per_replica.values() if n > 0) >= 2,
            f"work was not shared: {dict(per_replica)}",
        )
    v.check()
    return Result(1, f"{replicas} replicas drain a backlog", size, v.figures)


# -- 2. kill -9 of a random replica every few seconds ---------------------------------------------


async def s2_kill9_replicas(server: PostgresServer, workdir: Path, size: str) -> Result:
    """The same with ``kill -9`` of a random replica every few seconds and a restart at once
    (the first two kills at fixed progress, so even a fast machine kills mid-drain).
    A killed replica's leases expire (lease_seconds = 5) and others redeliver its batches; a
    repeat DELETE is only possible where a process died between a provider answer and the
    database write (it then answers 404 and counts as done)."""
    replicas = _pick(size, 4, 4, 4)
    interval = _pick(size, 2.5, 3.0, 3.0)
    max_kills = _pick(size, 5, 12, 25)
    plan = _pick(
        size,
        SeedPlan(chats=50, files_per_chat=(2, 8), live_chats=15, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(2, 12), live_chats=60, singles_per_live_chat=(1, 6)),
        SeedPlan(chats=600, files_per_chat=(2, 14), live_chats=150, singles_per_live_chat=(1, 6)),
    )
    v = Verdict()
    # Provider latency and narrow concurrency keep batches in flight (kills land mid-batch)
    # and make the drain outlast several kills.
    config = {"outbox.batch_size": 5, "outbox.concurrency": 8, "cleanup.file_concurrency": 2}
    async with h.cluster(server, workdir, "s2", fake_latency=0.2, config=config) as c:
        await c.start_replicas(replicas)
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        started = time.monotonic()
        kills: list[float] = []  # wall-clock time of each kill
        victims: list[h.Replica] = []
        rng = random.Random(2)
        last_kill = time.monotonic()
        initial = sum((await c.outstanding()).values())
        # The first two kills follow progress (a fast machine drains a small backlog in a few
        # seconds), later ones the clock: every run kills mid-drain at least twice.
        milestones = [0.85 * initial, 0.55 * initial]

        async def chaos(outstanding: dict[str, int]) -> None:
            nonlocal last_kill
            left = sum(outstanding.values())
            due = bool(milestones) and left <= milestones[0]
            due = due or (not milestones and time.monotonic() - last_kill >= interval)
            if len(kills) >= max_kills or not due:
                return
            if milestones:
                milestones.pop(0)
            victim = rng.choice(c.running)
            victim.kill9()
            kills.append(time.time())
            victims.append(victim)
            last_kill = time.monotonic()
            c.start_replica()  # a restart: a new process, a new worker id

        drained = await c.wait_drained(_pick(size, 120, 400, 900), on_tick=chaos)
        await asyncio.gather(*(r.wait_started() for r in c.running))
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        v.require(len(kills) >= 2, f"only {len(kills)} kills happened before the drain ended")
        await _common_checks(c, world, v, expect_takeovers=True)
        # Recovery: from a kill to the takeover of the last lease the dead process held.
        recoveries = []
        for killed_at, victim in zip(kills, victims, strict=True):
            taken = await h.scalar(
                c.dsn,
                "SELECT max(extract(epoch FROM at)) FROM rel_lease_audit"
                " WHERE old_by = %s AND new_by IS NOT NULL AND new_by <> old_by",
                (victim.worker_id,),
            )
            if taken is not None:
                recoveries.append(float(taken) - killed_at)
        v.figures.update(
            replicas=replicas,
            kills=len(kills),
            processes=len(c.replicas),
            leases_orphaned_by_kills=len(recoveries),
            recover_seconds_max=round(max(recoveries, default=0.0), 1),
            recover=(
                f"{max(recoveries):.1f} s max (kill → its leases taken over)"
                if recoveries
                else "no lease held at a kill"
            ),
            faults_injected=f"{len(kills)} x SIGKILL",
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
        v.require(max(recoveries, default=0.0) <= 5 + 3, f"recoveries {recoveries}")
        # A repeat needs a death between the provider's answer and the database write.
        v.require(
            v.figures["repeat_deletes"] <= len(kills) * 64,
            f"{v.figures['repeat_deletes']} repeats for {len(kills)} kills",
        )
    v.check()
    title = f"kill -9 of a random replica at 15 % and 45 % drained, then every {interval:g} s"
    return Result(2, title, size, v.figures)


# -- 3. PostgreSQL stopped and restarted mid-drain ----------------------------------------------


async def s3_database_restart(server: PostgresServer, workdir: Path, size: str) -> Result:
    """PostgreSQL stopped mid-drain and started again: the daemons never exit, /healthz stays
    200 and /readyz turns 503 during the outage; a replica that noticed reads ``database_up`` 0
    and logs no "recovered" until the database is back; work resumes within seconds of the
    database coming back (measured: database back -> first committed progress)."""
    if not server.restartable:
        raise RuntimeError(f"a {server.kind} PostgreSQL cannot be restarted here")
    replicas = _pick(size, 3, 4, 4)
    outages = _pick(size, [4.0], [5.0, 12.0], [5.0, 15.0])
    plan = _pick(
        size,
        SeedPlan(chats=50, files_per_chat=(2, 8), live_chats=12, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(2, 12), live_chats=60, singles_per_live_chat=(1, 6)),
        SeedPlan(chats=500, files_per_chat=(2, 14), live_chats=120, singles_per_live_chat=(1, 6)),
    )
    v = Verdict()
    recoveries: list[float] = []
    scrapes = Counter[str]()
    health_total: Counter[int] = Counter()
    ready_total: Counter[int] = Counter()
    async with h.cluster(
        server, workdir, "s3", fake_latency=0.1, config={"outbox.batch_size": 10}
    ) as c:
        live = await c.start_replicas(replicas)
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        started = time.monotonic()
        for n, outage in enumerate(outages):
            base = await c.progress()
            await h.wait_until(
                lambda b=base: _progressed(c, b, 20),
                timeout=60,
                what="work in progress before the outage",
            )
            recovered_before = {r.name: _count_events(r, "database_recovered") for r in live}
            server.stop()
            try:
                down_since = time.monotonic()
                ready_codes: Counter[int] = Counter()
                health_codes: Counter[int] = Counter()
                while time.monotonic() - down_since < outage:
                    for r in live:
                        v.require(r.running, f"{r.name} exited during outage {n}:\n{r.tail()}")
                        health_codes[_http_status(r, "/healthz")] += 1
                        ready_codes[_http_status(r, "/readyz")] += 1
                        scrapes[_truthful_while_down(r, v, n)] += 1
                    await asyncio.sleep(0.5)
                for r in live:
                    early = _count_events(r, "database_recovered") - recovered_before[r.name]
                    scrapes["database_recovered logged while down"] += early
                    v.require(
                        early == 0,
                        f"{r.name} logged database_recovered while the database was down",
                    )
            finally:
                server.start()
            back = time.monotonic()
            before = await _progress_retrying(c)
            await h.wait_until(
                lambda b=before: _progressed(c, b, 1),
                timeout=60,
                what="progress after the database came back",
                every=0.05,
            )
            recoveries.append(time.monotonic() - back)
            health_total.update(health_codes)
            ready_total.update(ready_codes)
            v.require(set(health_codes) == {200}, f"/healthz during the outage: {health_codes}")
            v.require(503 in ready_codes, f"/readyz during the outage: {ready_codes}")
        drained = await c.wait_drained(_pick(size, 120, 400, 900))
        noticed = 0
        for r in live:
            v.require(r.running, f"{r.name} exited:\n{r.tail()}")
            events = [e.get("event") for e in r.events()]
            # A loop that only waited for a pool connection (timeout 10 s) through a short
            # outage has nothing to report; one that met the outage reports both ends.
            if "database_unavailable" in events:
                noticed += 1
                v.require(
                    events.count("database_recovered") >= 1,
                    f"{r.name} reported the outage but not the recovery",
                )
        v.require(noticed > 0, "no replica reported the outage")
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        # No heartbeat gets through an outage: leases may expire and be taken over while
        # their holder still handles its batch (whose ack then fails).
        await _common_checks(c, world, v, expect_takeovers=True, expect_stale=True)
        v.figures.update(
            replicas=replicas,
            outages_seconds=outages,
            recover_seconds=[round(x, 1) for x in recoveries],
            recover=", ".join(
                f"{x:.1f} s (after {o:g} s down)" for x, o in zip(recoveries, outages, strict=True)
            ),
            faults_injected=f"{len(outages)} database outage(s)",
            replicas_reporting_outage=noticed,
            scrapes_while_down=dict(scrapes),
            truthful_while_down=_truth(scrapes),
            healthz_while_down=dict(health_total),
            readyz_while_down=dict(ready_total),
            causes_logged=_causes(live),
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(3, "PostgreSQL stopped and restarted mid-drain", size, v.figures)


async def _progressed(c: Cluster, base: int, by: int) -> bool:
    try:
        return await c.progress() >= base + by
    except Exception:  # the database is still starting
        return False


async def _progress_retrying(c: Cluster) -> int:
    deadline = time.monotonic() + 30
    while True:
        try:
            return await c.progress()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _http_status(r: h.Replica, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.http_port}{path}", timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


# -- 4. provider chaos ----------------------------------------------------------------------------

FAULT_KINDS = ("server_error", "reset", "timeout", "rate_limited")
BROKEN_TENANT = "own-oa-2"  # every file delete answers 503: its debt must be visible
# Provider timeout 2 s (the most a 5 s lease allows): a loaded 2-core machine must not turn
# a prompt answer into a client-side timeout, or the request log stops telling the truth.
S4_TIMEOUT_SECONDS = 2.0
S4_TIMEOUT_DELAY_SECONDS = 2.8  # an injected "timeout": the fake answers after the client gave up
CALL_GAP_SECONDS = 4.4  # > one call's budget (2 x timeout = 4 s), < the first retry delay (4.8 s)
CLIENT_OUTCOME = {
    "server_error": "server_error",
    "reset": "connection",
    "timeout": "timeout",
    "rate_limited": "rate_limited",
    "bad_request": "permanent",
}


async def s4_provider_chaos(server: PostgresServer, workdir: Path, size: str) -> Result:
    """A mix of 5xx, connection resets, timeouts (the fake answers after the client gave up)
    and 429 with Retry-After, plus one tenant whose provider fails every file delete. Every
    message ends terminal; each row's ``cleanup_attempts`` equals the failed calls the request
    log shows for its file; the replicas' scraped metrics, summed, equal the database and the
    request log."""
    replicas = _pick(size, 2, 4, 4)
    fault_share = 0.4
    max_attempts = 3
    plan = _pick(
        size,
        SeedPlan(chats=40, files_per_chat=(1, 6), live_chats=16, singles_per_live_chat=(1, 3)),
        SeedPlan(chats=200, files_per_chat=(1, 10), live_chats=60, singles_per_live_chat=(1, 5)),
        SeedPlan(chats=400, files_per_chat=(1, 12), live_chats=120, singles_per_live_chat=(1, 5)),
    )
    config = {
        "outbox.batch_size": 20,
        # A call never outlasts 4 s (2 x timeout); the next delivery comes >= 4.8 s later: the
        # request log's gaps then show where one call ends and the next begins.
        "outbox.retry": {"base_seconds": 6, "max_seconds": 6, "max_deliveries": 8},
        # A handler's time budget is lease_seconds: at 5 s it cuts a big chat's cleanup when
        # its files time out (two rounds of 8 files x a 4 s call), and a call it cancels is
        # neither an attempt nor a provider-request sample. 15 s leaves every call whole.
        "outbox.lease_seconds": 15,
        "cleanup.max_attempts": max_attempts,
        "providers.backends.openai.timeout_seconds": S4_TIMEOUT_SECONDS,
        "providers.backends.azure.timeout_seconds": S4_TIMEOUT_SECONDS,
        # Enough route slots that no call waits past its budget without sending (see docs).
        "providers.backends.openai.max_concurrency": 1000,
        "providers.backends.azure.max_concurrency": 1000,
    }
    v = Verdict()
    rng = random.Random(4)

    def faults(world: World) -> None:
        broken = next(t for t in world.tenants if t.name == BROKEN_TENANT)
        c.fake.inject(h.Fault(status=503, path_contains=f"{broken.prefix}/v1/files/"))
        for att in world.attachments.values():
            if not att.file_id:
                continue
            if att.tenant is broken:
                world.faults[att.file_id] = ("server_error", None)
                world.expected_failed.add(att.id)
            elif rng.random() < fault_share:
                kind = rng.choice(FAULT_KINDS)
                h.inject(
                    c.fake,
                    world,
                    att.file_id,
                    kind,
                    rng.randint(1, 2 if kind == "timeout" else 3),
                    timeout_delay=S4_TIMEOUT_DELAY_SECONDS,
                )
        for vs in world.vector_stores:
            if rng.random() < 0.3:
                h.inject(
                    c.fake, world, vs, rng.choice(("server_error", "reset")), rng.randint(1, 2)
                )

    async with h.cluster(server, workdir, "s4", config=config) as c:
        await c.start_replicas(replicas)
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng, prepare=faults)
        started = time.monotonic()
        drained = await c.wait_drained(_pick(size, 150, 400, 900))
        await asyncio.sleep(2.5)  # two backlog refreshes: the gauges show the final state
        texts = [r.scrape() for r in c.replicas]
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await _common_checks(c, world, v)
        await _check_attempts(c, world, v, max_attempts)
        await _check_metrics(c, world, v, texts)
        await _check_debt_visible(c, world, v)
        hits = _fault_hits(c, world)
        v.figures.update(
            replicas=replicas,
            faults_injected=sum(hits.values()),
            fault_hits=dict(hits),
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
            recover="n/a (provider faults are retried: see attempts)",
        )
    v.check()
    return Result(4, "provider chaos: 5xx, resets, timeouts, 429 + Retry-After", size, v.figures)


def _fault_hits(c: Cluster, world: World) -> Counter[str]:
    hits: Counter[str] = Counter()
    for resource, reqs in h._requests_by_resource(c.fake).items():
        kind, times = world.faults.get(resource, ("", 0))
        if kind:
            hits[kind] += len(reqs) if times is None else min(times, len(reqs))
    return hits


def pairs(reqs: list[h.RecordedRequest]) -> list[tuple[h.RecordedRequest, h.RecordedRequest]]:
    return list(itertools.pairwise(reqs))


def _calls(reqs: list[h.RecordedRequest]) -> list[list[int]]:
    """Indexes of ``reqs`` (arrival order) grouped into provider calls by arrival gaps."""
    calls: list[list[int]] = []
    for i, r in enumerate(reqs):
        if calls and r.at - reqs[calls[-1][-1]].at <= CALL_GAP_SECONDS:
            calls[-1].append(i)
        else:
            calls.append([i])
    return calls


async def _check_attempts(c: Cluster, world: World, v: Verdict, max_attempts: int) -> None:
    """cleanup_attempts of every row = the failed calls the request log implies for its file.

    A call is one gateway delete (up to 3 HTTP requests, in-call retries); it failed when its
    last request met an injected fault. The first ``times`` requests of a file (arrival order)
    are the faulted ones."""
    by = h._requests_by_resource(c.fake)
    db = {
        r["id"]: r
        for r in await h.rows(c.dsn, "SELECT id, cleanup_status, cleanup_attempts FROM attachments")
    }
    mismatched = []
    late = []  # one call more failed than the log shows: its answer came after the client quit
    calls_total = failed_calls_total = 0
    for file_id, att in world.files.items():
        reqs = by.get(file_id, [])
        kind, times = world.faults.get(file_id, ("", 0))
        hit = len(reqs) if times is None else min(times, len(reqs))
        calls = _calls(reqs)
        failed = sum(1 for call in calls if call[-1] < hit)
        calls_total += len(calls)
        failed_calls_total += failed
        row = db[att.id]
        ok = row["cleanup_attempts"] == failed
        if row["cleanup_status"] == "failed":
            ok = ok and failed == max_attempts and len(calls) == failed
        else:
            ok = ok and len(calls) == failed + 1 and reqs and hit < len(reqs)
        if not ok and row["cleanup_status"] == "done" and row["cleanup_attempts"] == failed + 1:
            late.append(file_id)
        elif not ok:
            mismatched.append(
                f"{file_id} {kind}x{times}: {row['cleanup_status']} attempts="
                f"{row['cleanup_attempts']}, log: {len(reqs)} requests in {len(calls)} calls,"
                f" {failed} failed; gaps {[round(b.at - a.at, 2) for a, b in pairs(reqs)]}"
            )
    v.figures.update(
        provider_calls=calls_total,
        failed_calls=failed_calls_total,
        attempts_mismatched=len(mismatched),
        # Checked against the metrics: each needs a request the worker saw fail although the
        # fake answered it (an in-call retry's shortened timeout on a loaded machine).
        attempts_explained_by_late_answers=len(late),
    )
    v.require(
        not mismatched,
        f"{len(mismatched)} rows whose attempts disagree with the request log: {mismatched[:4]}",
    )


async def _check_metrics(c: Cluster, world: World, v: Verdict, texts: list[str]) -> None:
    """The replicas' counters, summed, against the database and the request log."""
    m = lambda name, **labels: h.metric_sum(texts, name, **labels)  # noqa: E731
    truth = (
        await h.rows(
            c.dsn,
            """
        SELECT (SELECT count(*) FROM attachments WHERE cleanup_status = 'done'
                AND provider_file_id IS NOT NULL) AS files_done,
               (SELECT count(*) FROM attachments WHERE cleanup_status = 'failed') AS failed,
               (SELECT count(*) FROM attachments WHERE cleanup_status = 'pending') AS pending,
               (SELECT coalesce(sum(cleanup_attempts), 0) FROM attachments) AS attempts,
               (SELECT count(*) FROM chat_vector_stores) AS store_rows
    """,
        )
    )[0]
    dead = {
        r["queue"]: r["n"]
        for r in await h.rows(
            c.dsn,
            "SELECT p.queue, count(*) AS n FROM modkit_outbox_dead_letters d"
            " JOIN modkit_outbox_partitions p ON p.id = d.partition_id GROUP BY 1",
        )
    }
    messages = {
        r["queue"]: r["n"]
        for r in await h.rows(
            c.dsn, "SELECT queue, sum(sequence) AS n FROM modkit_outbox_partitions GROUP BY 1"
        )
    }
    parked = await h.scalar(
        c.dsn,
        "SELECT count(*) FROM rel_lease_audit WHERE kind = 'retry' AND (op = 'INSERT'"
        " OR (op = 'UPDATE' AND old_by IS NOT NULL AND new_by IS NULL))",
    )
    stores_seeded = len(world.vector_stores) + len(world.kept_vector_stores)
    kinds = {h.AQ: "attachment_cleanup", h.CQ: "chat_cleanup"}
    requests = [r for r in c.fake.requests() if r.resource_id is not None]
    hits = _fault_hits(c, world)
    expected_outcomes = Counter({CLIENT_OUTCOME[k]: n for k, n in hits.items()})
    expected_outcomes["deleted+not_found"] = len(requests) - sum(hits.values())
    # Two ways a loaded machine blurs the client's view of a request, both reported: an
    # answer that came after the client gave up (a retry inside a call gets only what is left
    # of the call's budget: a success, or another fault, then reads as a timeout), and a
    # request that never reached the fake (connect or pool timeout). Per failure class the
    # counts may then trade; the totals may not.
    failures = ("server_error", "connection", "timeout", "rate_limited")
    sample = {o: m("mini_chat_provider_requests_total", outcome=o) for o in failures}
    succeeded = m("mini_chat_provider_requests_total", outcome="deleted") + m(
        "mini_chat_provider_requests_total", outcome="not_found"
    )
    late = expected_outcomes["deleted+not_found"] - succeeded
    unreached = m("mini_chat_provider_requests_total") - len(requests)
    v.figures["late_answers"] = late
    v.figures["requests_that_never_reached_the_provider"] = unreached
    v.figures["failure_samples_vs_faults"] = {
        o: f"{sample[o]:g}/{expected_outcomes[o]}" for o in failures
    }
    v.require(late >= 0, f"{-late:g} more successes counted than the fake answered")
    v.require(unreached >= 0, f"{-unreached:g} fewer requests counted than the fake saw")
    retried_or_failed = m("mini_chat_cleanup_retry_total", resource_type="file") + m(
        "mini_chat_cleanup_failed_total", resource_type="file"
    )
    v.figures["retries_refused_before_sending"] = retried_or_failed - truth["attempts"]
    pairs = {
        "cleanup_completed{file} = done rows with a file": (
            m("mini_chat_cleanup_completed_total", resource_type="file"),
            truth["files_done"],
        ),
        "cleanup_failed{file} = failed rows": (
            m("mini_chat_cleanup_failed_total", resource_type="file"),
            truth["failed"],
        ),
        # A retry our own limiter or breaker refused (nothing sent) is counted but is no
        # attempt: the counters may exceed the attempts by those, never fall short.
        "cleanup_retry{file} + cleanup_failed{file} >= sum(cleanup_attempts)": (
            min(retried_or_failed, truth["attempts"]),
            truth["attempts"],
        ),
        "cleanup_completed{vector_store} = store rows deleted": (
            m("mini_chat_cleanup_completed_total", resource_type="vector_store"),
            stores_seeded - truth["store_rows"],
        ),
        "outbox_handler{retry} = retries parked (audit)": (
            m("mini_chat_outbox_handler_total", result="retry"),
            parked,
        ),
        "provider_requests{failures} = faulted + late answers + never reached": (
            sum(sample.values()),
            sum(expected_outcomes[o] for o in failures) + late + unreached,
        ),
    }
    v.require(
        v.figures["attempts_explained_by_late_answers"] <= late,
        f"{v.figures['attempts_explained_by_late_answers']} rows count one failed call more"
        f" than the request log shows, but only {late:g} answers came late",
    )
    v.require(
        late + unreached <= 0.01 * len(requests),
        f"{late:g} late answers and {unreached:g} unreached requests: the machine is too busy",
    )
    for queue, kind in kinds.items():
        pairs[f"outbox_dead_lettered{{{queue}}} = dead letters"] = (
            m("mini_chat_outbox_dead_lettered_total", queue=queue),
            dead.get(queue, 0),
        )
        pairs[f"outbox_handler{{{kind},success+reject}} = messages"] = (
            m("mini_chat_outbox_handler_total", kind=kind, result="success")
            + m("mini_chat_outbox_handler_total", kind=kind, result="reject"),
            messages.get(queue, 0),
        )
    # Gauges are per replica (each refreshes them from the database): every one must agree.
    for text in texts:
        pairs.setdefault("cleanup_backlog{failed,file} gauge = failed rows (each replica)", (0, 0))
        got = h.metric_sum(
            [text], "mini_chat_cleanup_backlog", state="failed", resource_type="file"
        )
        if got != truth["failed"]:
            pairs["cleanup_backlog{failed,file} gauge = failed rows (each replica)"] = (
                got,
                truth["failed"],
            )
    wrong = {name: (got, want) for name, (got, want) in pairs.items() if got != want}
    v.figures["metric_checks"] = len(pairs)
    v.figures["metric_mismatches"] = len(wrong)
    v.require(not wrong, f"metrics disagree with the database / request log: {wrong}")


async def _check_debt_visible(c: Cluster, world: World, v: Verdict) -> None:
    """Deliberate failures are visible: failed rows with their last error, dead letters with a
    reason for the attachment messages that gave up."""
    failed = await h.rows(
        c.dsn, "SELECT id, last_cleanup_error FROM attachments WHERE cleanup_status = 'failed'"
    )
    v.require(all(r["last_cleanup_error"] for r in failed), "failed rows without last error")
    v.require(
        {r["id"] for r in failed} == world.expected_failed,
        "failed rows differ from the deliberately broken ones",
    )
    dead = await h.rows(c.dsn, "SELECT payload, last_error FROM modkit_outbox_dead_letters")
    alone_broken = {
        a.id
        for a in world.attachments.values()
        if a.deleted_alone and a.id in world.expected_failed
    }
    dead_ids = set()
    for d in dead:
        doc = json.loads(bytes(d["payload"]))
        if "attachment_id" in doc:
            dead_ids.add(uuid.UUID(doc["attachment_id"]))
        v.require(
            "max attempts" in d["last_error"] or "refused" in d["last_error"],
            f"dead letter reason does not say why: {d['last_error']!r}",
        )
    # An attachment deleted alone before its chat hands over to the chat path (no dead letter).
    alone_of_live = {a for a in alone_broken if world.attachments[a].chat_id in world.live_chats}
    v.require(
        alone_of_live <= dead_ids,
        f"{len(alone_of_live - dead_ids)} broken single deletes without a dead letter",
    )


# -- 5. bad input ---------------------------------------------------------------------------------

SQLISH = (
    "'; DROP TABLE attachments; --",
    "1' OR '1'='1",
    "Robert'); DROP TABLE chats;--",
    "x'); DELETE FROM modkit_outbox_outgoing; --",
    "$$; TRUNCATE cleanup_worker_retries; $$",
    "\\'; SELECT pg_sleep(10); --",
)
ODD_STRINGS = (
    *SQLISH,
    "",
    " ",
    "\u0000",
    "\ud800",
    "😀" * 3,
    "x" * 200,
    "../../v1/files/x",
    "null",
    "None",
    "{}",
    "%s",
    "%(chat_id)s",
)
WRONG_TYPES: tuple[Any, ...] = (1, 1.5, -1, True, False, [], ["a"], {}, {"a": 1}, 10**30)
ATTACHMENT_FIELDS = (
    "event_type",
    "attachment_kind",
    "tenant_id",
    "chat_id",
    "attachment_id",
    "storage_backend",
)
CHAT_FIELDS = ("reason", "tenant_id", "chat_id", "system_request_id")
UUID_FIELDS = {"tenant_id", "chat_id", "attachment_id", "system_request_id"}
# Categories whose current behaviour is a known bug (see docs/RELIABILITY.md "Findings"): the
# scenario records what happens to them instead of failing, and fails once they behave (so the
# entry is removed together with the fix). Empty: findings 3 and 4 (deep nesting, 4300+-digit
# numbers, lone surrogates) are fixed.
KNOWN_BUGS: dict[str, str] = {}


@dataclass(frozen=True)
class Payload:
    queue: str
    partition: int
    body: bytes
    payload_type: str
    category: str
    expect: str  # "dead" | "ok"
    needle: str  # what the dead letter's reason must name (case-insensitive)


def _is_text(value: str) -> bool:
    """Text a row can hold: no lone surrogate (valid JSON, not UTF-8) and no NUL character
    (valid JSON and UTF-8, but no PostgreSQL text value can hold it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _attachment_event(n: int) -> dict[str, Any]:
    """A well-formed attachment_deleted event for ids that do not exist (processed: gone)."""
    return {
        "event_type": "attachment_deleted",
        "tenant_id": str(uuid.uuid4()),
        "chat_id": str(uuid.uuid4()),
        "attachment_id": str(uuid.uuid4()),
        "provider_file_id": f"file-missing-{n}",
        "vector_store_id": None,
        "storage_backend": "openai",
        "attachment_kind": "document",
        "deleted_at": "2025-01-01T00:00:00Z",
        "_n": n,
    }


def _chat_event(n: int) -> dict[str, Any]:
    """A well-formed chat_soft_delete event for a chat that does not exist (rejected)."""
    return {
        "reason": "chat_soft_delete",
        "tenant_id": str(uuid.uuid4()),
        "chat_id": str(uuid.uuid4()),
        "system_request_id": str(uuid.uuid4()),
        "chat_deleted_at": "2025-01-01T00:00:00Z",
        "_n": n,
    }


def generate_payloads(count: int, rng: random.Random) -> list[Payload]:
    """``count`` generated payloads over every way to be wrong, each unique (``_n`` nonce)."""

    def dump(doc: Any) -> bytes:
        if rng.random() < 0.5:
            try:  # raw UTF-8 where possible; a lone surrogate can only travel escaped
                return json.dumps(doc, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                pass
        return json.dumps(doc).encode()

    def verdict(queue: str, doc: dict[str, Any], f: str, category: str) -> Payload:
        """The expectation for ``doc`` whose field ``f`` was spoiled."""
        value = doc.get(f)
        if isinstance(value, str) and not _is_text(value):
            # A lone surrogate or a NUL: a valid JSON escape but not text, in any field.
            return Payload(
                queue, rng.randrange(4), dump(doc), "application/json", category, "dead", f
            )
        if f == "attachment_kind" and isinstance(value, str) and 1 <= len(value) <= 16:
            # Required but not read: any kind is accepted, so a kind the chat service adds
            # later cannot leak a file. The attachment does not exist: processed (404).
            return Payload(
                queue,
                rng.randrange(4),
                dump(doc),
                "application/json",
                category + ":kind_accepted",
                "ok",
                "",
            )
        if f == "storage_backend" and isinstance(value, str) and 1 <= len(value) <= 32:
            # A well-formed but unknown label: a configuration problem, retried, then
            # dead-lettered after max_deliveries saying which label (SPEC §6).
            return Payload(
                queue,
                rng.randrange(4),
                dump(doc),
                "application/json",
                "unknown_label",
                "dead",
                "backend label",
            )
        return Payload(queue, rng.randrange(4), dump(doc), "application/json", category, "dead", f)

    makers: list[Callable[[int], Payload]] = []

    def field_case(
        queue: str, fields: tuple[str, ...], base: Callable[[int], dict[str, Any]]
    ) -> None:
        def missing(n: int) -> Payload:
            f = rng.choice(fields)
            doc = base(n)
            if rng.random() < 0.5:
                del doc[f]
            else:
                doc[f] = None
            return verdict(queue, doc, f, "missing_field")

        def wrong_type(n: int) -> Payload:
            f = rng.choice(fields)
            doc = base(n)
            doc[f] = rng.choice(WRONG_TYPES)
            return verdict(queue, doc, f, "wrong_type")

        def odd_string(n: int) -> Payload:
            f = rng.choice(fields)
            doc = base(n)
            doc[f] = rng.choice(ODD_STRINGS)
            return verdict(queue, doc, f, "odd_string")

        def huge_string(n: int) -> Payload:
            f = rng.choice(fields)
            doc = base(n)
            # At most 10 000 characters: 6 bytes each as \\u escapes, under the 64 KiB limit.
            doc[f] = rng.choice(("A", "'", "é", "0")) * rng.randint(200, 10_000)
            return verdict(queue, doc, f, "huge_string")

        makers.extend([missing, wrong_type, odd_string, huge_string])

    field_case(h.AQ, ATTACHMENT_FIELDS, _attachment_event)
    field_case(h.CQ, CHAT_FIELDS, _chat_event)

    def queue() -> str:
        return rng.choice((h.AQ, h.CQ))

    def not_json(n: int) -> Payload:
        junk = rng.choice(
            (
                b"{",
                b'{"a": ',
                b"[1, 2",
                b"not json",
                b"\x00\x01",
                b"{'a': 1}",
                b'{"a": 1,}',
                b"",
                b"<xml/>",
                b"'; DROP TABLE attachments; --",
            )
        )
        return Payload(
            queue(),
            rng.randrange(4),
            b"%d " % n + junk,
            "application/json",
            "not_json",
            "dead",
            "json",
        )

    def bad_utf8(n: int) -> Payload:
        raw = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"))
        body = b'{"_n": %d, "tenant_id": "%s"}' % (n, raw)
        return Payload(
            queue(), rng.randrange(4), body, "application/json", "bad_utf8", "dead", "utf-8"
        )

    def not_object(n: int) -> Payload:
        doc = rng.choice(([n, "a"], n + 0.5, f"str-{n}", [None, n], [True, n]))
        return Payload(
            queue(),
            rng.randrange(4),
            dump(doc),
            "application/json",
            "not_object",
            "dead",
            "json object",
        )

    def wrong_payload_type(n: int) -> Payload:
        doc = _attachment_event(n) if rng.random() < 0.5 else _chat_event(n)
        q = h.AQ if "event_type" in doc else h.CQ
        ptype = rng.choice(
            (
                "text/plain",
                "application/xml",
                "application/json; charset=utf-8",
                "APPLICATION/JSON",
                "'; DROP TABLE x; --",
            )
        )
        return Payload(
            q, rng.randrange(4), dump(doc), ptype, "payload_type", "dead", "payload_type"
        )

    def unknown_value(n: int) -> Payload:
        if rng.random() < 0.5:
            doc = _chat_event(n)
            doc["reason"] = rng.choice(("chat_archived", "CHAT_SOFT_DELETE", *SQLISH))
            return Payload(
                h.CQ,
                rng.randrange(4),
                dump(doc),
                "application/json",
                "unknown_reason",
                "dead",
                "reason",
            )
        doc = _attachment_event(n)
        f = rng.choice(("event_type", "attachment_kind"))
        doc[f] = rng.choice(("attachment_created", "video", *SQLISH))
        return verdict(h.AQ, doc, f, "unknown_value")

    def bad_file_id(n: int) -> Payload:
        doc = _attachment_event(n)
        # NUL: valid JSON, but no row can hold it (PostgreSQL text), so it is bad input too.
        doc["provider_file_id"] = rng.choice(
            (*WRONG_TYPES, "f" * rng.randint(129, 5000), "file-\u0000")
        )
        return Payload(
            h.AQ,
            rng.randrange(4),
            dump(doc),
            "application/json",
            "bad_file_id",
            "dead",
            "provider_file_id",
        )

    def missing_chat(n: int) -> Payload:
        return Payload(
            h.CQ,
            rng.randrange(4),
            dump(_chat_event(n)),
            "application/json",
            "chat_not_found",
            "dead",
            "chat",
        )

    def gone_attachment(n: int) -> Payload:
        # Well-formed, extra fields, ids that do not exist: the file is already gone (404),
        # which is success; processed, not dead-lettered.
        doc = _attachment_event(n)
        doc["extra"] = {"nested": [1, 2, {"x": "'; DROP TABLE attachments; --"}]}
        if rng.random() < 0.5:
            doc["provider_file_id"] = (
                rng.choice(
                    (
                        *SQLISH,
                        "../../own-oa-1/v1/files/x",
                        "../../../az-shared/openai/files/x",
                        "x?api-version=1#",
                        "%2e%2e%2fx",
                        "file-😀",
                        " ",
                    )
                )
                + f"-{n}"
            )
        return Payload(
            h.AQ, rng.randrange(4), dump(doc), "application/json", "gone_attachment", "ok", ""
        )

    def deep_nesting(n: int) -> Payload:
        depth = rng.randint(2_000, 20_000)
        body = b'{"_n": %d, "x": ' % n + b"[" * depth + b"]" * depth + b"}"
        return Payload(
            queue(), rng.randrange(4), body, "application/json", "deep_nesting", "dead", "json"
        )

    def huge_int(n: int) -> Payload:
        body = b'{"_n": %d, "tenant_id": %s}' % (n, b"9" * rng.randint(5_000, 20_000))
        return Payload(
            queue(), rng.randrange(4), body, "application/json", "huge_int", "dead", "json"
        )

    def surrogate_id(n: int) -> Payload:
        # Valid JSON ("\ud800" escape) but not encodable text: must be rejected as bad input.
        doc = _attachment_event(n)
        doc["provider_file_id"] = f"file-\ud800-{n}"
        return Payload(
            h.AQ,
            rng.randrange(4),
            json.dumps(doc).encode(),
            "application/json",
            "surrogate_file_id",
            "dead",
            "provider_file_id",
        )

    makers += [
        not_json,
        bad_utf8,
        not_object,
        wrong_payload_type,
        unknown_value,
        bad_file_id,
        missing_chat,
        gone_attachment,
    ]
    rare = [deep_nesting, huge_int, surrogate_id]
    out = [maker(n) for n, maker in enumerate(makers + rare)]  # every category at least once
    while len(out) < count:
        n = len(out)
        maker = rng.choice(rare) if rng.random() < 0.01 else rng.choice(makers)
        out.append(maker(n))
    assert len({p.body for p in out}) == len(out), "payloads must be unique"
    return out


async def s5_bad_input(server: PostgresServer, workdir: Path, size: str) -> Result:
    """≥1000 generated bad payloads (wrong types, missing and extra fields, huge strings,
    invalid UTF-8 and JSON, unknown reasons, ids that do not exist, SQL-looking strings)
    enqueued with ``enqueue`` into the same partitions as good traffic: every bad one is
    dead-lettered with a reason naming the problem, every good one processed, no crash, and the
    tables are intact (schema and the chat service's rows unchanged)."""
    from worker.errors import PayloadTooLarge
    from worker.outbox.enqueue import enqueue

    replicas = _pick(size, 2, 3, 4)
    count = _pick(size, 1000, 2000, 5000)
    plan = _pick(
        size,
        SeedPlan(chats=20, files_per_chat=(1, 5), live_chats=10, singles_per_live_chat=(1, 3)),
        SeedPlan(chats=100, files_per_chat=(1, 8), live_chats=40, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(1, 8), live_chats=100, singles_per_live_chat=(1, 4)),
    )
    config = {
        "outbox.batch_size": 50,
        "outbox.retry": {"base_seconds": 0.2, "max_seconds": 0.5, "max_deliveries": 3},
        "cleanup.max_attempts": 2,
        # Thousands of messages for files that never existed, on the shared route, are to the
        # route-suspicion rule (SPEC §13) what a wrong key looks like: more than 10 distinct
        # not-founds in a row. This scenario is about the payload parser, so the rule stays out
        # of its way (tests/providers test the rule; a real route rarely meets such ghosts).
        "providers.route_suspicion.not_found_threshold": 100_000,
    }
    v = Verdict()
    rng = random.Random(5)
    payloads = generate_payloads(count, rng)
    async with h.cluster(server, workdir, "s5", config=config) as c:
        schema_before = await _schema(c)
        live = await c.start_replicas(replicas)
        started = time.monotonic()
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        async with await h.psycopg.AsyncConnection.connect(c.dsn, autocommit=True) as conn:
            for p in payloads:
                await enqueue(conn, p.queue, p.partition, p.body, p.payload_type)
            world.extra_messages += len(payloads)
            try:  # too big for the outbox at all: refused at enqueue, nothing written
                await enqueue(conn, h.AQ, 0, b"{" + b" " * (64 * 1024) + b"}")
                v.problems.append("a payload over 64 KiB was accepted by enqueue")
            except PayloadTooLarge:
                pass
            # More good traffic after the bad: the partitions keep moving.
        more = await h.seed(
            c.dsn,
            c.fake,
            c.tenants,
            SeedPlan(chats=5, files_per_chat=(1, 3), live_chats=3, singles_per_live_chat=(1, 2)),
            c.rng,
        )
        world.attachments.update(more.attachments)
        world.kept.update(more.kept)
        world.deleted_chats.update(more.deleted_chats)
        world.live_chats.update(more.live_chats)
        world.vector_stores.update(more.vector_stores)
        world.kept_vector_stores |= more.kept_vector_stores
        world.owner.update(more.owner)
        world.messages += more.messages
        counts_before = await _row_counts(c)
        drained = await c.wait_drained(_pick(size, 120, 300, 600))
        for r in live:
            v.require(r.running, f"{r.name} exited:\n{r.tail()}")
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await h.verify_nothing_lost(c, world, v)
        v.figures.update(h.count_repeats(c, world))
        h.verify_routing(c, world, v)
        h.verify_no_secrets(c, v, await h.database_texts(c))
        await h.check_leases(c, v)
        by_category = await _check_dead_letters(c, payloads, v)
        v.require(await _schema(c) == schema_before, "the schema changed")
        counts_after = await _row_counts(c)
        v.require(
            counts_after == counts_before, f"row counts changed: {counts_before} -> {counts_after}"
        )
        v.figures.update(
            replicas=replicas,
            bad_payloads=sum(1 for p in payloads if p.expect == "dead"),
            good_raw_payloads=sum(1 for p in payloads if p.expect == "ok"),
            categories=by_category,
            faults_injected=f"{len(payloads)} generated payloads",
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
            recover="n/a",
        )
        # Crashes may only come from the known-bug categories (attributed by seq).
        crashes = _crash_categories(c, payloads, await _payload_by_seq(c))
        v.figures["handler_crashes"] = dict(crashes)
        v.require(set(crashes) <= set(KNOWN_BUGS), f"handler crashes: {dict(crashes)}")
        v.require(
            not any(e.get("event") == "loop_crashed" for r in c.replicas for e in r.events()),
            "a loop crashed",
        )
    v.check()
    return Result(5, f"{len(payloads)} generated bad and odd payloads", size, v.figures)


async def _schema(c: Cluster) -> list[tuple[Any, ...]]:
    return [
        tuple(r.values())
        for r in await h.rows(
            c.dsn,
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY 1, 2",
        )
    ]


async def _row_counts(c: Cluster) -> dict[str, int]:
    """Row counts cleanup must not change (vector-store rows of deleted chats it deletes)."""
    counts = {
        t: int(await h.scalar(c.dsn, f"SELECT count(*) FROM {t}"))
        for t in (
            "chats",
            "attachments",
            "message_attachments",
            "modkit_outbox_partitions",
            "modkit_outbox_processor",
        )
    }
    counts["chat_vector_stores of live chats"] = int(
        await h.scalar(
            c.dsn,
            "SELECT count(*) FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id"
            " WHERE c.deleted_at IS NULL",
        )
    )
    return counts


async def _payload_by_seq(c: Cluster) -> dict[tuple[str, int, int], bytes]:
    """(queue, partition, seq) -> payload, from dead letters (bodies may be vacuumed)."""
    return {
        (r["queue"], r["partition"], r["seq"]): bytes(r["payload"])
        for r in await h.rows(
            c.dsn,
            "SELECT p.queue, p.partition, d.seq, d.payload FROM modkit_outbox_dead_letters d"
            " JOIN modkit_outbox_partitions p ON p.id = d.partition_id",
        )
    }


def _crash_categories(
    c: Cluster, payloads: list[Payload], by_seq: dict[tuple[str, int, int], bytes]
) -> Counter[str]:
    category = {p.body: p.category for p in payloads}
    found: Counter[str] = Counter()
    for r in c.replicas:
        for e in r.events():
            if e.get("event") == "handler_crashed":
                body = by_seq.get((e.get("queue"), e.get("partition"), e.get("seq")))
                found[category.get(body, "?") if body is not None else "?"] += 1
    return found


async def _check_dead_letters(c: Cluster, payloads: list[Payload], v: Verdict) -> dict[str, Any]:
    """Per category: how many, and whether each bad one is dead-lettered naming the problem."""
    dead = {
        bytes(r["payload"]): r
        for r in await h.rows(
            c.dsn, "SELECT payload, payload_type, last_error FROM modkit_outbox_dead_letters"
        )
    }
    stats: dict[str, dict[str, Any]] = {}
    wrong: list[str] = []
    for p in payloads:
        s = stats.setdefault(p.category, {"n": 0, "ok": 0, "example": ""})
        s["n"] += 1
        row = dead.get(p.body)
        reason = None if row is None else (row["last_error"] or "")
        if p.expect == "ok":
            good = row is None
            if not good:
                s["example"] = reason[:120]
        else:
            good = reason is not None and p.needle.lower() in reason.lower()
            if not s["example"] or not good:
                s["example"] = "(not dead-lettered)" if reason is None else reason[:120]
        s["ok"] += good
        if not good and p.category not in KNOWN_BUGS:
            wrong.append(
                f"{p.category} (expects {p.expect} {p.needle!r}): {s['example']!r};"
                f" payload {p.body[:100]!r}"
            )
    fixed = [k for k in KNOWN_BUGS if k in stats and stats[k]["ok"] == stats[k]["n"]]
    for k in KNOWN_BUGS:
        if k in stats:
            stats[k]["known_bug"] = KNOWN_BUGS[k]
    v.require(not fixed, f"known bugs now behave: remove {fixed} from KNOWN_BUGS")
    v.require(not wrong, f"{len(wrong)} payloads handled wrongly: {wrong[:6]}")
    return dict(sorted(stats.items()))


# -- 6. SIGTERM under load ------------------------------------------------------------------------

ACK_GRACE_SECONDS = 10.0  # worker.runtime.daemon: after interrupting, time for the final acks


async def s6_sigterm_under_load(server: PostgresServer, workdir: Path, size: str) -> Result:
    """A rolling restart (SIGTERM one replica at a time, a replacement started) and then
    SIGTERM to every replica at once, all under load with a slow provider: each exits 0
    within the shutdown deadline (grace + the final acks' grace), leaves no lease held, and
    fresh replicas finish the rest with nothing lost."""
    replicas = 4
    grace = 1.0
    deadline = grace + ACK_GRACE_SECONDS
    plan = _pick(
        size,
        SeedPlan(chats=70, files_per_chat=(2, 8), live_chats=20, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(2, 12), live_chats=60, singles_per_live_chat=(1, 6)),
        SeedPlan(chats=500, files_per_chat=(2, 14), live_chats=120, singles_per_live_chat=(1, 6)),
    )
    # Slow and narrow: every provider answer takes 1 s, few messages at a time, so batches
    # are always in flight when a signal comes and the backlog outlasts the restarts.
    config = {
        "outbox.batch_size": 5,
        "outbox.concurrency": 8,
        "outbox.shutdown_grace_seconds": grace,
        "cleanup.file_concurrency": 2,
        "providers.backends.openai.timeout_seconds": 2,
        "providers.backends.azure.timeout_seconds": 2,
    }
    v = Verdict()
    exits: list[float] = []
    async with h.cluster(server, workdir, "s6", config=config) as c:
        # Every provider answer takes 1 s until the last SIGTERM (then the rest drains fast).
        c.fake.inject(h.Fault(delay_seconds=1.0))
        first = await c.start_replicas(replicas)
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        started = time.monotonic()
        await h.wait_until(lambda: _progressed(c, 0, 20), timeout=60, what="work in progress")

        async def terminate(group: list[h.Replica]) -> None:
            signalled = time.monotonic()
            for r in group:
                r.signal(signal.SIGTERM)
            codes = await asyncio.gather(*(r.wait(deadline + 20) for r in group))
            for r, code in zip(group, codes, strict=True):
                took = (r.stopped_at or time.monotonic()) - signalled
                exits.append(took)
                v.require(code == 0, f"{r.name} exited {code} after SIGTERM:\n{r.tail()}")
                v.require(
                    took <= deadline + 2,
                    f"{r.name} took {took:.1f}s to exit (deadline {deadline:g}s)",
                )
                held = await h.scalar(
                    c.dsn,
                    "SELECT (SELECT count(*) FROM modkit_outbox_processor"
                    " WHERE rel_worker(locked_by) = %(w)s) + (SELECT count(*) FROM"
                    " cleanup_worker_retries WHERE rel_worker(locked_by) = %(w)s)",
                    {"w": r.worker_id},
                )
                v.require(held == 0, f"{r.name} left {held} leases held")
                events = [e.get("event") for e in r.events()]
                v.require(
                    bool(events) and events[-1] == "worker_stopped",
                    f"{r.name} did not log worker_stopped last",
                )

        for r in first:  # rolling restart under load
            await terminate([r])
            c.start_replica()
        await asyncio.gather(*(r.wait_started() for r in c.running))
        await asyncio.sleep(2.0)
        remaining = await c.outstanding()
        v.require(
            remaining["unacked"] + remaining["parked"] > 0,
            "the backlog was gone before the final SIGTERM: not under load",
        )
        await terminate(c.running)  # everyone at once, mid-drain
        v.require(await c.live_leases() == (0, 0), "leases left held after every replica exited")
        c.fake.clear_faults()
        interrupted = int(
            await h.scalar(
                c.dsn,
                "SELECT count(*) FROM rel_lease_audit WHERE kind = 'retry'"
                " AND reason = 'interrupted'",
            )
        )
        await c.start_replicas(2)
        drained = await c.wait_drained(_pick(size, 150, 400, 900))
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await _common_checks(c, world, v, expect_takeovers=True)
        v.figures.update(
            replicas=replicas,
            kills=f"{len(exits)} SIGTERM",
            faults_injected=f"{len(exits)} SIGTERM (grace {grace:g} s), provider latency 1 s",
            exit_seconds_max=round(max(exits), 1),
            exit_seconds_median=round(h.percentile(exits, 0.5), 1),
            outstanding_at_final_sigterm=remaining,
            interrupted_messages_parked=interrupted,
            recover=f"exit ≤ {max(exits):.1f} s (deadline {deadline:g} s)",
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(6, "SIGTERM under load (rolling, then all at once)", size, v.figures)


# -- 7. security ----------------------------------------------------------------------------------


async def s7_security(server: PostgresServer, workdir: Path, size: str) -> Result:
    """Secrets in the DSN password and in every tenant's API key never appear in any log line
    (JSON, debug level), error, CLI output, /metrics, probe body, dead-letter reason or row
    error, including on error paths (a revoked key: 401 for every request; a DSN to a missing
    database). Tenant routing never sends a tenant's resource to another tenant's endpoint or
    key. SQL-looking strings in every field of hundreds of payloads do nothing: the schema and
    the chat service's row counts are intact."""
    replicas = _pick(size, 3, 4, 4)
    plan = _pick(
        size,
        SeedPlan(chats=40, files_per_chat=(1, 6), live_chats=16, singles_per_live_chat=(1, 3)),
        SeedPlan(chats=200, files_per_chat=(1, 10), live_chats=60, singles_per_live_chat=(1, 5)),
        SeedPlan(chats=400, files_per_chat=(1, 12), live_chats=120, singles_per_live_chat=(1, 5)),
    )
    sql_count = _pick(size, 300, 1000, 2000)
    config = {
        "outbox.retry": {"base_seconds": 0.3, "max_seconds": 1, "max_deliveries": 5},
        "cleanup.max_attempts": 3,
    }
    v = Verdict()
    rng = random.Random(7)
    async with h.cluster(server, workdir, "s7", revoked_tenant=True, config=config) as c:
        revoked = next(t for t in c.tenants if t.name == "revoked-oa")
        schema_before = await _schema(c)
        await c.start_replicas(replicas)
        started = time.monotonic()

        def debt(world: World) -> None:
            for att in world.attachments.values():
                if att.tenant is revoked and att.file_id:
                    world.expected_failed.add(att.id)
                    world.faults[att.file_id] = ("auth", None)  # every request answers 401
            for vs, (_, tenant) in world.vector_stores.items():
                if tenant is revoked:
                    world.expected_kept_stores.add(vs)
                    world.faults[vs] = ("auth", None)

        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng, prepare=debt)
        payloads = _sql_payloads(sql_count, rng)
        counts_before = await _row_counts(c)
        from worker.outbox.enqueue import enqueue

        async with await h.psycopg.AsyncConnection.connect(c.dsn, autocommit=True) as conn:
            for p in payloads:
                await enqueue(conn, p.queue, p.partition, p.body, p.payload_type)
        world.extra_messages += len(payloads)
        drained = await c.wait_drained(_pick(size, 150, 400, 900))
        probes = {
            f"{r.name}{path}": _http_body(r, path)
            for r in c.running
            for path in ("/readyz", "/healthz", "/nope")
        }
        for r in c.running:
            r.scrape()
        # Operator commands, and error paths that quote the DSN.
        for args in (["status", "--json"], ["dead-letters", "list", "--json"], ["check-config"]):
            done = c.run_cli(*args)
            v.require(
                done.returncode in (0, 1, 2),
                f"{args} exited {done.returncode}: {done.stderr[-300:]}",
            )
        bad_db = c.dsn.replace(f"dbname={c.db_name}", "dbname=no_such_database")
        assert bad_db != c.dsn
        failed = c.run_cli("status", env_changes={"CLEANUP_WORKER_DSN": bad_db})
        v.require(
            failed.returncode == 3, f"status on a missing database exited {failed.returncode}"
        )
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await _common_checks(c, world, v)
        h.verify_no_secrets(c, v, {**await h.database_texts(c), **probes})
        await _check_revoked_debt(c, world, revoked, v)
        v.require(await _schema(c) == schema_before, "the schema changed")
        counts_after = await _row_counts(c)
        v.require(
            counts_after == counts_before, f"row counts changed: {counts_before} -> {counts_after}"
        )
        auth_requests = sum(1 for r in c.fake.requests() if r.status == 401)
        v.figures.update(
            replicas=replicas,
            sql_payloads=len(payloads),
            revoked_tenant_401s=auth_requests,
            cli_runs=len(c.cli_outputs),
            faults_injected=(
                f"{auth_requests} x 401 (revoked key), {len(payloads)} SQL-looking payloads"
            ),
            recover="n/a",
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(7, "secrets, tenant routing, SQL-looking input", size, v.figures)


def _http_body(r: h.Replica, path: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.http_port}{path}", timeout=3) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return str(exc)


def _sql_payloads(count: int, rng: random.Random) -> list[Payload]:
    """SQL-looking strings in every field of both events; all dead-lettered (or, in a file
    id of an attachment that does not exist, deleted as a 404: processed)."""
    out: list[Payload] = []
    for n in range(count):
        sql = rng.choice(SQLISH)
        if n % 2:
            doc = _attachment_event(n)
            field_ = rng.choice((*ATTACHMENT_FIELDS, "provider_file_id"))
            doc[field_] = f"{sql}-{n}" if field_ == "provider_file_id" else sql
            queue = h.AQ
        else:
            doc = _chat_event(n)
            field_ = rng.choice(CHAT_FIELDS)
            doc[field_] = sql
            queue = h.CQ
        out.append(
            Payload(
                queue,
                rng.randrange(4),
                json.dumps(doc).encode(),
                "application/json",
                f"sql:{field_}",
                "?",
                field_,
            )
        )
    return out


async def _check_revoked_debt(c: Cluster, world: World, revoked: h.Tenant, v: Verdict) -> None:
    """A revoked key is a visible debt: failed rows saying auth, dead letters with a reason."""
    rows_ = await h.rows(
        c.dsn,
        "SELECT cleanup_status, last_cleanup_error FROM attachments"
        " WHERE tenant_id = %s AND cleanup_status IS NOT NULL",
        (revoked.id,),
    )
    with_file = [r for r in rows_ if r["last_cleanup_error"] is not None]
    v.require(all(r["cleanup_status"] == "failed" for r in with_file), "revoked: not failed")
    v.require(
        all("401" in r["last_cleanup_error"] for r in with_file),
        f"revoked rows do not say 401: {[r['last_cleanup_error'] for r in with_file[:2]]}",
    )
    dead = await h.rows(
        c.dsn,
        "SELECT last_error FROM modkit_outbox_dead_letters"
        " WHERE last_error ILIKE '%%auth%%' OR last_error ILIKE '%%max attempts%%'",
    )
    v.require(len(dead) > 0 or not with_file, "the revoked tenant left no dead letter")
    v.figures["revoked_failed_rows"] = len(with_file)
    v.figures["revoked_dead_letters"] = len(dead)


# -- 8. lease loss --------------------------------------------------------------------------------


async def s8_lease_loss(server: PostgresServer, workdir: Path, size: str) -> Result:
    """A batch whose lease is taken over before its ack. lease_seconds = 5 (the minimum) and a
    slow provider keep batches in flight; then one replica is frozen (SIGSTOP: a stalled VM, a
    GC pause, a starved CPU) past its lease, the other takes the partition over, and the
    frozen one resumes, finishes its batch and tries to ack: the ack fails, the batch is
    delivered again and ends correct; ``mini_chat_outbox_lease_lost_total`` > 0.

    A slow provider alone cannot make a lease expire: the heartbeat extends it every
    lease/3 and a call is bounded below lease/2 (config rule). Freezing the process is what
    stops the heartbeat."""
    cycles = _pick(size, 1, 2, 3)
    plan = _pick(
        size,
        SeedPlan(chats=30, files_per_chat=(2, 6), live_chats=10, singles_per_live_chat=(1, 3)),
        SeedPlan(chats=120, files_per_chat=(2, 8), live_chats=40, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=200, files_per_chat=(2, 10), live_chats=60, singles_per_live_chat=(1, 4)),
    )
    config = {"outbox.batch_size": 5, "outbox.lease_seconds": 5, "cleanup.file_concurrency": 2}
    v = Verdict()
    async with h.cluster(server, workdir, "s8", fake_latency=0.4, config=config) as c:
        pair = await c.start_replicas(2)
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        started = time.monotonic()
        frozen_for: list[float] = []
        victims: list[h.Replica] = []
        for _ in range(cycles):
            a = await h.wait_until(
                lambda: _holder(c, pair), timeout=60, what="a replica holding a lease", every=0.05
            )
            b = next(r for r in pair if r is not a)
            mark = int(await h.scalar(c.dsn, "SELECT coalesce(max(id), 0) FROM rel_lease_audit"))
            a.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await h.wait_until(
                    lambda m=mark, a=a: _taken_from(c, a, m),
                    timeout=30,
                    what=f"{b.name} taking over {a.name}'s lease",
                    every=0.2,
                )
                await asyncio.sleep(1.0)  # b works on the batch a still believes it has
            finally:
                a.signal(signal.SIGCONT)
            frozen_for.append(time.monotonic() - stopped)
            victims.append(a)
            await asyncio.sleep(3.0)
        drained = await c.wait_drained(_pick(size, 150, 400, 900))
        await asyncio.sleep(1.0)
        lost = {
            r.name: h.metric_sum([r.scrape()], "mini_chat_outbox_lease_lost_total") for r in pair
        }
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await _common_checks(c, world, v, expect_takeovers=True, expect_stale=True)
        for a in set(victims):
            v.require(
                lost[a.name] > 0,
                f"mini_chat_outbox_lease_lost_total on frozen {a.name} is {lost[a.name]}",
            )
        v.require(v.figures["stale_handling"] > 0, "no message was handled after a takeover")
        v.figures.update(
            lease_lost_total=sum(lost.values()),
            lease_lost_log_events=sum(
                1 for r in pair for e in r.events() if e.get("event") == "lease_lost"
            ),
            freezes=cycles,
            frozen_seconds=[round(x, 1) for x in frozen_for],
            faults_injected=f"{cycles} x SIGSTOP past the 5 s lease, provider latency 0.4 s",
            kills=f"{cycles} freeze(s)",
            recover=f"takeover ≤ {max(frozen_for):.1f} s after freezing",
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(8, "lease lost before the ack (frozen replica)", size, v.figures)


async def _holder(c: Cluster, replicas: list[h.Replica]) -> h.Replica | None:
    """A replica holding a partition lease right now (a batch in flight), if any."""
    query = (
        "SELECT rel_worker(min(locked_by)) FROM modkit_outbox_processor WHERE locked_until > now()"
    )
    by = await h.scalar(c.dsn, query)
    return next((r for r in replicas if r.worker_id == by), None)


async def _taken_from(c: Cluster, r: h.Replica, after_id: int) -> bool:
    return bool(
        await h.scalar(
            c.dsn,
            "SELECT count(*) FROM rel_lease_audit WHERE id > %s AND old_by = %s"
            " AND new_by IS NOT NULL AND new_by <> old_by",
            (after_id, r.worker_id),
        )
    )


# -- 9. failover to a read-only node and back ---------------------------------------------------


async def s9_failover_read_only(server: PostgresServer, workdir: Path, size: str) -> Result:
    """Mid-drain the database turns read-only and every session is cut, as when a failover moves
    clients to a standby, then back: the daemons never exit; while it lasts every replica that
    noticed reads ``database_up`` 0, answers /readyz 503 naming the read-only cause and logs no
    "recovered"; afterwards the gauge is 1 again and the drain finishes with nothing lost."""
    replicas = _pick(size, 3, 4, 4)
    spells = _pick(size, [4.0], [5.0, 12.0], [5.0, 15.0])
    plan = _pick(
        size,
        SeedPlan(chats=50, files_per_chat=(2, 8), live_chats=12, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(2, 12), live_chats=60, singles_per_live_chat=(1, 6)),
        SeedPlan(chats=500, files_per_chat=(2, 14), live_chats=120, singles_per_live_chat=(1, 6)),
    )
    v = Verdict()
    recoveries: list[float] = []
    scrapes = Counter[str]()
    async with h.cluster(
        server, workdir, "s9", fake_latency=0.1, config={"outbox.batch_size": 10}
    ) as c:
        live = await c.start_replicas(replicas)
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        started = time.monotonic()
        for n, spell in enumerate(spells):
            base = await c.progress()
            await h.wait_until(
                lambda b=base: _progressed(c, b, 20),
                timeout=60,
                what="work in progress before the failover",
            )
            recovered_before = {r.name: _count_events(r, "database_recovered") for r in live}
            _fail_over(server, c.db_name, read_only=True)
            try:
                flipped = time.monotonic()
                while time.monotonic() - flipped < spell:
                    for r in live:
                        v.require(r.running, f"{r.name} exited during failover {n}:\n{r.tail()}")
                        scrapes[_truthful_while_down(r, v, n)] += 1
                    await asyncio.sleep(0.5)
                for r in live:
                    early = _count_events(r, "database_recovered") - recovered_before[r.name]
                    scrapes["database_recovered logged while down"] += early
                    v.require(
                        early == 0,
                        f"{r.name} logged database_recovered while the database was read-only",
                    )
            finally:
                _fail_over(server, c.db_name, read_only=False)
            back = time.monotonic()
            before = await c.progress()
            await h.wait_until(
                lambda b=before: _progressed(c, b, 1),
                timeout=60,
                what="progress after the failover back",
                every=0.05,
            )
            recoveries.append(time.monotonic() - back)
        drained = await c.wait_drained(_pick(size, 120, 400, 900))
        noticed = 0
        for r in live:
            v.require(r.running, f"{r.name} exited:\n{r.tail()}")
            # Every loop that failed completes a statement again soon: the first success
            # after an outage cuts the other loops' backoff short.
            v.require(
                await _gauge_back(r, within=10),
                f"{r.name}: database_up {_gauge(r)} 10 s after the drain",
            )
            causes = [str(e.get("cause")) for e in r.events()
                      if e.get("event") == "database_unavailable"]  # fmt: skip
            if causes:
                noticed += 1
                v.require(
                    any("25006" in cause for cause in causes),
                    f"{r.name} did not name the read-only cause: {causes[:3]}",
                )
                v.require(
                    _count_events(r, "database_recovered") >= 1,
                    f"{r.name} reported the failover but not the recovery",
                )
        v.require(noticed == len(live), f"only {noticed} of {len(live)} replicas noticed")
        v.require(
            scrapes["down, read-only named"] > 0, f"/readyz never named read-only: {dict(scrapes)}"
        )
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        # Acks fail while read-only: leases expire and are taken over after the failover back.
        await _common_checks(c, world, v, expect_takeovers=True, expect_stale=True)
        v.figures.update(
            replicas=replicas,
            read_only_seconds=spells,
            recover_seconds=[round(x, 1) for x in recoveries],
            recover=", ".join(
                f"{x:.1f} s (after {o:g} s read-only)"
                for x, o in zip(recoveries, spells, strict=True)
            ),
            faults_injected=f"{len(spells)} failover(s) to read-only and back",
            replicas_reporting_failover=noticed,
            scrapes_while_read_only=dict(scrapes),
            truthful_while_down=_truth(scrapes),
            causes_logged=_causes(live),
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(9, "failover to a read-only node and back mid-drain", size, v.figures)


def _fail_over(server: PostgresServer, dbname: str, *, read_only: bool) -> None:
    """The database turns read-only (or writable again) and its sessions are cut: clients
    reconnect and meet the new state, as after a failover."""
    setting = "SET default_transaction_read_only = on" if read_only else "RESET ALL"
    h._admin(
        server,
        f'ALTER DATABASE "{dbname}" {setting}',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'",
    )


def _truth(scrapes: Counter[str]) -> str:
    """What the looks during outages saw, in words (each judged look was checked: gauge 0,
    /readyz 503 naming the cause)."""
    judged = sum(n for k, n in scrapes.items() if k.startswith("down"))
    early = scrapes["database_recovered logged while down"]
    return (
        f"{judged} looks at replicas that had logged the outage: database_up 0 and /readyz 503"
        f" with a cause in all {judged}; {scrapes['not noticed yet']} looks before a replica"
        f" noticed; database_recovered logged while down: {early}"
    )


def _causes(replicas: list[h.Replica]) -> list[str]:
    """The distinct causes ``database_unavailable`` named (the start of each)."""
    found = {
        str(e.get("cause")).removeprefix("database unavailable: ")[:60]
        for r in replicas
        for e in r.events()
        if e.get("event") == "database_unavailable"
    }
    return sorted(found)[:8]


def _count_events(r: h.Replica, name: str) -> int:
    return sum(1 for e in r.events() if e.get("event") == name)


def _gauge(r: h.Replica) -> float | None:
    samples = h.parse_metrics(r.scrape())
    return next((val for name, _, val in samples if name == "mini_chat_worker_database_up"), None)


async def _gauge_back(r: h.Replica, within: float) -> bool:
    deadline = time.monotonic() + within
    while _gauge(r) != 1:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


def _truthful_while_down(r: h.Replica, v: Verdict, spell: int) -> str:
    """One look at a replica during an outage or failover: while its last database event is
    database_unavailable (it noticed this outage, or has not recovered from the one before),
    its gauge must read 0 and /readyz must be 503 naming a cause. Returns what the look saw."""
    told = [e.get("event") for e in r.events()
            if e.get("event") in ("database_unavailable", "database_recovered")]  # fmt: skip
    if not told or told[-1] != "database_unavailable":
        return "not noticed yet"
    gauge, (code, body) = _gauge(r), _http_status_body(r, "/readyz")
    v.require(gauge == 0, f"{r.name}: database_up {gauge} during outage {spell}")
    v.require(code == 503, f"{r.name}: /readyz {code} during outage {spell}")
    v.require(body.startswith("database unavailable: "), f"{r.name}: /readyz {body!r}")
    # The cut sessions (57P01) come first; then every write meets the read-only node.
    return "down, read-only named" if "read-only" in body else "down"


def _http_status_body(r: h.Replica, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{r.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


# -- 10. through PgBouncer in transaction pooling mode -------------------------------------------


async def s10_pgbouncer(server: PostgresServer, workdir: Path, size: str) -> Result:
    """Several replicas drain a backlog through a real PgBouncer 1.18 in transaction pooling mode
    (``tests/pgbouncer.py``; scram login as the scenario's role, with its secret password),
    and mid-drain PgBouncer's server connections are killed from the server side (twice) and
    PgBouncer itself is killed and started again on its port (a pooler pod replaced): no
    replica exits, no loop crashes, no ``DuplicatePreparedStatement`` (nor any prepared
    statement error) appears, work resumes after the pooler comes back, and nothing is lost."""
    replicas = _pick(size, 3, 4, 4)
    plan = _pick(
        size,
        SeedPlan(chats=50, files_per_chat=(2, 8), live_chats=12, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=250, files_per_chat=(2, 12), live_chats=60, singles_per_live_chat=(1, 6)),
        SeedPlan(chats=500, files_per_chat=(2, 14), live_chats=120, singles_per_live_chat=(1, 6)),
    )
    down = _pick(size, 1.0, 2.0, 3.0)
    v = Verdict()
    async with h.cluster(
        server, workdir, "s10", fake_latency=0.4, config={"outbox.batch_size": 10}
    ) as c:
        bouncer = await asyncio.to_thread(h.RestartablePgBouncer, server)
        try:
            await asyncio.to_thread(bouncer.add_user, h.ROLE, c.secrets.dsn_password)
            c.worker_dsn = bouncer.dsn(c.db_name, user=h.ROLE)
            # The whole backlog waits before any replica starts. Seeded into running replicas,
            # part of it was drained before it was counted, and CI drained the rest in 0.8 s
            # with looks 0.25 s apart: one fault of three happened.
            world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
            initial = sum((await c.outstanding()).values())
            live = await c.start_replicas(replicas)
            started = time.monotonic()
            # Progress decides when, looked at often. With 0.1 s calls the first fault fired with
            # a fifth of the small backlog left in one run here; with 0.4 s calls, at 0.65-0.79
            # (faults_at_outstanding_share).
            faults = [(0.8, "terminate"), (0.55, "restart"), (0.3, "terminate")]
            done: list[str] = []
            fired_at: list[float] = []  # the share of the backlog outstanding at each fault
            recoveries: list[float] = []

            async def chaos(outstanding: dict[str, int]) -> None:
                if not faults or sum(outstanding.values()) > faults[0][0] * initial:
                    return
                _, kind = faults.pop(0)
                fired_at.append(round(sum(outstanding.values()) / initial, 2))
                if kind == "terminate":
                    h._admin(server, _TERMINATE.format(db=c.db_name))
                    done.append("server connections terminated")
                    return
                bouncer.kill()
                base_at = time.monotonic()
                base = await c.progress()  # nothing commits through a dead pooler
                await asyncio.sleep(down)
                await asyncio.to_thread(bouncer.start_again)
                await h.wait_until(
                    lambda b=base: _progressed(c, b, 1),
                    timeout=60,
                    what="progress after PgBouncer came back",
                    every=0.05,
                )
                recoveries.append(time.monotonic() - base_at - down)
                done.append(f"PgBouncer killed, {down:g} s down, restarted")

            drained = await c.wait_drained(_pick(size, 120, 400, 900), on_tick=chaos, every=0.05)
            v.require(len(done) >= 2, f"only {done} happened before the drain ended")
            for r in live:
                v.require(r.running, f"{r.name} exited:\n{r.tail()}")
            codes = await c.stop_all()
            v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
            logins = bouncer.logins(c.db_name)
        finally:
            bouncer.close()
        # Cut connections fail acks and heartbeats: leases may run out and be taken over.
        await _common_checks(c, world, v, expect_takeovers=True, expect_stale=True)
        prepared = [
            f"{r.name}: {line[:200]}"
            for r in c.replicas
            for line in r.stderr_text().splitlines()
            if "prepared statement" in line.lower() or "DuplicatePreparedStatement" in line
        ]
        v.require(not prepared, f"prepared statement errors: {prepared[:3]}")
        v.require(logins >= replicas, f"only {logins} logins through PgBouncer")
        v.figures.update(
            replicas=replicas,
            pgbouncer="pool_mode = transaction, default_pool_size 40 (tests/pgbouncer.py)",
            pgbouncer_client_logins=logins,
            faults=done,
            faults_at_outstanding_share=fired_at,
            prepared_statement_errors=len(prepared),
            loop_crashes=0,
            database_unavailable_events=sum(_count_events(r, "database_unavailable") for r in live),
            recover_seconds=[round(x, 1) for x in recoveries],
            recover=(
                f"{max(recoveries):.1f} s (PgBouncer started again → first progress)"
                if recoveries
                else "-"
            ),
            faults_injected=", ".join(done),
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(10, "through PgBouncer (transaction pooling), pooler killed mid-drain", size,
                  v.figures)  # fmt: skip


_TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = '{db}' AND pid <> pg_backend_pid()"
)


# -- 11. lease ping-pong ------------------------------------------------------------------------


async def s11_lease_ping_pong(server: PostgresServer, workdir: Path, size: str) -> Result:
    """Leases expire again and again mid-batch: two replicas are frozen in turn (SIGSTOP past
    the 5 s lease, then SIGCONT), so partitions bounce between them and each worker leases
    again partitions it lost before while its stale batches still try to ack. Fencing tokens
    and forward-only acks must hold: no partition's cursor ever moves backwards (every cursor
    change in the audit, and a sample of every cursor every 0.2 s), no dead letter for a
    message some worker handled Ok, and lease churn alone dead-letters nothing: a message
    redelivered because its lease ran out keeps its delivery number, which grows only with a
    retry outcome or a handling that outlived its lease (delivery numbers and outcomes per
    message from the workers' logs; ``retry.max_deliveries`` 6)."""
    cycles = _pick(size, 4, 8, 12)
    # The lowest the config rules allow with the default cleanup.max_attempts (5): a frozen
    # replica's in-flight request times out when it resumes, a real attempt (it was sent), so
    # fewer attempts would fail files for freezes; the old partition-wide count reached 12.
    max_deliveries = 6
    plan = _pick(
        size,
        SeedPlan(chats=50, files_per_chat=(2, 6), live_chats=12, singles_per_live_chat=(1, 3)),
        SeedPlan(chats=150, files_per_chat=(2, 8), live_chats=40, singles_per_live_chat=(1, 4)),
        SeedPlan(chats=300, files_per_chat=(2, 10), live_chats=80, singles_per_live_chat=(1, 4)),
    )
    config = {
        "outbox.batch_size": 5,
        "outbox.lease_seconds": 5,
        # Two handlers per replica: the backlog lasts several lease periods, so leases can
        # bounce; at the default the pair drained the small seed before one lease expired.
        "outbox.concurrency": 2,
        "outbox.retry.max_deliveries": max_deliveries,
        "cleanup.file_concurrency": 2,
    }
    v = Verdict()
    async with h.cluster(server, workdir, "s11", fake_latency=0.4, config=config) as c:
        # The backlog first, then the replicas: seeded while they ran, a fast worker kept up
        # with the seed and drained before a lease could bounce ("only 0 freezes").
        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng)
        pair = await c.start_replicas(2)
        started = time.monotonic()
        cursor = _CursorWatch()
        watcher = asyncio.create_task(cursor.watch(c))
        frozen_for: list[float] = []
        try:
            for n in range(cycles):
                # Alternate: freeze the one that did not freeze last time, once it holds a lease.
                a = await h.wait_until(
                    lambda w=pair[n % 2]: _holder_or_drained(c, w),
                    timeout=30,
                    what=f"{pair[n % 2].name} leasing",
                    every=0.05,
                )
                if not isinstance(a, h.Replica):  # drained: nothing left to bounce
                    break
                mark = int(
                    await h.scalar(c.dsn, "SELECT coalesce(max(id), 0) FROM rel_lease_audit")
                )
                a.signal(signal.SIGSTOP)
                stopped = time.monotonic()
                try:
                    await h.wait_until(
                        lambda m=mark, a=a: _taken_from(c, a, m),
                        timeout=30,
                        what=f"{a.name}'s lease taken over",
                        every=0.1,
                    )
                    await asyncio.sleep(0.5)
                finally:
                    a.signal(signal.SIGCONT)
                frozen_for.append(time.monotonic() - stopped)
                await asyncio.sleep(1.0)  # its stale acks meet the fence; it leases again
            drained = await c.wait_drained(_pick(size, 150, 400, 900))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await asyncio.sleep(1.0)
        lease_lost = {
            r.name: h.metric_sum([r.scrape()], "mini_chat_outbox_lease_lost_total") for r in pair
        }
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        v.require(len(frozen_for) >= 2, f"only {len(frozen_for)} freezes before the drain ended")
        await _common_checks(c, world, v, expect_takeovers=True, expect_stale=True)
        backwards = await h.rows(
            c.dsn,
            "SELECT partition_id, old_seq, new_seq, at FROM rel_lease_audit"
            " WHERE kind = 'partition' AND new_seq < old_seq",
        )
        v.require(not backwards, f"cursor moved backwards: {backwards[:3]}")
        v.require(not cursor.backwards, f"sampled cursor moved backwards: {cursor.backwards[:3]}")
        releases = await _re_leases(c)
        v.require(releases > 0, "no worker leased again a partition taken from it")
        handlings = await _handlings(c)
        dead = await h.rows(
            c.dsn,
            "SELECT d.partition_id, d.seq, d.last_error FROM modkit_outbox_dead_letters d",
        )
        ok_dead = [d for d in dead if (d["partition_id"], d["seq"]) in handlings.ok]
        v.require(
            not ok_dead, f"{len(ok_dead)} dead letters for messages handled Ok: {ok_dead[:3]}"
        )
        churned = [d for d in dead if "max deliveries" in str(d["last_error"])]
        v.require(not churned, f"{len(churned)} dead-lettered for max deliveries: {churned[:3]}")
        # Nothing here is faulty: every message ends Ok, so any dead letter is churn's doing.
        v.require(not dead, f"{len(dead)} dead letters: {[d['last_error'] for d in dead[:3]]}")
        # A delivery number grows only with a stored outcome (retry) or a presumed death (a
        # handling that outlived its lease): never by lease churn with no handling at all.
        v.require(
            not handlings.raised,
            f"{len(handlings.raised)} messages delivered again without a retry outcome:"
            f" {handlings.raised[:3]}",
        )
        v.figures.update(
            replicas=2,
            freezes=len(frozen_for),
            frozen_seconds=[round(x, 1) for x in frozen_for],
            lease_lost_total=sum(lease_lost.values()),
            re_leased_after_takeover=releases,
            cursor_changes_audited=await h.scalar(
                c.dsn,
                "SELECT count(*) FROM rel_lease_audit WHERE kind = 'partition'"
                " AND new_seq IS DISTINCT FROM old_seq",
            ),
            cursor_samples=cursor.samples,
            cursor_moved_backwards=len(backwards) + len(cursor.backwards),
            messages_handled_more_than_once=handlings.repeated,
            retry_outcomes_logged=handlings.retries,
            deliveries_raised_without_a_retry=len(handlings.raised),
            most_handlings_of_one_message=handlings.most,
            highest_delivery_number=handlings.max_delivery,
            max_deliveries=max_deliveries,
            dead_letters_for_max_deliveries=len(churned),
            dead_letters_for_messages_handled_ok=len(ok_dead),
            faults_injected=f"{len(frozen_for)} x SIGSTOP past the 5 s lease, in turn",
            kills=f"{len(frozen_for)} freeze(s)",
            recover=f"takeover ≤ {max(frozen_for, default=0):.1f} s after freezing",
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(11, "lease ping-pong: replicas frozen in turn past their leases", size, v.figures)


class _CursorWatch:
    """Samples every partition's cursor (processed_seq) and notes any step backwards."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.samples = 0
        self.backwards: list[str] = []

    async def watch(self, c: Cluster) -> None:
        while True:
            for r in await h.rows(
                c.dsn, "SELECT partition_id, processed_seq FROM modkit_outbox_processor"
            ):
                pid, seq = int(r["partition_id"]), int(r["processed_seq"])
                if seq < self.last.get(pid, 0):
                    self.backwards.append(f"partition {pid}: {self.last[pid]} -> {seq}")
                self.last[pid] = max(seq, self.last.get(pid, 0))
                self.samples += 1
            await asyncio.sleep(0.2)


_DRAINED = object()


async def _holder_or_drained(c: Cluster, replica: h.Replica) -> object:
    """``replica`` if it holds a live partition lease right now; ``_DRAINED`` when nothing is
    left to lease; else None (not yet)."""
    holders = {
        r["w"]
        for r in await h.rows(
            c.dsn,
            "SELECT rel_worker(locked_by) AS w FROM modkit_outbox_processor"
            " WHERE locked_until > now()",
        )
    }
    if replica.worker_id in holders:
        return replica
    return _DRAINED if not any((await c.outstanding()).values()) else None


async def _re_leases(c: Cluster) -> int:
    """Acquisitions of a partition by a worker it had been taken from before (A → B → A)."""
    taken_from: dict[int, set[str]] = {}
    count = 0
    for a in await h.rows(
        c.dsn,
        "SELECT partition_id, old_by, new_by FROM rel_lease_audit"
        " WHERE kind = 'partition' ORDER BY id",
    ):
        pid, old, new = a["partition_id"], a["old_by"], a["new_by"]
        if new is not None and new != old:
            if new in taken_from.get(pid, set()):
                count += 1
            if old is not None:
                taken_from.setdefault(pid, set()).add(old)
    return count


@dataclass
class _Handlings:
    ok: set[tuple[int, int]]  # (partition id, seq) some worker handled with outcome ok
    repeated: int  # messages handled more than once
    most: int  # the most handlings of one message
    max_delivery: int  # the highest delivery number logged
    retries: int  # retry outcomes logged (stored, or refused with a stale ack)
    raised: list[str]  # messages logged at a delivery above 1 + their retry outcomes


async def _handlings(c: Cluster) -> _Handlings:
    """Per message, from every replica's ``message_handled`` lines."""
    counts: Counter[tuple[str, int, int]] = Counter()
    retries: Counter[tuple[str, int, int]] = Counter()
    highest: Counter[tuple[str, int, int]] = Counter()
    ok: set[tuple[str, int, int]] = set()
    trail: dict[tuple[str, int, int], list[str]] = {}
    max_delivery = 0
    for r in c.replicas:
        for e in r.events():
            if e.get("event") != "message_handled" or "seq" not in e:
                continue
            key = (str(e["queue"]), int(e["partition"]), int(e["seq"]))
            counts[key] += 1
            delivery = int(e.get("delivery", 1))
            max_delivery = max(max_delivery, delivery)
            highest[key] = max(highest[key], delivery)
            retries[key] += e.get("outcome") == "retry"
            trail.setdefault(key, []).append(
                f"{r.name} d{delivery} {e.get('outcome')} {e.get('reason', '')}"
                f"{' alone' if e.get('redelivered') else ''} {e['timestamp'][11:23]}"
            )
            if e.get("outcome") == "ok":
                ok.add(key)
    ids = {
        (r["queue"], int(r["partition"])): int(r["id"])
        for r in await h.rows(c.dsn, "SELECT id, queue, partition FROM modkit_outbox_partitions")
    }
    return _Handlings(
        ok={(ids[(q, p)], s) for q, p, s in ok},
        repeated=sum(1 for n in counts.values() if n > 1),
        most=max(counts.values(), default=0),
        max_delivery=max_delivery,
        retries=sum(retries.values()),
        # A delivery number may grow with a retry outcome, or with a handling of that message
        # that outlived its lease (a frozen replica cannot be told from a dead one: its
        # unfinished start is presumed a death, bounded by outbox.max_handler_crashes), so by
        # at most one per earlier handling; never by lease churn alone.
        raised=[f"{k}: {trail[k]}" for k in highest if highest[k] > retries[k] + counts[k]],
    )


# -- 12. poison pill ----------------------------------------------------------------------------


async def s12_poison_pill(server: PostgresServer, workdir: Path, size: str) -> Result:
    """Messages whose handling kills the replica every time (SIGKILL from inside the handler,
    as a segfault or an OOM kill would: a test-only wrapper, ``tests/reliability/
    poison_worker.py``, around the unchanged worker) sit amid a backlog, each in its own
    partition. The harness restarts every dead replica at once, as Kubernetes does (its
    CrashLoopBackOff would only space later restarts out). Each
    pill is dead-lettered after ``outbox.max_handler_crashes`` deaths while handled alone
    (plus the one in its first, concurrent batch), naming the cause; its neighbours, in its
    batch and behind it in its partition, are handled (none is blamed, none dead-lettered);
    nothing else is lost."""
    replicas = 3
    pills = _pick(size, 1, 2, 3)
    max_crashes = _pick(size, 2, 3, 3)
    plan = _pick(
        size,
        SeedPlan(chats=40, files_per_chat=(2, 6), live_chats=10, singles_per_live_chat=(1, 3)),
        SeedPlan(chats=200, files_per_chat=(2, 10), live_chats=50, singles_per_live_chat=(1, 5)),
        SeedPlan(chats=400, files_per_chat=(2, 12), live_chats=100, singles_per_live_chat=(1, 6)),
    )
    config = {
        "outbox.batch_size": 10,
        "outbox.lease_seconds": 5,
        "outbox.max_handler_crashes": max_crashes,
    }
    poison_ids = [str(uuid.uuid4()) for _ in range(pills)]
    v = Verdict()
    async with h.cluster(server, workdir, "s12", fake_latency=0.05, config=config) as c:
        c.replica_command = [sys.executable, str(Path(__file__).with_name("poison_worker.py"))]
        c.replica_env = {"RELIAB_POISON_ATTACHMENTS": ",".join(poison_ids)}
        await c.start_replicas(replicas)

        async def enqueue_pills(conn: Any) -> int:
            for n, pill in enumerate(poison_ids):  # pill n in partition n
                doc = _attachment_event(n) | {"attachment_id": pill}
                await enqueue(conn, h.AQ, n, json.dumps(doc).encode())
            return len(poison_ids)

        world = await h.seed(c.dsn, c.fake, c.tenants, plan, c.rng, interleave=enqueue_pills)
        started = time.monotonic()
        deaths: list[tuple[float, str]] = []

        async def restart_dead(_: dict[str, int]) -> None:
            for r in list(c.replicas):
                if r.running or r.killed:
                    continue
                code = r.proc.returncode
                v.require(code == -signal.SIGKILL, f"{r.name} exited {code}:\n{r.tail()}")
                r.killed = True  # its metrics died with it
                r.exit_code = code
                deaths.append((time.time(), r.name))
                c.start_replica()  # a new pod: a new process, a new worker id

        drained = await c.wait_drained(_pick(size, 150, 400, 900), on_tick=restart_dead)
        await restart_dead({})
        await asyncio.gather(*(r.wait_started() for r in c.running))
        codes = await c.stop_all()
        v.require(all(code == 0 for code in codes.values()), f"exit codes {codes}")
        await _common_checks(c, world, v, expect_takeovers=True)
        dead = await h.rows(
            c.dsn,
            "SELECT p.partition, d.seq, d.last_error, d.attempts, d.payload,"
            " extract(epoch FROM d.failed_at) AS failed_at FROM modkit_outbox_dead_letters d"
            " JOIN modkit_outbox_partitions p ON p.id = d.partition_id",
        )
        # "handling it killed the worker process N times (outbox.max_handler_crashes = M)…"
        reason = "handling it killed the worker process "
        pill_dead = [d for d in dead if str(d["last_error"]).startswith(reason)]
        dead_pills = sorted(
            str(json.loads(bytes(d["payload"])).get("attachment_id")) for d in pill_dead
        )
        v.require(dead_pills == sorted(poison_ids), f"pills dead-lettered: {dead_pills}")
        others = [d["last_error"] for d in dead if d not in pill_dead]
        v.require(
            not others, f"{len(others)} other dead letters (neighbours blamed?): {others[:3]}"
        )
        v.require(
            pills <= len(deaths) <= pills * (max_crashes + 1),
            f"{len(deaths)} deaths for {pills} pill(s), max_handler_crashes {max_crashes}",
        )
        first_death = min((t for t, _ in deaths), default=time.time())
        isolated = [float(d["failed_at"]) - first_death for d in pill_dead]
        pill_at = {int(d["partition"]): int(d["seq"]) for d in pill_dead}
        neighbours = _handled_behind(c, pill_at)
        v.require(neighbours > 0, "no message behind a pill in its partition was handled")
        v.figures.update(
            replicas=replicas,
            poison_pills=pills,
            max_handler_crashes=max_crashes,
            replica_deaths=len(deaths),
            restarts=len(deaths),
            processes=len(c.replicas),
            pills_dead_lettered=len(dead_pills),
            pill_dead_letter_attempts=[int(d["attempts"]) for d in pill_dead],
            pill_dead_letter_reasons=sorted({str(d["last_error"]) for d in pill_dead}),
            other_dead_letters=len(others),
            handled_behind_pills_in_their_partitions=neighbours,
            handling_alone_events=sum(_count_events(r, "handling_alone") for r in c.replicas),
            faults_injected=f"{pills} poison pill(s) (SIGKILL on every handling)",
            kills=f"{len(deaths)} deaths (self-inflicted SIGKILL), each restarted",
            recover=(
                f"last pill dead-lettered {max(isolated):.1f} s after the first death"
                if isolated
                else "-"
            ),
            wall_seconds=time.monotonic() - started,
            drain_seconds=round(drained, 1),
        )
    v.check()
    return Result(12, "poison pills that kill the replica every time", size, v.figures)


def _handled_behind(c: Cluster, pill_at: dict[int, int]) -> int:
    """Messages behind a pill (higher seq, same attachment-queue partition) handled Ok."""
    behind = set()
    for r in c.replicas:
        for e in r.events():
            if e.get("event") != "message_handled" or e.get("queue") != h.AQ:
                continue
            partition, seq = int(e["partition"]), int(e["seq"])
            if seq > pill_at.get(partition, seq) and e.get("outcome") == "ok":
                behind.add((partition, seq))
    return len(behind)


SCENARIOS: dict[int, Scenario] = {
    1: s1_replicas_drain_backlog,
    2: s2_kill9_replicas,
    3: s3_database_restart,
    4: s4_provider_chaos,
    5: s5_bad_input,
    6: s6_sigterm_under_load,
    7: s7_security,
    8: s8_lease_loss,
    9: s9_failover_read_only,
    10: s10_pgbouncer,
    11: s11_lease_ping_pong,
    12: s12_poison_pill,
}
