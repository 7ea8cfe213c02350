"""The SDK's HTTP backends side by side: ``python -m bench.http_backends [--calls N] ...``.

Issue 16 / SPEC §15: the HTTP path is chosen for the least worker CPU per provider call. This
drives the product's own ``ProviderGateway`` (routing, limits, retries, classification, the
receipt's evidence) in this process against the local provider in its own process, with each
candidate connection pool in turn, and reads this process's CPU time (``time.process_time``:
all its threads, not wall time) per call. Candidates alternate round by round, so a noisy
neighbour hits them alike; the median round of each is reported.

Candidates: the pool the product builds (``worker.providers.clients.new_shared_pool``), the
SDK's default httpx2 pool (``DefaultAsyncHttpxClient``, 1000 connections / 100 kept alive),
and the SDK's aiohttp transport (``DefaultAioHttpClient``, extra ``openai[aiohttp]``), each
also with its pool limits sized to the concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
from openai import DefaultAioHttpClient, DefaultAsyncHttpxClient

from bench.results import Measurement, table
from bench.sandbox import launch_fake
from worker.config import BackendConfig, ProvidersConfig
from worker.providers.clients import new_shared_pool
from worker.providers.gateway import ProviderGateway
from worker.providers.results import Deleted

KEY_ENV = "BENCH_HTTP_KEY"
TENANT = uuid.UUID(int=1)
PoolFactory = Callable[[int], httpx2.AsyncClient]


def _sized(concurrency: int) -> httpx2.Limits:
    return httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


CANDIDATES: dict[str, PoolFactory] = {
    "product (new_shared_pool)": lambda _c: new_shared_pool(),
    "httpx2, SDK defaults": lambda _c: DefaultAsyncHttpxClient(follow_redirects=False),
    "httpx2, limits = concurrency": lambda c: DefaultAsyncHttpxClient(
        follow_redirects=False, limits=_sized(c)
    ),
    "aiohttp, SDK defaults": lambda _c: DefaultAioHttpClient(follow_redirects=False),
    "aiohttp, limits = concurrency": lambda c: DefaultAioHttpClient(
        follow_redirects=False, limits=_sized(c)
    ),
}


@dataclass
class Samples:
    cpu_ms_per_call: list[float] = field(default_factory=list)
    calls_per_second: list[float] = field(default_factory=list)


def _config(base_url: str, concurrency: int) -> ProvidersConfig:
    return ProvidersConfig(
        backends={
            "openai": BackendConfig(
                kind="openai",
                base_url=base_url,
                api_key_env=KEY_ENV,
                max_concurrency=concurrency,
                max_rps=1_000_000.0,
            )
        }
    )


async def _round(
    factory: PoolFactory, base_url: str, calls: int, concurrency: int
) -> tuple[float, float]:
    """CPU ms per call and calls/s of ``calls`` deletes by ``concurrency`` tasks, after one
    warm-up wave (connections opened, clients built)."""
    gateway = ProviderGateway(
        _config(base_url, concurrency),
        http_client=factory(concurrency),
        environ={KEY_ENV: "sk-bench-http"},
    )
    try:
        await _deletes(gateway, concurrency, concurrency)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await _deletes(gateway, calls, concurrency)
        cpu1, wall1 = time.process_time(), time.monotonic()
    finally:
        await gateway.aclose()
    return (cpu1 - cpu0) * 1000 / calls, calls / (wall1 - wall0)


async def _deletes(gateway: ProviderGateway, calls: int, concurrency: int) -> None:
    remaining = iter(range(calls))

    async def lane() -> None:
        for _ in remaining:
            result = await gateway.delete_file(TENANT, "openai", f"file-{uuid.uuid4().hex}")
            if not isinstance(result, Deleted) or result.request_id is None:
                raise RuntimeError(f"a delete did not succeed with a request id: {result!r}")

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def compare(
    *, calls: int, concurrency: int, latency: float, rounds: int
) -> list[Measurement]:
    fake = launch_fake(latency_seconds=latency)
    samples = {name: Samples() for name in CANDIDATES}
    try:
        for _ in range(rounds):
            for name, factory in CANDIDATES.items():
                cpu, rate = await _round(factory, f"{fake.url}/v1", calls, concurrency)
                samples[name].cpu_ms_per_call.append(cpu)
                samples[name].calls_per_second.append(rate)
    finally:
        fake.process.terminate()
        fake.process.wait()
    at = f"C={concurrency}, L={latency * 1000:g}ms"
    out: list[Measurement] = []
    for name, got in samples.items():
        for cpu in got.cpu_ms_per_call:
            out.append(Measurement("HTTP", f"{name}: worker CPU per call ({at})", cpu, "ms"))
        for rate in got.calls_per_second:
            out.append(Measurement("HTTP", f"{name}: calls/s ({at})", rate, "/s"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_backends")
    parser.add_argument("--calls", type=int, default=3000, help="deletes per round and backend")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.0, help="provider latency, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    from bench.results import aggregate

    got = asyncio.run(compare(calls=args.calls, concurrency=args.concurrency,
                              latency=args.latency, rounds=args.rounds))  # fmt: skip
    print(table(aggregate(got), markdown=args.markdown))
    medians = {
        name: statistics.median(m.value for m in got if m.metric.startswith(f"{name}: worker"))
        for name in CANDIDATES
    }
    print(f"# least CPU per call: {min(medians, key=medians.__getitem__)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
