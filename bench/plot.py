"""Throughput vs concurrency (B3) and replicas (B5): ``python -m bench.plot RESULTS.json OUT.png``.

Needs matplotlib (the ``bench`` dependency group); the harness itself does not.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from bench.results import Row, load_json


def plot(rows: Sequence[Row], out: Path, meta: dict[str, object]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    latencies = sorted({float(r.series.split()[1]) for r in rows if r.series.startswith("ours ")})
    for colour, latency in zip(("tab:blue", "tab:green", "tab:purple"), latencies, strict=False):
        ours = sorted((r for r in rows if r.series == f"ours {latency:g}"), key=lambda r: r.x or 0)
        xs = [r.x or 0 for r in ours]
        ms = f"{latency * 1000:g} ms"
        left.plot(xs, [r.median for r in ours], "o-", color=colour, label=f"cleanup-worker, {ms}")
        left.errorbar(xs, [r.median for r in ours], yerr=_errors(ours), fmt="none", capsize=3,
                      color=colour)  # fmt: skip
        left.plot(xs, [x / latency for x in xs], "--", color=colour, alpha=0.4,
                  label=f"ideal C / {ms}")  # fmt: skip
        for original in (r for r in rows if r.series == f"original {latency:g}"):
            left.axhline(original.median, color=colour, linestyle=":",
                         label=f"original model, {ms}")  # fmt: skip
    if latencies:
        ticks = sorted({int(r.x) for r in rows if r.series.startswith("ours ") and r.x})
        left.set_xscale("log", base=2)
        left.set_yscale("log")
        left.set_xticks(ticks, [str(t) for t in ticks])
        left.set_xlabel("concurrency C (messages in flight, one replica)")
        left.set_ylabel("attachment cleanups / s")
        left.set_title("B3: throughput vs concurrency (provider latency L)")
        left.legend(fontsize=7)
        left.grid(alpha=0.3)
    scaled = sorted((r for r in rows if r.series == "replicas" and r.x), key=lambda r: r.x or 0)
    if scaled:
        xs = [r.x or 0 for r in scaled]
        base = scaled[0].median / (xs[0] or 1)
        right.plot(xs, [r.median for r in scaled], "o-", label="achieved")
        right.errorbar(xs, [r.median for r in scaled], yerr=_errors(scaled), fmt="none", capsize=3)
        right.plot(xs, [x * base for x in xs], "--", color="grey", label="linear from 1 replica")
        right.set_xticks(xs, [str(int(x)) for x in xs])
        right.set_xlabel("replicas (separate processes)")
        right.set_ylabel("attachment cleanups / s")
        right.set_title(f"B5: scale-out, {scaled[0].metric.split(':')[0].split('x ')[-1]} each")
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
    fig.suptitle(f"cleanup-worker throughput ({meta.get('cpus')} cores, scale {meta.get('scale')},"
                 f" {meta.get('repeat')} repeat(s); bars: min..max)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _errors(rows: Sequence[Row]) -> list[list[float]]:
    return [[r.median - min(r.values) for r in rows], [max(r.values) - r.median for r in rows]]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    rows, meta = load_json(Path(args[0]))
    plot(rows, Path(args[1]), meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
