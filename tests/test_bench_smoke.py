"""The benchmark harness runs: every benchmark at toy size produces numbers.

Asserts nothing about speed (the machine is shared and small; see docs/PERFORMANCE.md): only
that each benchmark ran its processes to the end and printed finite, non-negative numbers.
B1's PGQueuer side needs the ``bench`` dependency group; without it B1 reports ours only.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "toy.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "toy", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "bench" in completed.stdout  # the table's header
    result: dict[str, object] = json.loads(out.read_text())
    return result


@pytest.mark.timeout(960)
def test_every_benchmark_produces_numbers(toy_results: dict[str, object]) -> None:
    rows = toy_results["rows"]
    assert isinstance(rows, list)
    benches = {row["bench"] for row in rows}
    assert benches == {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "TABLES", "FAIR", "COST"}
    for row in rows:
        assert row["values"], row
        for value in row["values"]:
            assert math.isfinite(value), row
            assert value >= 0, row


@pytest.mark.timeout(960)
def test_runs_did_the_real_work(toy_results: dict[str, object]) -> None:
    """The drains behind the rates finished cleanly: no dead letters, nothing left undone."""
    rows = toy_results["rows"]
    assert isinstance(rows, list)
    details = " ".join(d for row in rows for d in row["details"])
    assert "PROBLEM" not in details
    rates = [row for row in rows if row["unit"] in ("msg/s", "/s") and row["bench"] != "B1"]
    assert rates
    assert all(row["median"] > 0 for row in rates)


@pytest.mark.timeout(960)
def test_cost_reports_the_issue_figures_as_ratios(toy_results: dict[str, object]) -> None:
    """COST carries issue 16's three cost figures, each with its target, from drains that did
    the real work (a DB-only cleanup that called the provider would fail: there is none), and
    the DB-only rate against PGQueuer tuned, beside it without a target."""
    rows = toy_results["rows"]
    assert isinstance(rows, list)
    cost = {row["metric"]: row for row in rows if row["bench"] == "COST"}
    targets = {
        "DB-only attachment cleanups / PGQueuer no-op at its default (batch 10)": ">= 1",
        "L=100ms C=64: achieved / ideal": ">= 0.85",
        "attachment cleanup with a provider call: worker CPU": "<= 1",
        "1 ms / worker CPU per cleanup with a call": ">= 1",
    }
    for metric, target in targets.items():
        assert cost[metric]["target"] == target, cost.get(metric)
        assert cost[metric]["median"] > 0, cost[metric]
    tuned = cost["DB-only attachment cleanups / best PGQueuer no-op"]  # shown, no target
    assert tuned["median"] > 0
    assert not tuned["target"]
    assert cost["attachment cleanup with a provider call: worker CPU"]["unit"] == "ms/msg"
    assert "clean" in " ".join(cost["DB-only attachment cleanups (no provider file)"]["details"])


@pytest.mark.timeout(300)
def test_http_backends_compare_every_candidate() -> None:
    """``python -m bench.http_backends`` drives the gateway through each candidate pool; every
    delete must succeed with the provider's request id (the script raises otherwise)."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.http_backends", "--calls", "40", "--concurrency", "8",
         "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    from bench.http_backends import CANDIDATES

    for name in CANDIDATES:
        assert f"{name}: worker CPU per call" in completed.stdout
    assert "least CPU per call" in completed.stderr


@pytest.mark.timeout(300)
def test_drain_cpu_measures_a_tree() -> None:
    """``python -m bench.drain_cpu`` drains a seeded database with the tree's worker; a drain
    that exits non-zero (anything left or failed) stops it."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.drain_cpu", "--kind", "call", "--messages", "50",
         "--rounds", "1", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ms worker CPU per call cleanup" in completed.stdout
