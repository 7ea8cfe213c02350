"""Measurements, their aggregation over repeats, and the printed table."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Op = Literal[">=", "<="]


@dataclass(frozen=True)
class Target:
    op: Op
    value: float

    def met(self, observed: float) -> bool:
        return observed >= self.value if self.op == ">=" else observed <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Measurement:
    """One number of one run: e.g. B3 "achieved/ideal" at C=64 is 0.93 (ratio)."""

    bench: str
    metric: str
    value: float
    unit: str
    target: Target | None = None
    detail: str = ""
    # Series for the plot: x value (concurrency, replicas) of this point, if any.
    series: str = ""
    x: float | None = None


@dataclass
class Row:
    """A metric over all repeats: median and spread."""

    bench: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: Target | None = None
    details: list[str] = field(default_factory=list)
    series: str = ""
    x: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        """min..max and the relative spread, so variance is visible next to each number."""
        if len(self.values) < 2:
            return "-"
        lo, hi = min(self.values), max(self.values)
        rel = (hi - lo) / abs(self.median) * 100 if self.median else 0.0
        return f"{_fmt(lo)}..{_fmt(hi)} (±{rel / 2:.0f}%)"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "yes" if self.target.met(self.median) else "NO"


def aggregate(measurements: Iterable[Measurement]) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    for m in measurements:
        row = rows.setdefault(
            (m.bench, m.metric),
            Row(m.bench, m.metric, m.unit, target=m.target, series=m.series, x=m.x),
        )
        row.values.append(m.value)
        if m.detail:
            row.details.append(m.detail)
    return list(rows.values())


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    header = ["bench", "metric", "median", "unit", "spread (min..max)", "target", "met", "detail"]
    body = [
        [
            r.bench,
            r.metric,
            _fmt(r.median),
            r.unit,
            r.spread,
            str(r.target or ""),
            r.verdict,
            r.details[len(r.details) // 2] if r.details else "",
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(header)]  # fmt: skip

    def render(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, body)])


def save_json(path: Path, rows: Sequence[Row], meta: dict[str, object]) -> None:
    doc = {
        "meta": meta,
        "rows": [
            asdict(r) | {"median": r.median, "target": str(r.target) if r.target else None}
            for r in rows
        ],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def load_json(path: Path) -> tuple[list[Row], dict[str, object]]:
    doc = json.loads(path.read_text())
    rows = []
    for raw in doc["rows"]:
        target = None
        if raw["target"]:
            op, value = raw["target"].split()
            target = Target(op, float(value))
        rows.append(
            Row(raw["bench"], raw["metric"], raw["unit"], raw["values"], target,
                raw["details"], raw["series"], raw["x"])
        )  # fmt: skip
    return rows, doc["meta"]
