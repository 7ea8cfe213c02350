"""Worker CPU per message of one ``drain --until-empty``, for two checkouts side by side:
``python -m bench.drain_cpu --kind call --messages 8000 --rounds 3 BASE_TREE [OTHER_TREE]``.

A before/after of a per-message change needs the worker's own CPU, measured the same way for
both trees under the same load. This seeds a fresh database per run (attachment cleanups with
a provider file, ``call``, or without one, ``dbonly``), then runs ``cleanup-worker drain
--until-empty`` as a child process whose working directory is the tree under test (so its
``worker`` package is the one imported) and reads that child's CPU time (user + system, from
``os.wait4``) per message, less the CPU of the same drain of an empty database (start-up:
imports, pool, the SDK; about 1.5 s). Trees alternate round by round, so a noisy neighbour
hits them alike; the median round of each is reported, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from bench import seed
from bench.probes import Database
from bench.sandbox import API_KEY, API_KEY_ENV, BenchEnv, WorkerSettings
from bench.scenarios import UNLIMITED_RPS


async def _per_message_ms(
    env: BenchEnv, tree: Path, kind: str, messages: int, provider_url: str
) -> float:
    """CPU milliseconds per message of ``tree``'s worker, start-up taken out."""
    idle = await _drain_ms(env, tree, kind, 0, provider_url)
    busy = await _drain_ms(env, tree, kind, messages, provider_url)
    return (busy - idle) / messages


async def _drain_ms(
    env: BenchEnv, tree: Path, kind: str, messages: int, provider_url: str
) -> float:
    """CPU milliseconds of one drain of ``messages`` by ``tree``'s worker, start-up included."""
    settings = WorkerSettings(concurrency=64, provider_max_concurrency=64,
                              provider_max_rps=UNLIMITED_RPS)  # fmt: skip
    async with env.database() as dsn:
        db = await Database.connect(dsn)
        try:
            if messages:
                await seed.seed_attachments(db.conn, messages, with_files=kind == "call")
        finally:
            await db.close()
        config = env.workdir / "drain-cpu.yaml"
        config.write_text(yaml.safe_dump(settings.config(dsn=dsn, provider_url=provider_url,
                                                         http_port=0)))  # fmt: skip
        return await asyncio.to_thread(_cpu_ms, tree, config)


def _cpu_ms(tree: Path, config: Path) -> float:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_WORKER")}
    environ[API_KEY_ENV] = API_KEY
    args = [sys.executable, "-m", "worker", "--config", str(config), "drain", "--until-empty"]
    child = subprocess.Popen(args, cwd=tree, env=environ, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"drain in {tree} exited {child.returncode}")
    return (usage.ru_utime + usage.ru_stime) * 1000


async def compare(
    trees: list[Path], *, kind: str, messages: int, rounds: int
) -> dict[Path, list[float]]:
    samples: dict[Path, list[float]] = {tree: [] for tree in trees}
    async with BenchEnv.open() as env:
        url = env.start_fake().url if kind == "call" else "http://127.0.0.1:9"
        for n in range(rounds):
            for tree in trees:
                ms = await _per_message_ms(env, tree, kind, messages, url)
                samples[tree].append(ms)
                print(f"round {n + 1}: {tree}: {ms:.3f} ms CPU per message", file=sys.stderr)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain_cpu")
    parser.add_argument("trees", type=Path, nargs="+", help="checkouts to measure (1 or 2)")
    parser.add_argument("--kind", choices=["call", "dbonly"], default="call")
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.trees]
    samples = asyncio.run(compare(trees, kind=args.kind, messages=args.messages,
                                  rounds=args.rounds))  # fmt: skip
    medians = {tree: statistics.median(got) for tree, got in samples.items()}
    for tree, median in medians.items():
        print(f"{tree}: median {median:.3f} ms worker CPU per {args.kind} cleanup")
    if len(trees) == 2:
        first, second = (medians[tree] for tree in trees)
        print(f"second / first: {second / first:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
