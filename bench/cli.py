"""``python -m bench [B1 ...] [--scale toy|small|full] [--repeat N] [--json F] [--plot F]``."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.results import Measurement, aggregate, save_json, table
from bench.sandbox import BenchEnv
from bench.scenarios import SCALES, SCENARIOS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure cleanup-worker against PGQueuer, the original processing model, "
        "its ideal and the database's ceiling; every ratio is taken within one run.",
    )
    parser.add_argument(
        "benchmarks", nargs="*", metavar="B", help=f"default: all of {' '.join(SCENARIOS)}"
    )
    parser.add_argument("--scale", choices=list(SCALES), default="full")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each benchmark")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the throughput plot (PNG) here")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    unknown = [b for b in args.benchmarks if b.upper() not in SCENARIOS]
    if unknown:
        choices = " ".join(SCENARIOS)
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {choices}")
    args.benchmarks = [b.upper() for b in args.benchmarks] or list(SCENARIOS)
    return args


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


async def run(
    benchmarks: list[str],
    scale_name: str,
    repeat: int,
    checkpoint: Callable[[list[Measurement]], None] = lambda _: None,
) -> list[Measurement]:
    """Every benchmark ``repeat`` times; a failed one is reported and the others still run."""
    scale = SCALES[scale_name]
    measurements: list[Measurement] = []
    async with BenchEnv.open() as env:
        meta = f"PostgreSQL {env.server.kind} {env.server.server_version_num}"
        print(f"# scale {scale_name}, {repeat} repeat(s), {meta}", file=sys.stderr)
        for round_no in range(1, repeat + 1):
            for name in benchmarks:
                started = time.monotonic()
                try:
                    got = await SCENARIOS[name](env, scale)
                except Exception as exc:  # one broken benchmark must not lose the others
                    print(f"# {name} run {round_no}/{repeat} FAILED: {exc}", file=sys.stderr)
                    continue
                measurements += got
                checkpoint(measurements)
                took = time.monotonic() - started
                print(f"# {name} run {round_no}/{repeat}: {len(got)} numbers in {took:.0f}s",
                      file=sys.stderr)  # fmt: skip
    return measurements


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too unwinds the run, stopping every child process


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    started = datetime.now(UTC)
    meta = machine() | {
        "scale": args.scale,
        "repeat": args.repeat,
        "benchmarks": args.benchmarks,
        "started": started.isoformat(timespec="seconds"),
    }

    def checkpoint(measurements: list[Measurement]) -> None:
        if args.json:  # after every benchmark, so a long run that dies keeps what it measured
            save_json(args.json, aggregate(measurements), meta)

    measurements = asyncio.run(run(args.benchmarks, args.scale, args.repeat, checkpoint))
    rows = aggregate(measurements)
    print(table(rows, markdown=args.markdown))
    meta["seconds"] = round((datetime.now(UTC) - started).total_seconds())
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        save_json(args.json, rows, meta)
    if args.plot:
        from bench.plot import plot  # matplotlib only when asked

        plot(rows, args.plot, meta)
    return 0 if measurements else 1
