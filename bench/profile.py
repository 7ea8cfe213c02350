"""Profile the worker during a drain:
``python -m bench.profile [attachments|dbonly|chats|noop] OUT``.

Runs one worker process on a backlog like B2's (zero-latency provider) and records it with
py-spy (``pip install py-spy``; not a dependency of the harness): OUT.txt gets the collapsed
stacks (feed them to any flame-graph tool), OUT.top.txt the top functions by own time. This
is how the hot spots in docs/PERFORMANCE.md were found.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from bench import seed
from bench.probes import Database
from bench.runs import acked
from bench.sandbox import BenchEnv, WorkerMode, WorkerSettings
from bench.scenarios import UNLIMITED_RPS


async def profile(kind: str, out: Path, messages: int, seconds: float) -> None:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    settings = WorkerSettings(concurrency=64, provider_max_concurrency=64,
                              provider_max_rps=UNLIMITED_RPS)  # fmt: skip
    async with BenchEnv.open() as env, env.database() as dsn:
        fake = env.start_fake()
        mode: WorkerMode = "noop" if kind == "noop" else "real"
        worker = env.start_worker(mode, settings, dsn=dsn, provider_url=fake.url)
        await env.wait_ready(worker)
        db = await Database.connect(dsn)
        try:
            if kind == "chats":
                await seed.seed_chats(db.conn, messages, attachments_per_chat=5)
            elif kind in ("attachments", "dbonly"):
                await seed.seed_attachments(db.conn, messages, with_files=kind == "attachments")
            else:
                await seed.seed_noop(db.conn, messages)
            while await acked(db) < max(1, messages // 20):  # noqa: ASYNC110 (polls the database)
                await asyncio.sleep(0.05)
            await asyncio.to_thread(
                subprocess.run,
                [py_spy, "record", "--pid", str(worker.pid), "--duration", str(int(seconds)),
                 "--format", "raw", "--output", str(out.with_suffix(".txt")), "--nonblocking"],
                check=True,
                capture_output=True,
            )  # fmt: skip
            print(f"acked {await acked(db)} of {messages}", file=sys.stderr)
        finally:
            await db.close()
    top = _top(out.with_suffix(".txt"))
    out.with_suffix(".top.txt").write_text(top)
    print(top)


def _top(raw: Path, limit: int = 40) -> str:
    """Own time per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    return "\n".join(f"{n / total * 100:5.1f}%  {name}" for name, n in ranked)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("kind", choices=["attachments", "dbonly", "chats", "noop"])
    parser.add_argument("out", type=Path, help="output path without suffix")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(profile(args.kind, args.out, args.messages, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
